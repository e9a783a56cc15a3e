import ArgumentParser
import Foundation
import Rewards
import ShapesWorld
import StableDiffusion
import TextCraftor
import Torch

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
            """)

    @Option(help: "The bundle (default: the one shipped with the package).", completion: .directory) var model: String?
    @Option(help: "Output folder.", completion: .directory) var out = "demo"
    @Option(help: "Training steps.") var steps = 60
    @Option(help: "Rewards to train on, NAME[:GAMMA] comma-separated, from: aesthetic, clip.") var rewards = "aesthetic"
    @Option(help: "Weight (gamma) of the CLIP constraint added to the rewards.") var clipWeight = 0.3
    @Flag(help: "Train on the rewards alone, without the CLIP constraint.") var noClipConstraint = false
    @Option(help: "Held-out prompts to evaluate on.") var evalPrompts = 24
    @Option(help: "Images per prompt in evaluation.") var imagesPerPrompt = 4
    @Option(help: "Rows of the image grid.") var gridRows = 8
    @Option(help: "AdamW learning rate.") var lr = 1e-4
    @Option(help: "Prompts per step.") var batchSize = 8
    @Option(help: "DDIM steps per sample (training and evaluation).") var samplingSteps = 10
    @Option(help: "Last sampling steps with gradient.") var gradWindow = 3
    @Option(help: "Classifier-free guidance.") var guidance = 5.0
    @Option(help: "Seed of training (noise, prompt order) and of the evaluation noise.") var seed: UInt64 = 0

    func validate() throws {
        for (flag, value) in [("--steps", steps), ("--eval-prompts", evalPrompts), ("--images-per-prompt", imagesPerPrompt),
                              ("--grid-rows", gridRows), ("--batch-size", batchSize), ("--sampling-steps", samplingSteps),
                              ("--grad-window", gradWindow)] where value < 1 {
            throw CommandError("\(flag) must be at least 1 (got \(value))")
        }
        guard gradWindow <= samplingSteps else {
            throw CommandError("--grad-window \(gradWindow) is more than --sampling-steps \(samplingSteps)")
        }
        guard lr > 0 else { throw CommandError("--lr must be positive (got \(lr))") }
        guard clipWeight >= 0 else { throw CommandError("--clip-weight must not be negative (got \(clipWeight))") }
    }

    /// "aesthetic:1,clip:0.5" → [(aesthetic, 1), (clip, 0.5)], with the CLIP constraint appended unless it is off or
    /// already listed.
    func rewardTerms() throws -> [(name: String, gamma: Double)] {
        var terms: [(name: String, gamma: Double)] = []
        for item in rewards.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            let parts = item.split(separator: ":", maxSplits: 1).map(String.init)
            guard ["aesthetic", "clip"].contains(parts[0]) else {
                throw CommandError("--rewards: unknown reward \"\(parts[0])\" (ShapesWorld has aesthetic and clip)")
            }
            var gamma = 1.0
            if parts.count == 2 {
                guard let value = Double(parts[1]) else { throw CommandError("--rewards \(item): the weight is not a number") }
                gamma = value
            }
            guard !terms.contains(where: { $0.name == parts[0] }) else { throw CommandError("--rewards names \(parts[0]) twice") }
            terms.append((parts[0], gamma))
        }
        guard !terms.isEmpty else { throw CommandError("--rewards: give at least one of aesthetic, clip") }
        if !noClipConstraint, !terms.contains(where: { $0.name == "clip" }) { terms.append(("clip", clipWeight)) }
        return terms
    }

    func run() throws {
        let terms = try rewardTerms()
        let started = Date()
        let output = URL(fileURLWithPath: out)
        try DemoFolder.checkReplaceable(output)
        let bundle = try shapesBundle(model)
        // The models: the pipeline (its text encoder is trained in place), a frozen copy of the original encoder,
        // and the judge (the bundle's rewards, plus the oracle).
        let pipeline = try StableDiffusionPipeline.load(folder: bundle)
        let original = try pipeline.loadTextEncoder(folder: bundle.appendingPathComponent("text_encoder"))
        let judge = try ShapesJudge(bundle: bundle)
        let weighted = WeightedReward()
        for term in terms { weighted.add(try ShapesWorldBundle.reward(term.name, in: bundle), gamma: term.gamma) }

        // Output goes to OUT.partial and replaces OUT at the end; a failure leaves OUT as it was.
        let partial = output.deletingLastPathComponent().appendingPathComponent(output.lastPathComponent + ".partial")
        let files = FileManager.default
        if files.fileExists(atPath: partial.path) { try files.removeItem(at: partial) }
        try files.createDirectory(at: partial, withIntermediateDirectories: true)

        let evalPrompts = ShapesPrompts.make(count: self.evalPrompts, split: .heldOut, seed: seed &+ 101)
        let trainPrompts = ShapesPrompts.make(count: 512, split: .train, seed: seed &+ 202)
        let evaluator = DemoEvaluator(pipeline: pipeline, original: original, judge: judge, prompts: evalPrompts,
                                      imagesPerPrompt: imagesPerPrompt, steps: samplingSteps, guidance: guidance,
                                      seed: seed &+ 303)

        print("ShapesWorld demo: bundle \(bundle.path)")
        print("rewards: " + terms.map { "\($0.name) (gamma \($0.gamma))" }.joined(separator: ", ")
            + (noClipConstraint ? ", no CLIP constraint" : ""))
        let baseline = try evaluator.evaluate(label: "baseline", blend: nil)
        // Training prompts too (ones the run samples from), so the report tells "did it learn" from "does it carry
        // over to unseen shape-colour pairs".
        let seenEvaluator = DemoEvaluator(pipeline: pipeline, original: original, judge: judge,
                                          prompts: Array(trainPrompts.prefix(self.evalPrompts)),
                                          imagesPerPrompt: imagesPerPrompt, steps: samplingSteps, guidance: guidance,
                                          seed: seed &+ 404)
        let seenBaseline = try seenEvaluator.evaluate(label: "baseline (training prompts)", blend: nil)

        // Prompt-based TextCraftor on the training prompts.
        var settings = TrainerSettings()
        settings.learningRate = lr
        settings.batchSize = batchSize
        settings.maxSteps = steps
        settings.seed = seed
        settings.saveEvery = steps
        settings.keepCheckpoints = 1
        settings.sampling = SamplingSettings(samplingSteps: samplingSteps, gradientWindow: gradWindow, guidanceScale: guidance)
        let runFolder = RunFolder(partial.appendingPathComponent("run"))
        try runFolder.prepare()
        let trainer = try Trainer(
            pipeline: pipeline, original: original, modelFolder: bundle, rewards: weighted,
            data: .prompts(try SampledBatches(trainPrompts, batchSize: batchSize, shuffle: true, seed: seed)),
            settings: settings, run: runFolder)
        let interrupt = Interrupt()
        trainer.stopRequested = { interrupt.requested }
        var history: [StepReport] = []
        let bar = ProgressBar("train", total: steps)
        let trainStart = Date()
        try trainer.train { report in
            history.append(report)
            bar.update(report.step, note: report.rewardsNote)
        }
        let trainSeconds = Date().timeIntervalSince(trainStart)
        if interrupt.requested {
            throw CommandError("interrupted at step \(trainer.step); nothing written to \(out) (the partial run is in \(partial.path))")
        }

        // The fine-tuned encoder and the blends between the two.
        let finetuned = try evaluator.evaluate(label: "fine-tuned", blend: 1)
        let seenFinetuned = try seenEvaluator.evaluate(label: "fine-tuned (training prompts)", blend: 1)
        var blends: [(weight: Double, result: DemoEvaluation)] = []
        for weight in [0.25, 0.5, 0.75] {
            blends.append((weight, try evaluator.evaluate(label: "blend \(weight)", blend: weight)))
        }

        let report = DemoReport(
            bundle: bundle.path, terms: terms, clipConstraint: !noClipConstraint, settings: settings,
            trainPromptCount: trainPrompts.count, baseline: baseline, finetuned: finetuned, blends: blends,
            seen: (seenBaseline.mean, seenFinetuned.mean),
            history: history, trainSeconds: trainSeconds, gridRows: min(gridRows, evalPrompts.count))
        try report.write(to: partial)
        if files.fileExists(atPath: output.path) { try files.removeItem(at: output) }
        try files.moveItem(at: partial, to: output)
        print("")
        print(report.table())
        print("")
        print(report.verdict())
        print(String(format: "wrote %@ (grid.png, curves.svg, metrics.json, report.html) in %.0f s", output.path,
                     Date().timeIntervalSince(started)))
    }
}

/// What an evaluation measured: per image scores and the images, in prompt-major order.
struct DemoEvaluation {
    var prompts: [String]
    var scores: [ShapesScores]
    /// [N, H, W, 3] uint8.
    var images: Tensor
    var mean: ShapesScores { ShapesScores.mean(scores) }
}

/// Samples the evaluation prompts with a given blend of the original and the fine-tuned encoder and judges them.
/// The same initial noise at every call, so before and after differ by the encoder only.
final class DemoEvaluator {
    let base: StableDiffusionPipeline
    let finetuned: CLIPTextModel
    let judge: ShapesJudge
    let prompts: [String]
    let imagesPerPrompt: Int
    let steps: Int
    let guidance: Double
    let seed: UInt64
    /// Words put before every prompt when sampling (the judge still reads the plain prompt).
    var prefix = ""
    /// The negative prompt of every sample ("" by default, as the trainer's unconditional half).
    var negative = ""

    /// `pipeline`'s own text encoder is the one being fine-tuned; `original` is a frozen copy of where it started.
    /// `finetuned`: the encoder blends move towards (default: `pipeline`'s own).
    init(pipeline: StableDiffusionPipeline, original: CLIPTextModel, judge: ShapesJudge, prompts: [String],
         imagesPerPrompt: Int, steps: Int, guidance: Double, seed: UInt64, finetuned: CLIPTextModel? = nil) {
        base = StableDiffusionPipeline(
            tokenizer: pipeline.tokenizer, textEncoder: original, unet: pipeline.unet, vae: pipeline.vae,
            schedulerConfig: pipeline.schedulerConfig, schedulerConfigFile: pipeline.schedulerConfigFile,
            device: pipeline.device)
        self.finetuned = finetuned ?? pipeline.textEncoder
        self.judge = judge
        self.prompts = prompts
        self.imagesPerPrompt = imagesPerPrompt
        self.steps = steps
        self.guidance = guidance
        self.seed = seed
    }

    /// nil: the original encoder; w: `w·e_finetuned + (1 − w)·e_original` at every step.
    func evaluate(label: String, blend: Double?) throws -> DemoEvaluation {
        let bar = ProgressBar("eval \(label)", total: prompts.count)
        var scores: [ShapesScores] = []
        var images: [Tensor] = []
        var expanded: [String] = []
        for (i, prompt) in prompts.enumerated() {
            var request = GenerationRequest(prompts: [prefix + prompt])
            if !negative.isEmpty { request.negativePrompts = [negative] }
            request.steps = steps
            request.guidanceScale = guidance
            request.imagesPerPrompt = imagesPerPrompt
            request.seed = seed &+ UInt64(i)
            let result = try base.generate(request, mix: blend.map { EncoderMix.blend(finetuned, weight: $0) })
            let repeated = Array(repeating: prompt, count: imagesPerPrompt)
            scores += try judge.score(images: result.images, prompts: repeated)
            images.append(result.images)
            expanded += repeated
            bar.update(i + 1)
        }
        return DemoEvaluation(prompts: expanded, scores: scores, images: Tensor.cat(images, dim: 0))
    }
}

/// The bundle at `--model`, or the one shipped with the binary.
func shapesBundle(_ model: String?) throws -> URL {
    guard let bundle = model.map({ URL(fileURLWithPath: $0) }) ?? ShapesWorldBundle.url else {
        throw CommandError("the ShapesWorld bundle is not installed with this binary: give --model (a bundle from `textcraftor shapes pretrain`)")
    }
    return bundle
}

enum DemoFolder {
    /// OUT may be replaced only if it is absent, empty, or an earlier demo's output (it holds metrics.json with a
    /// "demo" key); anything else is the user's and is left alone.
    static func checkReplaceable(_ url: URL) throws {
        let files = FileManager.default
        guard files.fileExists(atPath: url.path) else { return }
        let contents = (try? files.contentsOfDirectory(atPath: url.path)) ?? []
        if contents.isEmpty { return }
        let metrics = url.appendingPathComponent("metrics.json")
        if let data = files.contents(atPath: metrics.path),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], object["demo"] != nil
        {
            return
        }
        throw CommandError("\(url.path) exists and is not an earlier demo's output: choose another --out")
    }
}
