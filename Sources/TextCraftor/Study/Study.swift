import Foundation
import Rewards
import ShapesWorld
import StableDiffusion
import Torch

/// What the study is doing, for a command to show.
public enum StudyProgress {
    /// Arm `arm` with `seed` begins: unit `index` (0-based) of `total` arm-seed units.
    case started(arm: String, seed: UInt64, index: Int, total: Int)
    /// A finished unit found in OUT/arms/ and reused.
    case reused(arm: String, seed: UInt64, index: Int, total: Int)
    case rendering(done: Int, total: Int)
    case evaluating(label: String, done: Int, total: Int)
    case training(arm: String, steps: Int)
    case trained(StepReport)
    case finished(arm: String, seed: UInt64, seconds: Double, index: Int, total: Int)
}

/// What one arm measured with one seed: written to OUT/arms/ARM/seed-N.json when it finishes, and reused by a rerun.
public struct StudyArmResult: Codable, Sendable {
    public struct Variant: Codable, Sendable {
        public var label: String
        public var blend: Double?
        public var finetunedSteps: Int?
        public var mean: ShapesScores
        /// Per image, prompt-major (the same order for every arm: paired by image).
        public var scores: [ShapesScores]
        /// PNG (base64) of the first image of the first `strip_images` prompts, side by side.
        public var strip: String
    }

    public struct Step: Codable, Sendable {
        public var step: Int
        public var loss: Double
        public var rewards: [String: Double]
    }

    /// The probe over training: held-out probe prompts measured at a step (0: before training).
    public struct Probe: Codable, Sendable {
        public var step: Int
        public var scores: ShapesScores
    }

    public var arm: String
    public var seed: UInt64
    /// The settings it was measured under (`StudyConfig.recipeSettings`).
    public var settings: StudyConfig
    public var trainSeconds: Double
    public var evalSeconds: Double
    public var history: [Step]
    public var probes: [Probe]
    public var variants: [Variant]

    public func variant(_ label: String) -> Variant? { variants.first { $0.label == label } }
}

/// The study: every selected arm trained and measured with every seed, on the same held-out prompts, each unit saved
/// as it finishes so a rerun in the same folder continues; then the findings and the report.
///
/// OUT holds settings.json (the recipe settings: a rerun with other settings is refused), arms/ARM/seed-N.json (one
/// finished unit each), runs/ARM/seed-N/ (the training run folders: the mix and + UNet arms start from them),
/// data/direct/ (the ground-truth renders of the direct arm), and at the end study.json, report.html and verdicts.md.
public final class Study {
    public let config: StudyConfig
    public let arms: [StudyArm]
    public let bundle: URL
    public let output: URL
    /// Checked after every training step; when true the study stops (finished units stay in OUT).
    public var stopRequested: @Sendable () -> Bool = { false }
    /// Training runs this `run` made (0 when every unit was reused).
    public private(set) var trainingRuns = 0

    static let settingsName = "settings.json"
    static let token = "<shapes>"
    static let initWord = "beautiful"

    public init(config: StudyConfig) throws {
        try config.validate()
        self.config = config
        arms = try config.selectedArms()
        bundle = try ShapesWorldBundle.located(config.model)
        output = URL(fileURLWithPath: config.out)
        try checkFolder()
    }

    /// OUT must be absent, empty, or an earlier study with the same recipe settings.
    func checkFolder() throws {
        let files = FileManager.default
        guard files.fileExists(atPath: output.path) else { return }
        let contents = (try? files.contentsOfDirectory(atPath: output.path)) ?? []
        if contents.isEmpty { return }
        let record = output.appendingPathComponent(Self.settingsName)
        guard let data = files.contents(atPath: record.path) else {
            throw TextCraftorError.invalidSetting(key: "out", message: "\(output.path) exists and is not a study's folder: choose another folder")
        }
        guard let recorded = try? JSONDecoder().decode(StudyConfig.self, from: data) else {
            throw TextCraftorError.invalidData(file: record.path, message: "not a study's settings; choose another folder")
        }
        let differences = config.recipeSettings.differences(from: recorded)
        if !differences.isEmpty {
            throw TextCraftorError.invalidSetting(
                key: "out", message: "\(output.path) holds a study with other settings (\(differences.prefix(3).joined(separator: "; "))): rerun with the same settings or choose another folder")
        }
    }

    // MARK: - Paths

    func resultURL(_ arm: String, seed: UInt64) -> URL {
        output.appendingPathComponent("arms/\(Self.stem(arm))/seed-\(seed).json")
    }

    func runURL(_ arm: String, seed: UInt64) -> URL {
        output.appendingPathComponent("runs/\(Self.stem(arm))/seed-\(seed)")
    }

    static func stem(_ name: String) -> String {
        String(name.map { $0.isLetter || $0.isNumber || "-+_.".contains($0) ? $0 : "_" })
    }

    /// A finished unit of OUT, if there is one.
    public func result(_ arm: String, seed: UInt64) throws -> StudyArmResult? {
        let url = resultURL(arm, seed: seed)
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        do {
            return try JSONDecoder().decode(StudyArmResult.self, from: data)
        } catch {
            throw TextCraftorError.invalidData(file: url.path, message: "not a study result (\(error)); delete it to run the arm again")
        }
    }

    // MARK: - Running

    /// Runs every unit missing from OUT, then writes the report.
    public func run(progress: (StudyProgress) -> Void = { _ in }) throws -> StudyReport {
        let files = FileManager.default
        try files.createDirectory(at: output, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(config.recipeSettings).write(to: output.appendingPathComponent(Self.settingsName), options: .atomic)

        let units = config.seedList.flatMap { seed in arms.map { (arm: $0, seed: seed) } }
        var context: Context?
        for (index, unit) in units.enumerated() {
            if try result(unit.arm.name, seed: unit.seed) != nil {
                progress(.reused(arm: unit.arm.name, seed: unit.seed, index: index, total: units.count))
                continue
            }
            progress(.started(arm: unit.arm.name, seed: unit.seed, index: index, total: units.count))
            let started = Date()
            if context == nil { context = try Context(study: self) }
            let measured = try run(unit.arm, seed: unit.seed, context: context!, progress: progress)
            if stopRequested() { throw Self.interrupted(unit.arm, seed: unit.seed, output: output) }
            let url = resultURL(unit.arm.name, seed: unit.seed)
            try files.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try encoder.encode(measured).write(to: url, options: .atomic)
            progress(.finished(arm: unit.arm.name, seed: unit.seed, seconds: Date().timeIntervalSince(started), index: index,
                               total: units.count))
        }
        var results: [String: [StudyArmResult]] = [:]
        for unit in units { results[unit.arm.name, default: []].append(try result(unit.arm.name, seed: unit.seed)!) }
        let report = StudyReport(config: config, arms: arms, results: results)
        try report.write(to: output)
        return report
    }

    static func interrupted(_ arm: StudyArm, seed: UInt64, output: URL) -> TextCraftorError {
        .invalidArgument("interrupted in arm \(arm.name) (seed \(seed)); the finished arms are kept in \(output.path): rerun to continue")
    }

    /// What every unit shares: the original model, the judge, the prompts.
    struct Context {
        let pipeline: StableDiffusionPipeline
        let original: CLIPTextModel
        let judge: ShapesJudge
        let evalPrompts: [String]
        let trainPrompts: [String]

        init(study: Study) throws {
            pipeline = try StableDiffusionPipeline.load(folder: study.bundle)
            original = try pipeline.loadTextEncoder(folder: study.bundle.appendingPathComponent("text_encoder"))
            judge = try ShapesJudge(bundle: study.bundle)
            // The same held-out prompts for every arm and seed; the seed changes the noise and the prompt order.
            evalPrompts = ShapesPrompts.make(count: study.config.evalPrompts, split: .heldOut, seed: study.config.seed &+ 101)
            trainPrompts = ShapesPrompts.make(count: 512, split: .train, seed: study.config.seed &+ 202)
        }
    }

    /// A model to measure: a pipeline whose `conditioning` encoder conditions the calls the fine-tuned one does not,
    /// with `mix(evaluation)` the encoders of the fine-tuned calls (nil: `conditioning` throughout).
    struct Measured {
        let pipeline: StableDiffusionPipeline
        let conditioning: CLIPTextModel
        var suffix = ""
        let mix: (StudyEvaluation) -> EncoderMix?
    }

    func evaluator(_ model: Measured, prompts: [String], imagesPerPrompt: Int, seed: UInt64, context: Context) -> DemoEvaluator {
        let evaluator = DemoEvaluator(
            pipeline: model.pipeline, original: model.conditioning, judge: context.judge, prompts: prompts,
            imagesPerPrompt: imagesPerPrompt, steps: config.samplingSteps, guidance: config.guidance, seed: seed)
        evaluator.suffix = model.suffix
        return evaluator
    }

    func resolvedSteps(_ evaluation: StudyEvaluation) -> Int? {
        switch evaluation.finetunedSteps {
        case nil: nil
        case .configured: config.finetunedSteps
        case .fixed(let n): min(n, config.samplingSteps)
        }
    }

    /// One unit: train (unless the arm only measures), probe along the way, measure every evaluation of the arm.
    func run(_ arm: StudyArm, seed: UInt64, context: Context, progress: (StudyProgress) -> Void) throws -> StudyArmResult {
        let probePrompts = Array(context.evalPrompts.prefix(config.probePrompts))
        func probe(_ model: Measured) throws -> ShapesScores {
            try evaluator(model, prompts: probePrompts, imagesPerPrompt: 1, seed: seed &+ 505, context: context)
                .evaluate(mix: model.mix(.finetuned)).mean
        }
        var history: [StudyArmResult.Step] = []
        var probes: [StudyArmResult.Probe] = []
        var trainSeconds = 0.0
        let model: Measured
        var evaluations = arm.evaluations
        switch arm.recipe {
        case .baseline:
            model = Measured(pipeline: context.pipeline, conditioning: context.original, mix: { _ in nil })
            evaluations = [StudyEvaluation(StudyArm.baselineName)]
            probes = [.init(step: 0, scores: try probe(model))]
        case .mix(let weights):
            var terms: [(encoder: CLIPTextModel?, weight: Double)] = []
            for (name, weight) in weights.sorted(by: { $0.key < $1.key }) {
                terms.append((try loadEncoder(from: name, seed: seed, pipeline: context.pipeline), weight))
            }
            let mixed = terms
            model = Measured(pipeline: context.pipeline, conditioning: context.original, mix: { evaluation in
                EncoderMix.mix(mixed, finetunedSteps: self.resolvedSteps(evaluation))
            })
        case .train(let training):
            let trained = try train(arm, training, seed: seed, context: context, progress: progress) { report, model in
                history.append(.init(step: report.step, loss: report.loss, rewards: report.rewards))
                if report.step % config.probeEvery == 0 || report.step == config.steps {
                    probes.append(.init(step: report.step, scores: try probe(model)))
                }
            } before: { model in
                probes.append(.init(step: 0, scores: try probe(model)))
            }
            model = trained.model
            trainSeconds = trained.seconds
            if stopRequested() { throw Self.interrupted(arm, seed: seed, output: output) }
        }
        let evalStart = Date()
        var variants: [StudyArmResult.Variant] = []
        for evaluation in evaluations {
            let label = "\(arm.name) \(evaluation.label) (seed \(seed))"
            let measured = try evaluator(model, prompts: context.evalPrompts, imagesPerPrompt: config.imagesPerPrompt,
                                         seed: seed &+ 303, context: context)
                .evaluate(mix: model.mix(evaluation)) { progress(.evaluating(label: label, done: $0, total: $1)) }
            variants.append(.init(
                label: evaluation.label, blend: arm.recipe == .baseline ? nil : evaluation.blend,
                finetunedSteps: resolvedSteps(evaluation), mean: measured.mean, scores: measured.scores,
                strip: strip(measured).base64EncodedString()))
        }
        return StudyArmResult(arm: arm.name, seed: seed, settings: config.recipeSettings, trainSeconds: trainSeconds,
                              evalSeconds: Date().timeIntervalSince(evalStart), history: history, probes: probes, variants: variants)
    }

    /// The first image of the first `strip_images` prompts, side by side, as PNG.
    func strip(_ evaluation: DemoEvaluation) -> Data {
        let perPrompt = max(config.imagesPerPrompt, 1)
        let count = min(config.stripImages, evaluation.prompts.count / perPrompt)
        let images = (0..<count).map {
            evaluation.images.narrow(dim: 0, start: $0 * perPrompt, length: 1).contiguous().toArray(UInt8.self)
        }
        let sheet = Renderer.contactSheet(images, columns: max(count, 1), scale: 1)  // the report scales it up
        return PNG.encode(pixels: sheet.pixels, width: sheet.width, height: sheet.height)
    }

    /// The text encoder an earlier arm (same seed) trained, from its run folder.
    func loadEncoder(from arm: String, seed: UInt64, pipeline: StableDiffusionPipeline) throws -> CLIPTextModel {
        try pipeline.loadTextEncoder(folder: try trainedEncoder(arm, seed: seed))
    }

    /// The text_encoder/ folder an earlier arm (same seed) wrote, checked to be there.
    func trainedEncoder(_ arm: String, seed: UInt64) throws -> URL {
        let folder = runURL(arm, seed: seed).appendingPathComponent("text_encoder")
        guard FileManager.default.fileExists(atPath: folder.appendingPathComponent("model.safetensors").path) else {
            throw TextCraftorError.invalidData(
                file: folder.path, message: "the \(arm) arm's encoder is missing: delete \(resultURL(arm, seed: seed).path) to train it again")
        }
        return folder
    }

    /// The training recipe of an arm with a seed: the study's shared settings with the arm's changes.
    public func trainingConfig(_ training: StudyTraining, seed: UInt64) throws -> TrainingConfig {
        var config = TrainingConfig()
        config.mode = training.mode
        config.train = training.train
        config.adapter = training.adapter
        switch (training.train, training.adapter) {
        case (.unet, _): config.learningRate = self.config.unetLr
        case (_, .lora): config.learningRate = self.config.loraLr
        case (_, .token):
            config.learningRate = self.config.tokenLr
            config.token = Self.token
            config.initWord = Self.initWord
        default: config.learningRate = self.config.lr
        }
        config.batchSize = self.config.batchSize
        config.maxSteps = self.config.steps
        config.seed = seed
        config.saveEvery = self.config.steps
        config.keepCheckpoints = 1
        config.shuffle = true
        config.samplingSteps = self.config.samplingSteps
        // A window longer than the sampler (tests shrink sampling_steps) is the whole sampler.
        config.gradientWindow = min(training.gradWindow ?? self.config.gradWindow, self.config.samplingSteps)
        config.guidanceScale = self.config.guidance
        config = try config.overlaying(training.keys.sorted { $0.key < $1.key }.map { ($0.key, $0.value.any) })
        try config.validate()
        return config
    }

    /// The objective of an arm: its terms, gamma 0 left out.
    func rewardTerms(_ training: StudyTraining) -> [(name: String, gamma: Double)] {
        (training.rewards ?? [.aesthetic(), .clipConstraint]).map { term in
            switch term.gamma {
            case .fixed(let gamma): (term.name, gamma)
            case .clipWeight: (term.name, config.clipWeight)
            }
        }.filter { $0.gamma != 0 }
    }

    /// Trains an arm from the original weights (the UNet stage: on the encoder of the arm it starts from), calling
    /// `before` with the model before the first step and `onStep` after each step.
    func train(_ arm: StudyArm, _ training: StudyTraining, seed: UInt64, context: Context, progress: (StudyProgress) -> Void,
               onStep: (StepReport, Measured) throws -> Void, before: (Measured) throws -> Void)
        throws -> (model: Measured, seconds: Double)
    {
        let trainingConfig = try trainingConfig(training, seed: seed)
        let pipeline = try StableDiffusionPipeline.load(folder: bundle)
        if let start = training.startFrom {
            let folder = try trainedEncoder(start, seed: seed)
            try EncoderFolders.resolve(folder.path, key: "text_encoder", architecture: pipeline.architecture).load(into: pipeline)
        }
        try TokenAdapter.check(trainingConfig, pipeline: pipeline)
        let weighted = WeightedReward()
        for term in rewardTerms(training) { weighted.add(try ShapesWorldBundle.reward(term.name, in: bundle), gamma: term.gamma) }
        // early_stop: a tenth of the training prompts held out of training for the signal (as `train` splits them).
        var trainPrompts = context.trainPrompts
        var heldOut: HeldOutEvaluator?
        if let spec = trainingConfig.earlyStop {
            let split = try heldOutSplit(trainPrompts, heldOutFile: nil, column: trainingConfig.promptColumn)
            trainPrompts = split.train
            heldOut = try HeldOutEvaluator(prompts: split.heldOut, signal: try EarlyStopSignal(spec: spec))
        }
        let data: TrainingData
        switch training.mode {
        case .prompt:
            data = .prompts(try SampledBatches(trainPrompts, batchSize: trainingConfig.batchSize, shuffle: true, seed: seed))
        case .direct:
            let pairs = try PairedData(contentsOf: try directData(progress: progress)).pairs
            data = .pairs(try SampledBatches(pairs, batchSize: trainingConfig.batchSize, shuffle: true, seed: seed))
        }
        let folder = runURL(arm.name, seed: seed)
        let files = FileManager.default
        if files.fileExists(atPath: folder.path) { try files.removeItem(at: folder) }  // an unfinished earlier try
        try files.createDirectory(at: folder.deletingLastPathComponent(), withIntermediateDirectories: true)
        let run = RunFolder(folder)
        try run.prepare()
        let trainer = try Trainer(
            pipeline: pipeline, original: TextEncoders(context.original), modelFolder: bundle, rewards: weighted,
            data: data, config: trainingConfig, run: run)
        trainer.stopRequested = stopRequested
        trainer.heldOut = heldOut
        trainingRuns += 1
        // The model as the evaluations see it: the trained encoder (full or LoRA) blended with the original for the
        // last N calls; a token appended to every prompt; in the UNet stage the trained UNet on its fixed encoder.
        let model: Measured
        if training.train == .unet {
            model = Measured(pipeline: pipeline, conditioning: pipeline.textEncoder, mix: { _ in nil })
        } else if let token = trainer.tokenAdapter {
            model = Measured(pipeline: pipeline, conditioning: pipeline.textEncoder, suffix: ", " + token.token, mix: { _ in nil })
        } else {
            model = Measured(pipeline: pipeline, conditioning: context.original, mix: { evaluation in
                EncoderMix.blend(pipeline.textEncoder, weight: evaluation.blend, finetunedSteps: self.resolvedSteps(evaluation))
            })
        }
        try before(model)
        progress(.training(arm: arm.name, steps: trainingConfig.maxSteps))
        let start = Date()
        var failure: Error?
        try trainer.train { report in
            progress(.trained(report))
            guard failure == nil else { return }
            do { try onStep(report, model) } catch { failure = error }
        }
        if let failure { throw failure }
        // Early stopping: the arm is measured with the best held-out evaluation's weights.
        let best = run.best.appendingPathComponent("text_encoder")
        if heldOut != nil, FileManager.default.fileExists(atPath: best.path) { try EncoderFolders(first: best).load(into: pipeline) }
        return (model, Date().timeIntervalSince(start))
    }

    /// The direct arm's paired data: clean renders of distinct training-split scenes with their captions, in
    /// OUT/data/direct/ (metadata.jsonl as `train --mode direct --data` reads it), rendered once.
    func directData(progress: (StudyProgress) -> Void) throws -> URL {
        let folder = output.appendingPathComponent("data/direct")
        let files = FileManager.default
        if files.fileExists(atPath: folder.appendingPathComponent("metadata.jsonl").path) { return folder }
        try Self.renderPairs(count: config.directImages, seed: config.seed &+ 606, to: folder) {
            progress(.rendering(done: $0, total: $1))
        }
        return folder
    }

    /// Writes `count` clean renders of distinct training-split scenes (PNG) and metadata.jsonl with a caption each to
    /// `folder` (through `folder`.partial, renamed at the end).
    public static func renderPairs(count: Int, seed: UInt64, to folder: URL, progress: (Int, Int) -> Void = { _, _ in }) throws {
        let files = FileManager.default
        let partial = folder.deletingLastPathComponent().appendingPathComponent(folder.lastPathComponent + ".partial")
        if files.fileExists(atPath: partial.path) { try files.removeItem(at: partial) }
        try files.createDirectory(at: partial, withIntermediateDirectories: true)
        var random = SplitMix64(seed: seed)
        let scenes = Scene.distinct(count, split: .train, using: &random)
        var lines: [String] = []
        for (index, scene) in scenes.enumerated() {
            let name = String(format: "%05d.png", index)
            let png = PNG.encode(pixels: Renderer.render(scene), width: Renderer.side, height: Renderer.side)
            try png.write(to: partial.appendingPathComponent(name))
            let caption = Captions.caption(for: scene, seed: random.next())
            let line = try JSONSerialization.data(withJSONObject: ["file_name": name, "text": caption], options: [.sortedKeys])
            lines.append(String(decoding: line, as: UTF8.self))
            progress(index + 1, scenes.count)
        }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: partial.appendingPathComponent("metadata.jsonl"))
        if files.fileExists(atPath: folder.path) { try files.removeItem(at: folder) }
        try files.moveItem(at: partial, to: folder)
    }
}
