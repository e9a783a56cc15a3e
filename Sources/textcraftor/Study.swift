import ArgumentParser
import Foundation
import ShapesWorld
import TextCraftor

struct StudyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "study",
        abstract: "The paper's findings tested on ShapesWorld, arm by arm, with seeds, intervals, verdicts and the oracle.",
        discussion: """
            Each arm is a named recipe: what is trained (prompt or direct mode, the gradient window K, the rewards, \
            the CLIP constraint, the UNet stage, LoRA or a token) and how it is measured (the blend weight W, the \
            fine-tuned steps). Every arm trains from the original weights of the ShapesWorld bundle with each seed \
            (the seed changes the training noise, the prompt order and the evaluation noise) and is measured on the \
            same held-out prompts: the aesthetic reward, the CLIP score, and the oracle's alignment and quality, \
            read from the pixels.

            The findings compare arms: prompt-based against direct fine-tuning, the gradient window, the authors' \
            test-time fine-tuned steps, the CLIP constraint, interpolation, rewards alone and mixed, the UNet stage, \
            LoRA and a reward token, and reward hacking as the oracle sees it. Each gets a verdict, reproduced, not \
            reproduced or mixed, from the 95% interval of the paired difference on its primary metric, by a rule \
            fixed in the code and printed in the report (with one seed the interval is over images).

            Arms: \(StudyArm.all.map(\.name).joined(separator: ", ")). --arms picks some (the arms they start from \
            are added: textcraftor+unet needs textcraftor, mix needs aesthetic-only and clip-only).

            Writes OUT/: arms/ARM/seed-N.json as each arm finishes, runs/ (the trained run folders), data/direct/ \
            (the direct arm's ground-truth renders), then study.json (every number), report.html (one section per \
            finding: the paper beside ours, the oracle's view, curves over training, image strips) and verdicts.md, \
            the table printed at the end. Rerunning with the same OUT reuses finished arms and seeds (an interrupted \
            study continues); OUT with other settings is refused, except --arms and --seeds, which may change.

            --quick: one seed and short runs (8.6 minutes for all 16 arms on two idle cores); flags given with it override its \
            values.
            """)

    @OptionGroup var flags: StudyFlags

    func run() throws {
        let started = Date()
        let base = flags.quick ? StudyConfig.quick : StudyConfig()
        let study = try speakingFlags { try Study(config: try base.overlaying(configValues(of: [flags]))) }
        let interrupt = Interrupt()
        study.stopRequested = { interrupt.requested }
        let config = study.config
        print("study: \(study.arms.count) arms x \(config.seeds) seed\(config.seeds == 1 ? "" : "s") (\(study.arms.map(\.name).joined(separator: ", "))), bundle \(study.bundle.path)")
        var overall: ProgressBar?
        var bars: [String: ProgressBar] = [:]
        var reused = 0
        let report = try speakingFlags {
            try study.run { event in
                switch event {
                case .reused(let arm, let seed, let index, let total):
                    reused += 1
                    print("\(arm) seed \(seed): reused (\(index + 1)/\(total))")
                case .started(let arm, let seed, let index, let total):
                    let bar = overall ?? ProgressBar("study", total: total)
                    overall = bar
                    bar.update(index, note: "now \(arm) seed \(seed)")
                    bars = [:]
                case .rendering(let done, let total):
                    let bar = bars["render"] ?? ProgressBar("render direct data", total: total)
                    bars["render"] = bar
                    bar.update(done)
                case .evaluating(let label, let done, let total):
                    let bar = bars[label] ?? ProgressBar("eval \(label)", total: total)
                    bars[label] = bar
                    bar.update(done)
                case .training(let arm, let steps):
                    bars["train"] = ProgressBar("train \(arm)", total: steps)
                case .trained(let step):
                    bars["train"]?.update(step.step, note: step.rewardsNote)
                case .finished(let arm, let seed, let seconds, let index, let total):
                    print(String(format: "%@ seed %llu: done in %.0f s (%d/%d)", arm, seed, seconds, index + 1, total))
                    overall?.update(index + 1)
                }
            }
        }
        print("")
        print(report.markdown())
        print("")
        print(String(format: "%d training runs, %d arm-seeds reused; wrote %@ (study.json, report.html, verdicts.md) in %.0f s",
                     study.trainingRuns, reused, config.out, Date().timeIntervalSince(started)))
    }
}

/// The study's flags, each named after its `StudyConfig` key; nil: the default (or --quick's).
struct StudyFlags: ParsableArguments {
    @Flag(help: "One seed and short runs (8.6 minutes for all 16 arms on two idle cores); other flags override its values.") var quick = false
    @Option(help: "Output folder (default study). A rerun with the same folder reuses finished arms.", completion: .directory) var out: String?
    @Option(help: "Seeds per arm (default 3; --quick 1).") var seeds: Int?
    @Option(help: "First seed (default 0); the others follow it.") var seed: UInt64?
    @Option(help: "Arms to run, comma-separated (default: all). Arms they start from are added.") var arms: String?
    @Option(help: "The bundle (default: the one shipped with the package).", completion: .directory) var model: String?
    @Option(help: "Training steps per arm (default 60; --quick 40).") var steps: Int?
    @Option(help: "Prompts per step (default 8).") var batchSize: Int?
    @Option(help: "Learning rate of full encoder training (default 1e-4; --quick 1.5e-4).") var lr: Double?
    @Option(help: "Learning rate of the UNet stage (default 1e-5; --quick 1.5e-5).") var unetLr: Double?
    @Option(help: "Learning rate of LoRA training (default 1e-3).") var loraLr: Double?
    @Option(help: "Learning rate of token training (default 1e-3).") var tokenLr: Double?
    @Option(help: "DDIM steps per sample, training and evaluation (default 10).") var samplingSteps: Int?
    @Option(help: "K of the main arm (default 3; the window arms use 1, 5 and 10, at most --sampling-steps).") var gradWindow: Int?
    @Option(help: "Classifier-free guidance (default 5).") var guidance: Double?
    @Option(help: "Gamma of the CLIP constraint in the arms that have it (default 0.3).") var clipWeight: Double?
    @Option(help: "Test time: the fine-tuned encoder conditions only the last N UNet calls in the finetuned-steps evaluation (default 6 of 10, the authors' 15 of 25).")
    var finetunedSteps: Int?
    @Option(help: "Held-out prompts every arm is measured on (default 24; --quick 16).") var evalPrompts: Int?
    @Option(help: "Images per prompt (default 4; --quick 2).") var imagesPerPrompt: Int?
    @Option(help: "Probe the held-out prompts every N training steps (default 10).") var probeEvery: Int?
    @Option(help: "Prompts of the probe, one image each (default 8).") var probePrompts: Int?
    @Option(help: "Ground-truth renders for the direct arm (default 256; --quick 128).") var directImages: Int?
    @Option(help: "Images per strip in the report (default 8).") var stripImages: Int?
}
