import ArgumentParser
import Foundation
import ShapesWorld
import TextCraftor

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "TextCraftor end to end on ShapesWorld, the embedded default: baseline, fine-tuning, report.",
        discussion: """
            Loads the ShapesWorld bundle (a tiny Stable Diffusion and its reward models, shipped with the package), \
            samples images for held-out prompts (shape-colour pairs training never shows) and measures the aesthetic \
            reward, the CLIP score and, from the pixels, the oracle's alignment (the share of the prompt's \
            attributes the image shows) and quality. It then fine-tunes the text encoder with prompt-based \
            TextCraftor on training prompts (aesthetic reward plus the CLIP constraint), measures again, and \
            interpolates between the two encoders.

            Writes OUT/: grid.png (rows: prompts; columns: original, fine-tuned, blends 0.25 0.5 0.75), curves.svg \
            (the rewards during training), metrics.json, report.html (self-contained, open it in a browser) and \
            run/ (the trained text_encoder/ and the training log). A folder left by an earlier demo is replaced.

            --adapter lora trains LoRA adapters on the encoder's linear layers instead (run/lora.safetensors, \
            learning rate --lora-lr); --adapter token trains one new token's embedding row (--token, starting from \
            --init-word; run/token/; learning rate --token-lr), appended to every prompt in training and in the \
            evaluation after it (no blends then: the token has no row in the original encoder). \
            --compare-adapters also trains the other two, each from the original weights (run-full/, run-lora/, \
            run-token/ beside run/), and compares full, LoRA and token on the same held-out prompts and noise: \
            rewards, oracle alignment and quality, the size of the written weights, the numbers trained, seconds per \
            step and the process's peak memory so far.
            """)

    @OptionGroup var flags: DemoFlags

    func run() throws {
        let started = Date()
        let demo = try speakingFlags { try ShapesDemo(config: loadConfiguration(file: nil, flags: flags)) }
        let interrupt = Interrupt()
        demo.stopRequested = { interrupt.requested }
        print("ShapesWorld demo: bundle \(demo.bundle.path)")
        print("rewards: " + demo.terms.map { "\($0.name) (gamma \($0.gamma))" }.joined(separator: ", ")
            + (demo.config.clipConstraint ? "" : ", no CLIP constraint"))
        var bars: [String: ProgressBar] = [:]
        let report = try speakingFlags {
            try demo.run { event in
                switch event {
                case .evaluating(let label, let done, let total):
                    let bar = bars[label] ?? ProgressBar("eval \(label)", total: total)
                    bars[label] = bar
                    bar.update(done)
                case .training(let adapter):
                    bars["train"] = ProgressBar(demo.config.compareAdapters ? "train \(adapter.rawValue)" : "train",
                                                total: demo.config.steps)
                case .trained(let report):
                    let bar = bars["train"] ?? ProgressBar("train", total: demo.config.steps)
                    bars["train"] = bar
                    bar.update(report.step, note: report.rewardsNote)
                }
            }
        }
        print("")
        print(report.table())
        print("")
        print(report.verdict())
        print(String(format: "wrote %@ (grid.png, curves.svg, metrics.json, report.html) in %.0f s", demo.config.out,
                     Date().timeIntervalSince(started)))
    }
}

/// The demo's flags, each named after its `DemoConfig` key; nil: the demo's default.
struct DemoFlags: ParsableArguments {
    @Option(help: "The bundle (default: the one shipped with the package).", completion: .directory) var model: String?
    @Option(help: "Output folder (default demo).", completion: .directory) var out: String?
    @Option(help: "Training steps (default 60).") var steps: Int?
    @Option(help: "Rewards to train on, NAME[:GAMMA] comma-separated, from: aesthetic, clip (default aesthetic).") var rewards: String?
    @Option(help: "Weight (gamma) of the CLIP constraint added to the rewards (default 0.3).") var clipWeight: Double?
    @Flag(inversion: .prefixedNo, help: "Add the CLIP constraint (default); --no-clip-constraint trains on the rewards alone.")
    var clipConstraint: Bool?
    @Option(help: "Held-out prompts to evaluate on (default 24).") var evalPrompts: Int?
    @Option(help: "Images per prompt in evaluation (default 4).") var imagesPerPrompt: Int?
    @Option(help: "Rows of the image grid (default 8).") var gridRows: Int?
    @Option(help: "AdamW learning rate (default 1e-4).") var lr: Double?
    @Option(help: "Prompts per step (default 8).") var batchSize: Int?
    @Option(help: "DDIM steps per sample, training and evaluation (default 10).") var samplingSteps: Int?
    @Option(help: "Last sampling steps with gradient (default 3).") var gradWindow: Int?
    @Option(help: "Classifier-free guidance (default 5).") var guidance: Double?
    @Option(help: "Seed of training (noise, prompt order) and of the evaluation noise (default 0).") var seed: UInt64?
    @Option(help: "What training trains: full (default: every weight of the text encoder), lora (LoRA adapters, rank 8) or token (one new token's embedding row).")
    var adapter: Adapter?
    @Option(help: "--adapter token: the new token (default <shapes>).") var token: String?
    @Option(help: "--adapter token: the word (one token) whose embedding the token starts from (default beautiful).") var initWord: String?
    @Option(help: "Learning rate of LoRA training (default 1e-3: adapters commonly take ~10x full training's).") var loraLr: Double?
    @Option(help: "Learning rate of token training (default 1e-3).") var tokenLr: Double?
    @Flag(help: "Train full, lora and token, each from the original weights, and compare them on the same held-out prompts.")
    var compareAdapters = false
}

/// The bundle at `--model`, or the one shipped with the binary.
func shapesBundle(_ model: String?) throws -> URL {
    try speakingFlags { try ShapesWorldBundle.located(model) }
}
