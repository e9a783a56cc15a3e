import Foundation
import Rewards
import ShapesWorld
import StableDiffusion
import Torch

/// The demo's settings: TextCraftor on the ShapesWorld bundle, tuned to show the method in about a minute on two
/// cores (a higher learning rate and fewer, shorter samples than the paper's). Keys as the `demo` flags.
public struct DemoConfig: Configuration {
    /// The bundle (nil: the one shipped with the package).
    public var model: String?
    public var out = "demo"
    /// Training steps.
    public var steps = 60
    /// Rewards to train on, NAME[:GAMMA] comma-separated, from aesthetic and clip.
    public var rewards = "aesthetic"
    /// Gamma of the CLIP constraint added to the rewards (unless `clipConstraint` is off or clip is listed).
    public var clipWeight = 0.3
    public var clipConstraint = true
    /// Held-out prompts evaluated, and images per prompt.
    public var evalPrompts = 24
    public var imagesPerPrompt = 4
    public var gridRows = 8
    public var lr = 1e-4
    public var batchSize = 8
    public var samplingSteps = 10
    public var gradWindow = 3
    public var guidance = 5.0
    /// Seed of training (noise, prompt order) and of the evaluation noise.
    public var seed: UInt64 = 0
    /// What the training run trains: every weight of the text encoder (full), LoRA adapters on its linear layers
    /// (lora, `TrainingConfig.lora`'s defaults) or one new token's embedding row (token).
    public var adapter = Adapter.full
    /// adapter token: the new token, appended to every prompt (", TOKEN") in training and evaluation.
    public var token = "<shapes>"
    /// adapter token: the word (one token of the CLIP vocabulary) whose row the new token starts from.
    public var initWord = "beautiful"
    /// The learning rates of the lora and token runs (`lr` is full training's): adapters train far fewer numbers and
    /// commonly take about 10x full fine-tuning's rate.
    public var loraLr = 1e-3
    public var tokenLr = 1e-3
    /// Also train the other adapters, each from the original weights, and compare the three on the same prompts.
    public var compareAdapters = false

    public init() {}

    public static let fields: [ConfigField<Self>] = [
        .path("model", \.model),
        .string("out", \.out),
        .integer("steps", \.steps, .positive),
        .string("rewards", \.rewards),
        .number("clip_weight", \.clipWeight, .nonNegative),
        .flag("clip_constraint", \.clipConstraint),
        .integer("eval_prompts", \.evalPrompts, .positive),
        .integer("images_per_prompt", \.imagesPerPrompt, .positive),
        .integer("grid_rows", \.gridRows, .positive),
        .number("lr", \.lr, .positive),
        .integer("batch_size", \.batchSize, .positive),
        .integer("sampling_steps", \.samplingSteps, .positive),
        .integer("grad_window", \.gradWindow, .positive),
        .number("guidance", \.guidance, .nonNegative),
        .seed("seed", \.seed),
        .choice("adapter", \.adapter),
        .string("token", \.token),
        .string("init_word", \.initWord),
        .number("lora_lr", \.loraLr, .positive),
        .number("token_lr", \.tokenLr, .positive),
        .flag("compare_adapters", \.compareAdapters),
    ]

    public func validateRelations() throws {
        guard gradWindow <= samplingSteps else {
            throw TextCraftorError.invalidSetting(key: "grad_window", message: "\(gradWindow) is more than sampling_steps (\(samplingSteps))")
        }
        _ = try rewardTerms()
        try training(adapter).validate()
    }

    /// "aesthetic:1,clip:0.5" → [(aesthetic, 1), (clip, 0.5)], with the CLIP constraint appended unless it is off or
    /// already listed.
    public func rewardTerms() throws -> [(name: String, gamma: Double)] {
        func fail(_ message: String) -> TextCraftorError { .invalidSetting(key: "rewards", message: message) }
        var terms: [(name: String, gamma: Double)] = []
        for item in rewards.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            let parts = item.split(separator: ":", maxSplits: 1).map(String.init)
            guard ["aesthetic", "clip"].contains(parts[0]) else {
                throw fail("unknown reward \"\(parts[0].prefix(40))\" (ShapesWorld has aesthetic and clip)")
            }
            var gamma = 1.0
            if parts.count == 2 {
                guard let value = Double(parts[1]), value.isFinite else { throw fail("\(item.prefix(40)): the weight is not a number") }
                gamma = value
            }
            guard !terms.contains(where: { $0.name == parts[0] }) else { throw fail("names \(parts[0]) twice") }
            terms.append((parts[0], gamma))
        }
        guard !terms.isEmpty else { throw fail("give at least one of aesthetic, clip") }
        if clipConstraint, !terms.contains(where: { $0.name == "clip" }) { terms.append(("clip", clipWeight)) }
        return terms
    }

    /// The training run the demo makes: prompt-based TextCraftor with these settings and `adapter`, a checkpoint at
    /// the end only.
    func training(_ adapter: Adapter) -> TrainingConfig {
        var config = TrainingConfig()
        config.adapter = adapter
        switch adapter {
        case .full: config.learningRate = lr
        case .lora: config.learningRate = loraLr
        case .token:
            config.learningRate = tokenLr
            config.token = token
            config.initWord = initWord
        }
        config.batchSize = batchSize
        config.maxSteps = steps
        config.seed = seed
        config.saveEvery = steps
        config.keepCheckpoints = 1
        config.shuffle = true
        config.samplingSteps = samplingSteps
        config.gradientWindow = gradWindow
        config.guidanceScale = guidance
        return config
    }
}

/// What the demo does, step by step, for a command to show: baseline evaluations, training, evaluations after.
public enum DemoProgress {
    case evaluating(label: String, done: Int, total: Int)
    /// A training run begins (the compare mode makes one per adapter).
    case training(Adapter)
    case trained(StepReport)
}

/// TextCraftor end to end on ShapesWorld: measure held-out (and training) prompts with the original encoder, train,
/// measure the fine-tuned encoder and blends, and write the report. Output goes to OUT.partial and replaces OUT at
/// the end, so a failure or an interrupt leaves OUT as it was.
public final class ShapesDemo {
    public let config: DemoConfig
    public let bundle: URL
    public let terms: [(name: String, gamma: Double)]
    /// Checked after every training step; when true the demo stops without writing OUT.
    public var stopRequested: @Sendable () -> Bool = { false }

    public init(config: DemoConfig) throws {
        try config.validate()
        self.config = config
        terms = try config.rewardTerms()
        bundle = try ShapesWorldBundle.located(config.model)
        try DemoFolder.checkReplaceable(URL(fileURLWithPath: config.out))
    }

    public func run(progress: (DemoProgress) -> Void = { _ in }) throws -> DemoReport {
        let output = URL(fileURLWithPath: config.out)
        // The models: the pipeline (its text encoder is trained in place), a frozen copy of the original encoder,
        // and the judge (the bundle's rewards, plus the oracle).
        let pipeline = try StableDiffusionPipeline.load(folder: bundle)
        let original = try pipeline.loadTextEncoder(folder: bundle.appendingPathComponent("text_encoder"))
        let judge = try ShapesJudge(bundle: bundle)
        let weighted = WeightedReward()
        for term in terms { weighted.add(try ShapesWorldBundle.reward(term.name, in: bundle), gamma: term.gamma) }

        // A token the vocabulary has, or an init word of several tokens, fails here, before anything is written.
        for adapter in config.compareAdapters ? Adapter.allCases : [config.adapter] {
            try TokenAdapter.check(config.training(adapter), pipeline: pipeline)
        }

        let partial = output.deletingLastPathComponent().appendingPathComponent(output.lastPathComponent + ".partial")
        let files = FileManager.default
        if files.fileExists(atPath: partial.path) { try files.removeItem(at: partial) }
        try files.createDirectory(at: partial, withIntermediateDirectories: true)

        let evalPrompts = ShapesPrompts.make(count: config.evalPrompts, split: .heldOut, seed: config.seed &+ 101)
        let trainPrompts = ShapesPrompts.make(count: 512, split: .train, seed: config.seed &+ 202)
        // `trained`: the evaluator of a trained pipeline. With a token it samples that pipeline as it is (its
        // tokenizer and encoder hold the token) with ", TOKEN" after each prompt, as the trainer conditions them.
        func evaluator(_ prompts: [String], seed: UInt64, trained: TrainedRun? = nil) -> DemoEvaluator {
            let trainedPipeline = trained?.trainer.pipeline ?? pipeline
            let token = trained?.tokenAdapter
            let evaluator = DemoEvaluator(
                pipeline: trainedPipeline, original: token == nil ? original : trainedPipeline.textEncoder, judge: judge,
                prompts: prompts, imagesPerPrompt: config.imagesPerPrompt, steps: config.samplingSteps,
                guidance: config.guidance, seed: seed)
            if let token { evaluator.suffix = ", " + token.token }
            return evaluator
        }
        let heldOut = evaluator(evalPrompts, seed: config.seed &+ 303)
        // Training prompts too (ones the run samples from), so the report tells "did it learn" from "does it carry
        // over to unseen shape-colour pairs".
        let seenPrompts = Array(trainPrompts.prefix(config.evalPrompts))
        let seen = evaluator(seenPrompts, seed: config.seed &+ 404)
        func measure(_ evaluator: DemoEvaluator, _ label: String, blend: Double?) throws -> DemoEvaluation {
            try evaluator.evaluate(blend: blend) { progress(.evaluating(label: label, done: $0, total: $1)) }
        }
        let baseline = try measure(heldOut, "baseline", blend: nil)
        let seenBaseline = try measure(seen, "baseline (training prompts)", blend: nil)

        let main = try train(config.adapter, pipeline: pipeline, original: original, rewards: weighted, prompts: trainPrompts,
                             folder: partial.appendingPathComponent("run"), progress: progress)
        // The trained model: the fine-tuned encoder, the encoder carrying LoRA adapters, or the pipeline holding the
        // token (whose prompts get it appended); blends between the two encoders (not for a token: its ids differ).
        let heldOutAfter = main.tokenAdapter == nil ? heldOut : evaluator(evalPrompts, seed: config.seed &+ 303, trained: main)
        let seenAfter = main.tokenAdapter == nil ? seen : evaluator(seenPrompts, seed: config.seed &+ 404, trained: main)
        let finetuned = try measure(heldOutAfter, "fine-tuned", blend: main.tokenAdapter == nil ? 1 : nil)
        let seenFinetuned = try measure(seenAfter, "fine-tuned (training prompts)", blend: main.tokenAdapter == nil ? 1 : nil)
        var blends: [(weight: Double, result: DemoEvaluation)] = []
        if main.tokenAdapter == nil {
            for weight in [0.25, 0.5, 0.75] { blends.append((weight, try measure(heldOut, "blend \(weight)", blend: weight))) }
        }

        // --compare-adapters: the other adapters, each trained from the original weights (a freshly loaded pipeline)
        // and measured on the same held-out prompts with the same noise.
        var compared: [DemoAdapterResult] = []
        if config.compareAdapters {
            for adapter in Adapter.allCases {
                if adapter == config.adapter {
                    compared.append(try main.result(finetuned.mean))
                    continue
                }
                let fresh = try StableDiffusionPipeline.load(folder: bundle)
                let other = try train(adapter, pipeline: fresh, original: original, rewards: weighted, prompts: trainPrompts,
                                      folder: partial.appendingPathComponent("run-\(adapter.rawValue)"), progress: progress)
                let measured = try measure(evaluator(evalPrompts, seed: config.seed &+ 303, trained: other), adapter.rawValue,
                                           blend: other.tokenAdapter == nil ? 1 : nil)
                compared.append(try other.result(measured.mean))
            }
        }

        let report = DemoReport(
            bundle: bundle.path, terms: terms, clipConstraint: config.clipConstraint, settings: main.trainer.config,
            trainPromptCount: trainPrompts.count, baseline: baseline, finetuned: finetuned, blends: blends,
            seen: (seenBaseline.mean, seenFinetuned.mean),
            history: main.history, trainSeconds: main.seconds, gridRows: min(config.gridRows, evalPrompts.count),
            adapters: compared)
        try report.write(to: partial)
        if files.fileExists(atPath: output.path) { try files.removeItem(at: output) }
        try files.moveItem(at: partial, to: output)
        return report
    }

    /// A training run of the demo and what it cost.
    struct TrainedRun {
        let trainer: Trainer
        let history: [StepReport]
        let seconds: Double
        /// The process's peak resident memory when the training ended.
        let peakMemoryMB: Double
        var tokenAdapter: TokenAdapter? { trainer.tokenAdapter }

        func result(_ scores: ShapesScores) throws -> DemoAdapterResult {
            let bytes = try trainer.weightFiles.reduce(0) { total, url in
                total + ((try FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? 0)
            }
            return DemoAdapterResult(
                adapter: trainer.config.adapter, scores: scores, fileBytes: bytes,
                trainedParameters: trainer.optimizer.parameters.reduce(0) { $0 + $1.elementCount },
                stepSeconds: seconds / Double(max(history.count, 1)), peakMemoryMB: peakMemoryMB)
        }
    }

    /// Trains `pipeline` (its encoder in place, LoRA adapters on it, or a token added to it) with `adapter`, writing
    /// the run to `folder`.
    func train(_ adapter: Adapter, pipeline: StableDiffusionPipeline, original: CLIPTextModel, rewards: WeightedReward,
               prompts: [String], folder: URL, progress: (DemoProgress) -> Void) throws -> TrainedRun {
        let training = config.training(adapter)
        let runFolder = RunFolder(folder)
        try runFolder.prepare()
        progress(.training(adapter))
        let trainer = try Trainer(
            pipeline: pipeline, original: TextEncoders(original), modelFolder: bundle, rewards: rewards,
            data: .prompts(try SampledBatches(prompts, batchSize: training.batchSize, shuffle: true, seed: training.seed)),
            config: training, run: runFolder)
        trainer.stopRequested = stopRequested
        var history: [StepReport] = []
        let trainStart = Date()
        try trainer.train { report in
            history.append(report)
            progress(.trained(report))
        }
        let seconds = Date().timeIntervalSince(trainStart)
        if stopRequested() {
            throw TextCraftorError.invalidArgument(
                "interrupted at step \(trainer.step); nothing written to \(config.out) (the partial run is in \(folder.path))")
        }
        return TrainedRun(trainer: trainer, history: history, seconds: seconds, peakMemoryMB: peakResidentMemoryMB())
    }
}

/// One adapter's row of the comparison (`demo --compare-adapters`), measured on the held-out prompts.
public struct DemoAdapterResult {
    public var adapter: Adapter
    public var scores: ShapesScores
    /// The size on disk of the trained weights written: text_encoder/model.safetensors, lora.safetensors or the
    /// token's TOKEN.safetensors.
    public var fileBytes: Int
    /// The numbers AdamW trained.
    public var trainedParameters: Int
    /// Training seconds per step.
    public var stepSeconds: Double
    /// The process's peak resident memory (VmHWM) after this run's training: the peak so far, so it includes the
    /// runs before it.
    public var peakMemoryMB: Double
}

/// What an evaluation measured: per image scores and the images, in prompt-major order.
public struct DemoEvaluation {
    public var prompts: [String]
    public var scores: [ShapesScores]
    /// [N, H, W, 3] uint8.
    public var images: Tensor
    public var mean: ShapesScores { ShapesScores.mean(scores) }
}

/// Samples the evaluation prompts with a given blend of the original and the fine-tuned encoder and judges them.
/// The same initial noise at every call, so before and after differ by the encoder only.
public final class DemoEvaluator {
    let base: StableDiffusionPipeline
    let finetuned: CLIPTextModel
    let judge: ShapesJudge
    let prompts: [String]
    let imagesPerPrompt: Int
    let steps: Int
    let guidance: Double
    let seed: UInt64
    /// Words put before every prompt when sampling (the judge still reads the plain prompt).
    public var prefix = ""
    /// Words put after every prompt when sampling (a trained token: ", TOKEN").
    public var suffix = ""
    /// The negative prompt of every sample ("" by default, as the trainer's unconditional half).
    public var negative = ""

    /// `pipeline`'s own text encoder is the one being fine-tuned; `original` is a frozen copy of where it started.
    /// `finetuned`: the encoder blends move towards (default: `pipeline`'s own).
    public init(pipeline: StableDiffusionPipeline, original: CLIPTextModel, judge: ShapesJudge, prompts: [String],
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

    /// nil: the original encoder; w: `w·e_finetuned + (1 − w)·e_original` at every step. `progress(done, total)`
    /// after each prompt.
    public func evaluate(blend: Double?, progress: (Int, Int) -> Void = { _, _ in }) throws -> DemoEvaluation {
        try evaluate(mix: blend.map { EncoderMix.blend(finetuned, weight: $0) }, progress: progress)
    }

    /// nil: the original encoder; otherwise `mix` conditions the UNet calls it covers (the study's blends, style
    /// mixes and `finetunedSteps`).
    public func evaluate(mix: EncoderMix?, progress: (Int, Int) -> Void = { _, _ in }) throws -> DemoEvaluation {
        var scores: [ShapesScores] = []
        var images: [Tensor] = []
        var expanded: [String] = []
        for (i, prompt) in prompts.enumerated() {
            var request = GenerationRequest(prompts: [prefix + prompt + suffix])
            if !negative.isEmpty { request.negativePrompts = [negative] }
            request.steps = steps
            request.guidanceScale = guidance
            request.imagesPerPrompt = imagesPerPrompt
            request.seed = seed &+ UInt64(i)
            let result = try base.generate(request, mix: mix)
            let repeated = Array(repeating: prompt, count: imagesPerPrompt)
            scores += try judge.score(images: result.images, prompts: repeated)
            images.append(result.images)
            expanded += repeated
            progress(i + 1, prompts.count)
        }
        return DemoEvaluation(prompts: expanded, scores: scores, images: Tensor.cat(images, dim: 0))
    }
}

extension ShapesWorldBundle {
    /// The bundle at `path`, or the one shipped with the package.
    public static func located(_ path: String?) throws -> URL {
        guard let bundle = path.map({ URL(fileURLWithPath: $0) }) ?? url else {
            throw TextCraftorError.invalidSetting(
                key: "model", message: "the ShapesWorld bundle is not installed with this binary: give a bundle from `textcraftor shapes pretrain`")
        }
        return bundle
    }
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
        throw TextCraftorError.invalidSetting(key: "out", message: "\(url.path) exists and is not an earlier demo's output: choose another folder")
    }
}
