import Foundation
import Rewards
import StableDiffusion
import Torch

/// Everything a training run is started with, in one place: the defaults are the method's (METHOD.md, the authors'
/// code), `fields` names each key as the TOML file and the flags spell it, `validate()` checks them all. The TOML
/// file decodes into it, the flags of `textcraftor train` overlay it, `OUT/run.json` records it, `Trainer` and
/// `TrainingSession` consume it, and `--resume` reads it back.
public struct TrainingConfig: ModelConfiguration {
    // What is trained, on what
    /// prompt (TextCraftor) or direct (paired images and captions, the paper's baseline).
    public var mode = TrainingMode.prompt
    /// The text encoder(s), or the UNet in the second stage.
    public var train = TrainedNetwork.textEncoder
    /// What the optimizer changes: every weight of the trained encoders (full), LoRA adapters on their linear layers
    /// (lora, `lora`'s settings), or one new token's rows (token).
    public var adapter = Adapter.full
    public var lora = LoRASettings()
    /// A diffusers Stable Diffusion folder, or one original-layout checkpoint (`ModelSource`).
    public var model: String?
    /// With a single-file `model`: a diffusers folder of its architecture (configs, tokenizers, scheduler).
    public var modelConfig: String?
    /// With a single-file `model`: its UNet's weights rather than its `model_ema.*` copy.
    public var noEma = false
    /// The scheduler's prediction type, where it is not the model's.
    public var predictionType: String?
    /// Prompt mode: a .txt, Parti .tsv, .csv or .json prompt file.
    public var prompts: String?
    /// The CSV column holding the prompts.
    public var promptColumn = "prompt"
    /// Direct mode: a folder of images with metadata.jsonl or metadata.csv.
    public var data: String?
    /// Fine-tuned text encoders to start from or, in the UNet stage, to condition on (nil: the model's): one
    /// encoder's folder, or a run folder holding `text_encoder/` and/or `text_encoder_2/` (`EncoderFolders`).
    public var textEncoder: String?
    /// The rewards of the objective, −Σ γ·scale·N(R).
    public var rewards: [RewardOption] = []
    /// N: none (raw scores, the authors' scales), running (each reward's running mean and std, checkpointed) or
    /// fixed (typical means and stds); see `RewardNormalization`.
    public var normalizeRewards = RewardNormalization.none
    /// The run folder.
    public var out: String?
    /// adapter token: the new token (e.g. `<aesthetic>`), added to the tokenizer(s) and appended to each prompt that
    /// does not name it (`TokenAdapter`).
    public var token: String?
    /// adapter token: the word (one token) whose embedding row(s) the new token starts from.
    public var initWord: String?
    /// adapter token: how many vectors (tokens `token`, `token_1`, ...) the new token has.
    public var vectors = 1

    // The sampler of prompt mode
    /// DDIM steps per sample (eta 0, trailing timesteps).
    public var samplingSteps = 25
    /// K: the last K sampler steps run with the trainable encoder and with gradient.
    public var gradientWindow = 5
    public var guidanceScale = 7.5
    /// Image size in pixels (nil: the model's).
    public var resolution: Int?
    /// The windowed gradient recomputes the VAE decoder piece by piece in its backward instead of keeping its graph
    /// (at 512x512 its activations outweigh a UNet step's): less memory for one more decoder forward.
    public var vaeCheckpoint = true
    /// Direct mode: the noising timestep is drawn uniformly from this range.
    public var timestepRange = TimestepRange(low: 0, high: 999)

    // Optimiser: AdamW, constant learning rate after an optional linear warm-up, no clipping by default
    public var learningRate = 1e-6
    public var betas = AdamBetas(0.9, 0.999)
    public var weightDecay = 1e-2
    public var eps = 1e-8
    public var warmupSteps = 0
    public var gradientAccumulation = 1
    /// nil: no gradient clipping (the authors clip nothing).
    public var maxGradNorm: Double?

    // The run
    /// Prompts per step (the global batch under data-parallel training).
    public var batchSize = 1
    public var maxSteps = 1000
    public var saveEvery = 500
    public var keepCheckpoints = 3
    /// The latent noise's seed; the prompt order's too when shuffled.
    public var seed: UInt64 = 0
    public var shuffle = false

    // Hardware: cpu, cuda or cuda:N (opened, and so checked for availability, where the run starts)
    public var device = "cpu"
    public var mixedPrecision = MixedPrecision.no

    // Data-parallel
    /// Seconds a rank waits for the others (the rendezvous and every collective).
    public var distTimeout = 300.0
    /// Compare a hash of the parameters across ranks every N steps (and at the end).
    public var syncCheckEvery = 100
    public var distBackend = DistributedBackend.auto

    // Guards against reward hacking (`Guards.swift`)
    /// W of the embedding-proximity penalty: W x the mean squared difference between the trained encoders'
    /// conditioning of the step's prompts and the original encoders' (0: off).
    public var proximityWeight = 0.0
    /// Each step's gradient window is drawn uniformly from 1...grad_window (from the seed and the step).
    public var randomWindow = false
    /// A reward that is not trained, `NAME=PATH[,PATH]` as `reward` takes it, or `oracle` (ShapesWorld's alignment):
    /// the held-out signal for early stopping (nil: off).
    public var earlyStop: String?
    /// Steps between held-out evaluations.
    public var earlyStopEvery = 50
    /// Held-out evaluations without improvement before the run stops.
    public var earlyStopPatience = 3
    /// The held-out prompts (nil: every tenth prompt of `prompts`, at most 32, held out of training).
    public var heldOutPrompts: String?

    // Telemetry
    /// TensorBoard event files in `OUT/tensorboard/` beside metrics.jsonl (`TensorBoardSettings`).
    public var tensorBoard = TensorBoardSettings()

    public init() {}

    public static let fields: [ConfigField<Self>] = modelFields + [
        .choice("mode", \.mode),
        .choice("train", \.train),
        .choice("adapter", \.adapter),
        .integer("lora_rank", \.lora.rank, .between(1, 4096)),
        .number("lora_alpha", \.lora.alpha, .positive),
        .number("lora_dropout", \.lora.dropout, .unit),
        .strings("lora_targets", \.lora.targets),
        .choice("lora_format", \.lora.format),
        .choice("lora_dtype", \.lora.dtype),
        .path("prompts", \.prompts),
        .string("prompt_column", \.promptColumn),
        .path("data", \.data),
        .path("text_encoder", \.textEncoder),
        .rewards("reward", \.rewards),
        .choice("normalize_rewards", \.normalizeRewards),
        .path("out", \.out),
        .string("token", \.token),
        .string("init_word", \.initWord),
        .integer("vectors", \.vectors, .between(1, 75)),
        .integer("sampling_steps", \.samplingSteps, .between(1, 1000)),
        .integer("grad_window", \.gradientWindow, .positive),
        .number("guidance", \.guidanceScale, .any),
        .integer("resolution", \.resolution, .between(1, 8192)),
        .flag("vae_checkpoint", \.vaeCheckpoint),
        ConfigField("t_range", \.timestepRange, read: { try $1.timestepRange($0, $2) }, problem: \.problem),
        .number("lr", \.learningRate, .positive),
        ConfigField("betas", \.betas, read: { try $1.betas($0, $2) }, problem: \.problem),
        .number("weight_decay", \.weightDecay, .nonNegative),
        .number("eps", \.eps, .positive),
        .integer("warmup_steps", \.warmupSteps, .nonNegative),
        .integer("grad_accumulation", \.gradientAccumulation, .between(1, 100_000)),
        .number("max_grad_norm", \.maxGradNorm, .positive),
        .integer("batch_size", \.batchSize, .between(1, 4096)),
        .integer("max_steps", \.maxSteps, .positive),
        .integer("save_every", \.saveEvery, .positive),
        .integer("keep_checkpoints", \.keepCheckpoints, .positive),
        .seed("seed", \.seed),
        .flag("shuffle", \.shuffle),
        .device("device", \.device),
        .choice("mixed_precision", \.mixedPrecision),
        .number("dist_timeout", \.distTimeout, .positive),
        .integer("sync_check_every", \.syncCheckEvery, .positive),
        .choice("dist_backend", \.distBackend),
        .number("proximity_weight", \.proximityWeight, .nonNegative),
        .flag("random_window", \.randomWindow),
        ConfigField("early_stop", \.earlyStop, read: { try $1.earlyStopSpec($0, $2) }, problem: EarlyStopSignal.problem),
        .integer("early_stop_every", \.earlyStopEvery, .between(1, 1_000_000)),
        .integer("early_stop_patience", \.earlyStopPatience, .between(1, 1_000_000)),
        .path("held_out_prompts", \.heldOutPrompts),
        .flag("tensorboard", \.tensorBoard.enabled),
        .integer("tensorboard_images_every", \.tensorBoard.imagesEvery, .nonNegative),
    ]

    public func validateRelations() throws {
        if let problem = lora.targetsProblem { throw TextCraftorError.invalidSetting(key: "lora_targets", message: problem) }
        if adapter == .lora, train == .unet {
            throw TextCraftorError.invalidSetting(key: "adapter", message: "lora trains text encoders: use --adapter full with --train unet")
        }
        guard gradientWindow <= samplingSteps else {
            throw TextCraftorError.invalidSetting(key: "grad_window", message: "\(gradientWindow) is more than sampling_steps (\(samplingSteps))")
        }
        try TokenAdapter.validate(self)
        try validateGuards()
    }

    /// The learning rate at a step (0-based): linear warm-up, then constant.
    public func learningRate(at step: Int) -> Double {
        warmupSteps > 0 ? learningRate * min(1, Double(step + 1) / Double(warmupSteps)) : learningRate
    }

    /// The same settings with every file and folder as an absolute path, so that the run's record can be resumed from
    /// anywhere.
    public var withAbsolutePaths: TrainingConfig {
        func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
        var config = self
        for path in [\Self.model, \Self.modelConfig, \Self.prompts, \Self.data, \Self.textEncoder, \Self.out, \Self.heldOutPrompts] {
            config[keyPath: path] = config[keyPath: path].map(absolute)
        }
        config.earlyStop = config.earlyStop.map { EarlyStopSignal.absolutePaths($0, absolute) }
        for index in config.rewards.indices { config.rewards[index].paths = config.rewards[index].paths.map(absolute) }
        return config
    }

    /// The sampler of prompt mode, as `promptTrainingStep` takes it.
    public var sampling: SamplingSettings {
        SamplingSettings(samplingSteps: samplingSteps, gradientWindow: gradientWindow, guidanceScale: guidanceScale,
                         checkpointsVAE: vaeCheckpoint)
    }
}

/// "cpu", "cuda" or "cuda:N" (whether it can run here is checked where it is opened).
func deviceProblem(_ name: String) -> String? {
    let valid = name == "cpu" || name == "cuda" || (name.hasPrefix("cuda:") && UInt(name.dropFirst(5)) != nil)
    return valid ? nil : "expected cpu, cuda or cuda:N, found \"\(name.prefix(40))\""
}

/// What is trained on: prompts only (the method that works), or paired image–caption data (the paper's baseline).
public enum TrainingMode: String, CaseIterable, Sendable, Codable {
    case prompt
    case direct
}

/// Which network is fine-tuned: the text encoder(s) (TextCraftor), or afterwards the UNet ("TextCraftor + UNet",
/// with the fine-tuned encoders frozen). Never an encoder and the UNet at once: the paper advises against it.
///
/// SDXL has two encoders, so `text-encoder-2` and `text-encoders` (both, one optimizer over the union of their
/// parameters) exist there; SD 1.x/2.x has `text-encoder` and `unet` only (`requireSupported(by:)`).
public enum TrainedNetwork: CaseIterable, Sendable, Codable, RawRepresentable, Equatable {
    /// `text_encoder` (SD 1.x/2.x's only one; SDXL's CLIP ViT-L).
    case textEncoder
    /// SDXL's `text_encoder_2` (OpenCLIP ViT-bigG with its projection, which gives the UNet's pooled embeddings).
    case textEncoder2
    /// Both SDXL encoders.
    case textEncoders
    case unet

    public var rawValue: String {
        switch self {
        case .textEncoder: "text-encoder"
        case .textEncoder2: "text-encoder-2"
        case .textEncoders: "text-encoders"
        case .unet: "unet"
        }
    }

    /// The names above; also `text`, the name of `text-encoder` before SDXL, so that the run.json of an older run
    /// still resumes (it is never written, and not listed among the choices).
    public init?(rawValue: String) {
        if rawValue == "text" {
            self = .textEncoder
            return
        }
        guard let match = Self.allCases.first(where: { $0.rawValue == rawValue }) else { return nil }
        self = match
    }

    /// Whether a text encoder is trained (the first stage), rather than the UNet.
    public var trainsTextEncoder: Bool { self != .unet }

    /// Whether `text_encoder` / `text_encoder_2` is trained.
    public var trainsFirstEncoder: Bool { self == .textEncoder || self == .textEncoders }
    public var trainsSecondEncoder: Bool { self == .textEncoder2 || self == .textEncoders }

    /// Refuses a choice the model cannot take: the second encoder on a model that has one encoder. `model` names the
    /// folder in the message; the error names the key `train` (the CLI prints `--train`).
    public func requireSupported(by architecture: StableDiffusion.ModelArchitecture, model: String) throws {
        guard trainsSecondEncoder, architecture == .sd else { return }
        throw TextCraftorError.invalidSetting(
            key: "train",
            message: "\(rawValue) needs a second text encoder (SDXL), and \(model) is a \(architecture.name) model: use text-encoder or unet")
    }
}

/// The floating-point types a model can be loaded in, by the names torch gives them.
public enum FloatType: String, CaseIterable, Sendable, Codable {
    case float32, float16, bfloat16

    public var dtype: DType {
        switch self {
        case .float32: .float32
        case .float16: .float16
        case .bfloat16: .bfloat16
        }
    }
}

/// Data-parallel collectives: NCCL on CUDA where its plugin is found (auto), or as named.
public enum DistributedBackend: String, CaseIterable, Sendable, Codable {
    case auto, gloo, nccl
}

/// A value made of two numbers, written `[a, b]` in files and records and `a,b` as a flag.
public protocol NumberPair: Codable {
    associatedtype Number: Codable & LosslessStringConvertible
    init(pair first: Number, _ second: Number)
    var pair: (Number, Number) { get }
}

extension NumberPair {
    /// "a,b"; nil when it is not two numbers.
    public init?(_ text: String) {
        let values = text.split(separator: ",").compactMap { Number(String($0.trimmingCharacters(in: .whitespaces))) }
        guard values.count == 2 else { return nil }
        self.init(pair: values[0], values[1])
    }

    public init(from decoder: Decoder) throws {
        var list = try decoder.unkeyedContainer()
        self.init(pair: try list.decode(Number.self), try list.decode(Number.self))
    }

    public func encode(to encoder: Encoder) throws {
        var list = encoder.unkeyedContainer()
        try list.encode(pair.0)
        try list.encode(pair.1)
    }
}

/// AdamW's (β₁, β₂), written `[0.9, 0.999]` in files and `0.9,0.999` as a flag.
public struct AdamBetas: Sendable, Equatable, NumberPair {
    public var beta1: Double
    public var beta2: Double

    public init(_ beta1: Double, _ beta2: Double) {
        self.beta1 = beta1
        self.beta2 = beta2
    }

    public init(pair first: Double, _ second: Double) { self.init(first, second) }

    /// As `AdamW(betas:)` takes them.
    public var pair: (Double, Double) { (beta1, beta2) }

    var problem: String? { Bound.unit.problem(beta1, integer: false) ?? Bound.unit.problem(beta2, integer: false) }
}

/// The range direct fine-tuning draws its noising timestep from, `[LOW, HIGH]` in files and `LOW,HIGH` as a flag.
public struct TimestepRange: Sendable, Equatable, NumberPair {
    public var low: Int
    public var high: Int

    public init(low: Int, high: Int) {
        self.low = low
        self.high = high
    }

    public init(pair first: Int, _ second: Int) { self.init(low: first, high: second) }

    public var pair: (Int, Int) { (low, high) }

    public var range: ClosedRange<Int> { low...high }

    var problem: String? {
        (0 <= low && low <= high && high <= 999) ? nil
            : "expected two timesteps LOW,HIGH with 0 <= LOW <= HIGH <= 999, found \(low),\(high)"
    }
}

/// SDXL's crop conditioning, the top-left corner in pixels (diffusers' `crops_coords_top_left`): `[TOP, LEFT]` in files
/// and `TOP,LEFT` as a flag.
public struct CropCoordinates: Sendable, Equatable, NumberPair {
    public var top: Int
    public var left: Int

    public init(top: Int, left: Int) {
        self.top = top
        self.left = left
    }

    public init(pair first: Int, _ second: Int) { self.init(top: first, left: second) }

    public var pair: (Int, Int) { (top, left) }

    var problem: String? {
        (0...8192).contains(top) && (0...8192).contains(left) ? nil
            : "expected two pixel offsets TOP,LEFT, each between 0 and 8192, found \(top),\(left)"
    }
}

/// One reward of the objective: γ · scale · R. `scale` nil: the reward's own (aesthetic 3, PickScore 1, HPSv2 100,
/// CLIP 100, `WeightedReward.defaultScales`). `paths` as `RewardRegistry.load(name:paths:)` takes them.
public struct RewardOption: Sendable, Equatable, Codable {
    public var name: String
    public var paths: [String]
    public var gamma: Double
    public var scale: Double?

    /// The keys of one `[[reward]]` table.
    public static let keys = ["gamma", "name", "paths", "scale"]

    public init(name: String, paths: [String], gamma: Double = 1, scale: Double? = nil) {
        self.name = name
        self.paths = paths
        self.gamma = gamma
        self.scale = scale
    }

    /// "hpsv2=/path/HPS_v2.pt:0.5" → hpsv2, ["/path/HPS_v2.pt"], γ 0.5; "aesthetic=a,b" has two paths.
    public init(spec: String) throws {
        guard let equals = spec.firstIndex(of: "=") else {
            throw TextCraftorError.invalidArgument("\(excerpt(spec, limit: 80)): expected NAME=PATH[:WEIGHT]")
        }
        var rest = String(spec[spec.index(after: equals)...])
        var gamma = 1.0
        if let colon = rest.lastIndex(of: ":"), let value = Double(rest[rest.index(after: colon)...]) {
            // A weight of inf or nan makes every total inf or nan: nothing to train on, nothing JSON can hold.
            guard value.isFinite else {
                throw TextCraftorError.invalidArgument(
                    "\(excerpt(spec, limit: 80)): the weight \(excerpt(String(rest[rest.index(after: colon)...]), limit: 20)) is not a finite number")
            }
            gamma = value
            rest = String(rest[..<colon])
        }
        guard !rest.isEmpty else { throw TextCraftorError.invalidArgument("\(excerpt(spec, limit: 80)): no path given") }
        self.init(name: String(spec[..<equals]), paths: rest.split(separator: ",").map(String.init), gamma: gamma)
    }
}

extension ConfigField {
    /// `[[reward]]` tables; each gamma and scale must be finite.
    static func rewards(_ key: String, _ path: WritableKeyPath<Config, [RewardOption]>) -> Self {
        Self(
            key: key,
            read: { value, reader, config in config[keyPath: path] = try reader.rewards(value) },
            check: { config in
                for (index, reward) in config[keyPath: path].enumerated() {
                    if let problem = Bound.any.problem(reward.gamma, integer: false) { return ("\(key)[\(index)].gamma", problem) }
                    if let scale = reward.scale, let problem = Bound.any.problem(scale, integer: false) {
                        return ("\(key)[\(index)].scale", problem)
                    }
                }
                return nil
            },
            assign: { value, config in
                guard let value = value as? [RewardOption] else { return false }
                config[keyPath: path] = value
                return true
            })
    }
}

/// TensorBoard logging of a training run (`TrainingTelemetry`): every step's metrics.jsonl values as scalars, and
/// every `imagesEvery` steps (0: never) a grid of the step's sampled images.
public struct TensorBoardSettings: Codable, Sendable, Equatable {
    public var enabled = true
    public var imagesEvery = 100

    public init() {}
}

/// Run records written before TensorBoard logging existed decode with its defaults, so they still resume.
extension KeyedDecodingContainer {
    func decode(_ type: TensorBoardSettings.Type, forKey key: Key) throws -> TensorBoardSettings {
        try decodeIfPresent(TensorBoardSettings.self, forKey: key) ?? TensorBoardSettings()
    }
}
