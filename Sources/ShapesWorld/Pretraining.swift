import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// The four stages of ShapesWorld's pretraining, in the order they run.
public enum PretrainingStage: String, CaseIterable, Codable, Sendable {
    case clip, vae, unet, aesthetic

    public var title: String {
        switch self {
        case .clip: return "CLIP (contrastive)"
        case .vae: return "VAE (reconstruction + KL)"
        case .unet: return "UNet (noise prediction)"
        case .aesthetic: return "aesthetic head (quality regression)"
        }
    }
}

/// How long each stage trains and with what: `textcraftor shapes pretrain`'s settings. The same plan and seed give the
/// same bundle, bit for bit, on the same machine and libtorch.
public struct PretrainingPlan: Codable, Hashable, Sendable {
    public var seed: UInt64 = 0
    public var clipSteps = 3000
    public var vaeSteps = 1500
    public var unetSteps = 8000
    public var aestheticSteps = 2000
    public var clipBatchSize = 64
    public var vaeBatchSize = 32
    public var unetBatchSize = 64
    public var aestheticBatchSize = 64
    public var clipLearningRate = 1e-3
    public var vaeLearningRate = 1e-3
    public var unetLearningRate = 1e-3
    public var aestheticLearningRate = 1e-3
    /// How the UNet's training images are degraded and captioned.
    public var unetRecipe = UNetPretrainer.defaultRecipe

    public init() {}

    public func steps(_ stage: PretrainingStage) -> Int {
        switch stage {
        case .clip: return clipSteps
        case .vae: return vaeSteps
        case .unet: return unetSteps
        case .aesthetic: return aestheticSteps
        }
    }

    /// The plan with every stage's steps multiplied by `factor` (at least 1 step each): `--scale 0.01` for a smoke run.
    public func scaled(by factor: Double) -> PretrainingPlan {
        var plan = self
        func scale(_ n: Int) -> Int { max(1, Int((Double(n) * factor).rounded())) }
        plan.clipSteps = scale(clipSteps)
        plan.vaeSteps = scale(vaeSteps)
        plan.unetSteps = scale(unetSteps)
        plan.aestheticSteps = scale(aestheticSteps)
        return plan
    }
}

/// What a stage measured when it finished.
public struct StageReport: Codable, Sendable {
    public var stage: PretrainingStage
    public var steps: Int
    public var seconds: Double
    /// The mean training loss over the first and the last 50 steps (or fewer).
    public var firstLoss: Double
    public var lastLoss: Double
    /// Stage-specific measurements (retrieval accuracy, reconstruction error, scaling factor, correlations, ...).
    public var metrics: [String: Double]
}

/// The record `pretraining.json` holds: the plan and each stage's report.
public struct PretrainingRecord: Codable, Sendable {
    public var plan: PretrainingPlan
    public var stages: [StageReport]
    public var libtorch: String?
}

/// Runs the pretraining and writes the ShapesWorld bundle: a diffusers folder (`model_index.json`, `tokenizer/`,
/// `text_encoder/`, `unet/`, `vae/`, `scheduler/`) plus `rewards/clip/` (the whole tiny CLIP, transformers'
/// `CLIPModel` layout) and `rewards/aesthetic.safetensors` (the head, LAION's layout), and `pretraining.json`.
///
/// Work goes into `OUT.partial/`, one stage's component at a time, each recorded in `OUT.partial/pretraining.json`; a
/// run stopped part-way continues from the last finished stage when started again with the same plan. The finished
/// folder is renamed to OUT at the end, so OUT is never half-written.
public final class ShapesPretraining {
    public let plan: PretrainingPlan
    public let output: URL
    let partial: URL

    /// (stage, step, total, loss), after every step.
    public var onStep: ((PretrainingStage, Int, Int, Double) -> Void)?
    /// A finished stage's report (also when it was loaded from an earlier run: seconds then are the earlier run's).
    public var onStageEnd: ((StageReport, _ resumed: Bool) -> Void)?

    public init(plan: PretrainingPlan, output: URL) {
        self.plan = plan
        self.output = output
        partial = output.deletingLastPathComponent().appendingPathComponent(output.lastPathComponent + ".partial")
    }

    var recordURL: URL { partial.appendingPathComponent("pretraining.json") }

    /// The stages already done in `OUT.partial` by a run with the same plan (none if the plan differs: the partial
    /// folder is then started afresh).
    func finishedStages() throws -> [StageReport] {
        guard let data = FileManager.default.contents(atPath: recordURL.path),
            let record = try? JSONDecoder().decode(PretrainingRecord.self, from: data), record.plan == plan
        else { return [] }
        return record.stages
    }

    func writeRecord(_ stages: [StageReport]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let record = PretrainingRecord(plan: plan, stages: stages, libtorch: Torch.compiledVersion)
        try encoder.encode(record).write(to: recordURL, options: .atomic)
    }

    /// Runs (or resumes) every stage and moves the bundle into place. Throws if OUT exists.
    @discardableResult
    public func run() throws -> PretrainingRecord {
        let files = FileManager.default
        if files.fileExists(atPath: output.path) {
            throw ShapesWorldError.outputExists(output.path)
        }
        var done = try finishedStages()
        if done.isEmpty, files.fileExists(atPath: partial.path) { try files.removeItem(at: partial) }
        try files.createDirectory(at: partial, withIntermediateDirectories: true)
        func finished(_ stage: PretrainingStage) -> Bool { done.contains { $0.stage == stage } }
        func record(_ report: StageReport) throws {
            done.append(report)
            try writeRecord(done)
            onStageEnd?(report, false)
        }
        for report in done { onStageEnd?(report, true) }

        // 1. CLIP: text tower, tokenizer and the CLIP reward.
        let clipFolder = partial.appendingPathComponent("rewards/clip")
        if !finished(.clip) {
            let trainer = try CLIPPretrainer(seed: plan.seed, batchSize: plan.clipBatchSize, learningRate: plan.clipLearningRate)
            let (seconds, losses) = train(.clip, optimizer: trainer.optimizer) { trainer.step() }
            let metrics = [
                "retrieval_train": trainer.retrievalAccuracy(split: .train),
                "retrieval_held_out": trainer.retrievalAccuracy(split: .heldOut),
                "logit_scale": trainer.model.logitScaleParameter.item(),
            ]
            try ShapesBundle.writeCLIP(trainer.model, to: clipFolder)
            try ShapesBundle.writeTextEncoder(of: trainer.model, to: partial.appendingPathComponent("text_encoder"))
            try trainer.model.tokenizer.write(to: partial.appendingPathComponent("tokenizer"))
            try record(report(.clip, seconds, losses, metrics))
        }
        let clip = try CLIPModel.load(folder: clipFolder, dtype: .float32)
        clip.setTrainable(false)

        // 2. VAE, with its scaling factor measured.
        let vaeFolder = partial.appendingPathComponent("vae")
        if !finished(.vae) {
            let trainer = try VAEPretrainer(seed: plan.seed &+ 1, batchSize: plan.vaeBatchSize,
                                            learningRate: plan.vaeLearningRate, degradationProbability: 0.5)
            let (seconds, losses) = train(.vae, optimizer: trainer.optimizer) { trainer.step().loss }
            let scaling = TinyVAE.scalingFactor(of: trainer.model)
            let metrics = [
                "reconstruction_mae_train": trainer.reconstructionError(split: .train),
                "reconstruction_mae_held_out": trainer.reconstructionError(split: .heldOut),
                "scaling_factor": scaling,
            ]
            try trainer.save(to: vaeFolder, scalingFactor: scaling, dtype: ShapesBundle.storageType)
            try record(report(.vae, seconds, losses, metrics))
        }
        let vae = try AutoencoderKL.load(folder: vaeFolder, dtype: .float32)

        // 3. UNet on the frozen text tower and VAE.
        let unetFolder = partial.appendingPathComponent("unet")
        if !finished(.unet) {
            let trainer = try UNetPretrainer(
                textEncoder: clip.textModel, tokenizer: clip.tokenizer, vae: vae, seed: plan.seed &+ 2,
                batchSize: plan.unetBatchSize, learningRate: plan.unetLearningRate, recipe: plan.unetRecipe)
            let (seconds, losses) = train(.unet, optimizer: trainer.optimizer) { trainer.step() }
            try ModelWriter.writeComponent(
                config: trainer.unet.config, className: "UNet2DConditionModel", weights: trainer.unet.stateDict(),
                to: unetFolder, weightsName: "diffusion_pytorch_model.safetensors", dtype: ShapesBundle.storageType)
            try record(report(.unet, seconds, losses, [:]))
        }

        // 4. The aesthetic head on the frozen CLIP.
        if !finished(.aesthetic) {
            let trainer = try AestheticPretrainer(clip: clip, seed: plan.seed &+ 3, batchSize: plan.aestheticBatchSize,
                                                  learningRate: plan.aestheticLearningRate, vae: vae)
            let (seconds, losses) = train(.aesthetic, optimizer: trainer.optimizer) { trainer.step() }
            let evaluation = trainer.evaluate(count: 512)
            let metrics = [
                "held_out_mae": evaluation.mae, "held_out_mse": evaluation.mse, "held_out_pearson": evaluation.pearson,
                "held_out_spearman": evaluation.spearman, "held_out_constant_mse": evaluation.baselineMSE,
            ]
            try trainer.save(to: partial.appendingPathComponent("rewards/aesthetic.safetensors"), dtype: ShapesBundle.storageType)
            try record(report(.aesthetic, seconds, losses, metrics))
        }

        try ModelWriter.writeScheduler(TinyUNet.schedulerConfig(), to: partial.appendingPathComponent("scheduler"))
        try ModelWriter.writeModelIndex(scheduler: "DDIMScheduler", to: partial)
        try files.moveItem(at: partial, to: output)
        return PretrainingRecord(plan: plan, stages: done, libtorch: Torch.compiledVersion)
    }

    /// Runs a stage's steps; returns the seconds taken and the losses. The optimizer's learning rate follows a cosine
    /// from its value down to a tenth of it over the stage.
    func train(_ stage: PretrainingStage, optimizer: AdamW, step: () -> Double) -> (Double, [Double]) {
        let total = plan.steps(stage)
        let start = Date()
        var losses: [Double] = []
        losses.reserveCapacity(total)
        let peak = optimizer.learningRate
        for i in 1...total {
            let progress = total > 1 ? Double(i - 1) / Double(total - 1) : 0
            optimizer.learningRate = peak * (0.1 + 0.9 * 0.5 * (1 + cos(Double.pi * progress)))
            let loss = step()
            losses.append(loss)
            onStep?(stage, i, total, loss)
        }
        return (Date().timeIntervalSince(start), losses)
    }

    func report(_ stage: PretrainingStage, _ seconds: Double, _ losses: [Double], _ metrics: [String: Double])
        -> StageReport
    {
        func mean(_ xs: ArraySlice<Double>) -> Double { xs.isEmpty ? .nan : xs.reduce(0, +) / Double(xs.count) }
        return StageReport(stage: stage, steps: losses.count, seconds: seconds, firstLoss: mean(losses.prefix(50)),
                           lastLoss: mean(losses.suffix(50)), metrics: metrics)
    }
}

public enum ShapesWorldError: Error, CustomStringConvertible {
    case outputExists(String)

    public var description: String {
        switch self {
        case .outputExists(let path): return "\(path) already exists: choose another --out or remove it"
        }
    }
}

/// The bundle's files: `ModelWriter`'s layouts in `storageType`.
public enum ShapesBundle {
    /// Weights are stored in half precision: the bundle stays under 20 MB (the two copies of the 49408-token
    /// embedding table alone take 12.6 MB in float32). Each stage reads the earlier stages' weights back from the
    /// written files, so everything downstream was trained on the rounded weights; loaders turn them to float32.
    public static let storageType = DType.float16

    /// The whole CLIP as transformers' `CLIPModel`, and its text tower as SD's `text_encoder/`.
    public static func writeCLIP(_ model: CLIPModel, to folder: URL) throws {
        try ModelWriter.writeCLIP(model, dtype: storageType, to: folder)
    }

    public static func writeTextEncoder(of model: CLIPModel, to folder: URL) throws {
        try ModelWriter.writeTextEncoder(config: model.config.text_config, weights: model.stateDict(), dtype: storageType, to: folder)
    }
}
