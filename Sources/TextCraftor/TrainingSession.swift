import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// A training run as a configuration names it: the models loaded, the rewards built, the data read, the run folder
/// prepared (or resumed), the data-parallel group joined. `train` then runs the `Trainer`; the command that made the
/// session only reports progress.
///
/// Everything a user can get wrong (the keys, the files, the devices) fails in `init`, before the run folder is
/// touched.
public final class TrainingSession {
    public let config: TrainingConfig
    public let run: RunFolder
    public let trainer: Trainer
    /// Whether `init` continued a run from its newest checkpoint.
    public let resumed: Bool
    /// How a single-file model was read (`ModelSource.notes`), for the output.
    public let modelNotes: [String]
    /// Rank 0 (or the only process) writes the run folder and reports progress.
    public var isWriter: Bool { trainer.isWriter }

    /// The record a run folder keeps of its configuration (what `--resume` reads).
    public static let recordName = "run.json"

    /// The configuration a run folder was started with (for `--resume`; overlay flags on it to change a setting).
    public static func recordedConfig(in folder: URL) throws -> TrainingConfig {
        let url = folder.appendingPathComponent(recordName)
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw TextCraftorError.invalidCheckpoint(folder: folder.path, message: "not a training run (no \(recordName))")
        }
        do {
            // A record from before a key existed lacks it: the key's default fills it (the record's keys win).
            var record = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
            let defaults = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig())) as? [String: Any] ?? [:]
            record.merge(defaults) { recorded, _ in recorded }
            return try JSONDecoder().decode(TrainingConfig.self, from: JSONSerialization.data(withJSONObject: record))
        } catch {
            throw TextCraftorError.invalidCheckpoint(folder: url.path, message: "not a valid \(recordName)")
        }
    }

    /// Refuses to start a new run where one was started before (it must be resumed instead).
    public static func checkNewRun(_ folder: String) throws {
        if FileManager.default.fileExists(atPath: folder + "/" + recordName) {
            throw TextCraftorError.invalidSetting(
                key: "out", message: "\(folder) already holds a run: continue it with --resume \(folder), or choose another folder")
        }
    }

    /// `resume`: continue the run in `config.out` from its newest checkpoint (`config` is then usually
    /// `recordedConfig` with changes). `distributed`: this process's place in a data-parallel group, or nil.
    public init(config: TrainingConfig, resume: Bool = false, distributed: DistributedEnvironment? = nil) throws {
        try config.validate()
        let config = config.withAbsolutePaths
        guard let out = config.out else { throw TextCraftorError.invalidSetting(key: "out", message: "no run folder given") }
        guard let model = config.model else { throw TextCraftorError.invalidSetting(key: "model", message: "no model folder given") }
        guard !config.rewards.isEmpty else {
            throw TextCraftorError.invalidSetting(key: "reward", message: "no reward given: at least one NAME=PATH[:GAMMA]")
        }
        let rank = distributed?.rank ?? 0
        if !resume, rank == 0 { try Self.checkNewRun(out) }
        var device = try Device.opened(config.device, key: "device")
        if case .cuda = device, let distributed, config.device == "cuda" { device = try Device.opened("cuda:\(distributed.localRank)", key: "device") }
        if case .cuda = device { Torch.setTF32(true) }
        if let distributed {
            guard config.mode == .prompt else {
                throw TextCraftorError.invalidSetting(key: "mode", message: "data-parallel training is for prompt mode")
            }
            guard config.batchSize % distributed.worldSize == 0 else {
                throw TextCraftorError.invalidSetting(
                    key: "batch_size",
                    message: "\(config.batchSize) does not split across \(distributed.worldSize) processes: use a multiple of \(distributed.worldSize)")
            }
        }

        let data = try Self.trainingData(config)
        let precision = config.mixedPrecision
        let source = try config.modelSource()
        modelNotes = source.notes
        let modelURL = source.folder
        let architecture = try source.architecture
        try config.train.requireSupported(by: architecture, model: model)
        let fineTuned = try config.textEncoder.map { try EncoderFolders.resolve($0, key: "text_encoder", architecture: architecture) }
        let pipeline = try precision.loadPipeline(source, device: device, training: config.train)
        if let resolution = config.resolution, resolution % pipeline.vaeScaleFactor != 0 {
            throw TextCraftorError.invalidSetting(
                key: "resolution", message: "expected a positive multiple of \(pipeline.vaeScaleFactor), found \(resolution)")
        }
        // The frozen originals condition the steps before the gradient window: a copy of each encoder that trains.
        // With a reward token the encoders are frozen and the token conditions every step, so there is none.
        let original = config.adapter == .token
            ? TextEncoders(of: pipeline)
            : try TextEncoders.originals(
                of: pipeline, model: source, training: config.train, dtype: precision.frozenDType, device: device)
        // The UNet stage on fine-tuned encoders: their weights replace the pipeline's (same architecture).
        try fineTuned?.load(into: pipeline)
        try TokenAdapter.check(config, pipeline: pipeline)
        let rewards = WeightedReward(normalization: config.normalizeRewards)
        for reward in config.rewards {
            rewards.add(try RewardRegistry.load(name: reward.name, paths: reward.paths, dtype: precision.frozenDType, device: device),
                        gamma: reward.gamma, scale: reward.scale)
        }
        // early_stop: the held-out prompts and the signal's reward, loaded before the run folder is touched.
        let heldOut = try config.earlyStop.map { spec in
            try HeldOutEvaluator(prompts: try Self.heldOutPrompts(config), signal: try EarlyStopSignal(spec: spec),
                                 dtype: precision.frozenDType, device: device)
        }
        let backend = try distributed.map { _ in try DistributedEnvironment.backend(config.distBackend, device: device) }
        let group = try distributed.map { try $0.join(timeout: config.distTimeout, backend: backend!) }
        run = RunFolder(URL(fileURLWithPath: out))
        if rank == 0 { try run.prepare() }
        trainer = try Trainer(pipeline: pipeline, original: original, modelFolder: modelURL, modelName: source.name, rewards: rewards,
                              data: data, config: config, run: run)
        trainer.heldOut = heldOut
        trainer.parallel = group.map { DataParallel(group: $0, syncCheckEvery: config.syncCheckEvery) }
        self.config = config
        resumed = resume
        if resume {
            try trainer.resume()
        } else if rank == 0 {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try writeSynced(try encoder.encode(config), to: run.url.appendingPathComponent(Self.recordName))
        }
    }

    /// The prompts (prompt mode) or captioned images (direct mode) the configuration names, in batches.
    static func trainingData(_ config: TrainingConfig) throws -> TrainingData {
        switch config.mode {
        case .prompt:
            guard let prompts = config.prompts else {
                throw TextCraftorError.invalidSetting(key: "prompts", message: "prompt mode needs a prompt file")
            }
            var source = try PromptSource(contentsOf: URL(fileURLWithPath: prompts), column: config.promptColumn).prompts
            if config.earlyStop != nil {  // without a file of its own, early stopping holds every tenth prompt out of training
                source = try heldOutSplit(source, heldOutFile: config.heldOutPrompts, column: config.promptColumn).train
            }
            return .prompts(try SampledBatches(source, batchSize: config.batchSize, shuffle: config.shuffle, seed: config.seed))
        case .direct:
            guard let folder = config.data else {
                throw TextCraftorError.invalidSetting(
                    key: "data", message: "direct mode needs a folder of images with metadata.jsonl or metadata.csv")
            }
            let pairs = try PairedData(contentsOf: URL(fileURLWithPath: folder)).pairs
            return .pairs(try SampledBatches(pairs, batchSize: config.batchSize, shuffle: config.shuffle, seed: config.seed))
        }
    }

    /// `early_stop`'s prompts: `held_out_prompts`, or every tenth prompt of the prompt file.
    static func heldOutPrompts(_ config: TrainingConfig) throws -> [String] {
        if let file = config.heldOutPrompts {
            return try PromptSource(contentsOf: URL(fileURLWithPath: file), column: config.promptColumn).prompts
        }
        guard let prompts = config.prompts else {
            throw TextCraftorError.invalidSetting(key: "held_out_prompts", message: "no prompt file to hold prompts out of: give one")
        }
        let all = try PromptSource(contentsOf: URL(fileURLWithPath: prompts), column: config.promptColumn).prompts
        return try heldOutSplit(all, heldOutFile: nil, column: config.promptColumn).heldOut
    }

    /// Trains until `max_steps`, or until `stopRequested` says so (then a checkpoint is saved first).
    public func train(stopRequested: @escaping @Sendable () -> Bool = { false }, onStep: (StepReport) -> Void = { _ in }) throws {
        trainer.stopRequested = stopRequested
        try trainer.train(onStep: onStep)
    }

    /// The folders holding the trained weights (`text_encoder/`, `text_encoder_2/` or `unet/`).
    public var weightsFolders: [URL] { trainer.weightsFolders }
}

extension Device {
    /// A device by its name, checked: one that cannot run here (CUDA without a GPU) is an error naming `key` and the
    /// reason, never a silent CPU run.
    public static func opened(_ name: String, key: String) throws -> Device {
        guard let device = Device(name) else {
            throw TextCraftorError.invalidSetting(key: key, message: "expected cpu, cuda or cuda:N, found \"\(name.prefix(40))\"")
        }
        try device.ensureAvailable()
        return device
    }
}
