import Foundation
import NN
import StableDiffusion
import Torch

/// A trained part kept outside the diffusers component folders of a run (a LoRA): its exact copy in each checkpoint,
/// and the file it is exported as in the run folder.
public protocol RunAdapter: AnyObject {
    /// The trained tensors (what AdamW holds).
    var parameters: [Tensor] { get }
    /// The file written into the run folder at each save (`lora.safetensors`).
    var fileName: String { get }
    /// Writes the exact (float32) state into a checkpoint folder being written.
    func saveCheckpoint(in folder: URL) throws
    /// Restores it from a complete checkpoint folder.
    func restoreCheckpoint(from folder: URL) throws
    /// Writes the exported file (atomically).
    func export(to url: URL) throws
}

/// `adapter = "lora"`: LoRA adapters on the trained encoders' linear layers (`LoRANetwork`), down and the dropout
/// masks drawn from a generator seeded with the run's seed (apart from the noise's, so the noise stream is the same as
/// full training). Checkpoints keep `lora.safetensors` in float32 with kohya's names and that generator's state
/// (`lora_generator.safetensors`); the run folder gets `OUT/lora.safetensors` in `lora_format` and `lora_dtype`, with
/// kohya's `ss_*` and the `modelspec.*` metadata.
public final class LoRARun: RunAdapter {
    public let network: LoRANetwork
    public let settings: LoRASettings
    /// Draws the adapters' initial down weights, then their dropout masks.
    let generator: Generator
    /// How many numbers the adapted encoders hold (what full training would train).
    public let encoderParameterCount: Int
    /// Metadata of the exported file (kohya format).
    let metadata: [String: String]
    public static let fileName = "lora.safetensors"
    public var fileName: String { Self.fileName }
    public var parameters: [Tensor] { network.parameters }

    public init(pipeline: StableDiffusionPipeline, config: TrainingConfig, modelName: String) {
        settings = config.lora
        var encoders: [(place: LoRAPlace, model: CLIPTextModel)] = []
        if config.train.trainsFirstEncoder { encoders.append((.textEncoder, pipeline.textEncoder)) }
        if config.train.trainsSecondEncoder, let second = pipeline.textEncoder2 { encoders.append((.textEncoder2, second.textModel)) }
        let generator = Generator(seed: config.seed)
        self.generator = generator
        network = LoRANetwork(
            encoders: encoders, twoEncoders: pipeline.architecture == .sdxl, rank: settings.rank, alpha: settings.effectiveAlpha,
            dropout: settings.dropout, targets: settings.targetNames, generator: generator)
        encoderParameterCount = encoders.reduce(0) { total, encoder in
            total + encoder.model.parameters.filter(\.dtype.isFloatingPoint).reduce(0) { $0 + $1.elementCount }
        }
        metadata = Self.metadata(pipeline: pipeline, config: config, modelName: modelName)
    }

    /// What LoRA trains against full training of the same encoders: the numbers, and AdamW's two float32 moments.
    public var sizeNote: String {
        let lora = network.parameterCount, full = encoderParameterCount
        func megabytes(_ count: Int) -> String { String(format: "%.1f MB", Double(count * 8) / 1e6) }
        return "LoRA: \(lora) trained numbers, \(String(format: "%.2f", 100 * Double(lora) / Double(max(full, 1))))% of the encoders' "
            + "\(full); AdamW moments \(megabytes(lora)) (full training: \(megabytes(full)))"
    }

    public func saveCheckpoint(in folder: URL) throws {
        try Tensor.save(network.stateDict(.kohya), to: folder.appendingPathComponent(fileName))
        try Tensor.save(["state": generator.state], to: folder.appendingPathComponent("lora_generator.safetensors"))
    }

    public func restoreCheckpoint(from folder: URL) throws {
        let url = folder.appendingPathComponent(fileName)
        try network.load(try Tensor.load(safetensors: url), origin: url.path)
        let generatorURL = folder.appendingPathComponent("lora_generator.safetensors")
        guard let state = try Tensor.load(safetensors: generatorURL)["state"] else {
            throw TextCraftorError.invalidCheckpoint(folder: folder.path, message: "lora_generator.safetensors has no 'state'")
        }
        try generator.restore(state: state)
    }

    public func export(to url: URL) throws {
        var metadata = settings.format == .kohya ? metadata : [:]
        metadata["format"] = "pt"
        try Tensor.save(network.stateDict(settings.format, dtype: settings.dtype.dtype), metadata: metadata, to: url)
    }

    /// kohya's `ss_*` keys and Stability's `modelspec.*` keys, as A1111, ComfyUI and civitai read them.
    static func metadata(pipeline: StableDiffusionPipeline, config: TrainingConfig, modelName: String) -> [String: String] {
        let width = pipeline.textEncoder.config.hidden_size
        let vPrediction = pipeline.schedulerConfig.predictionType == "v_prediction"
        let (base, architecture, implementation): (String, String, String) = switch (pipeline.architecture, width) {
        case (.sdxl, _): ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "https://github.com/Stability-AI/generative-models")
        case (.sd, 1024): ("sd_v2", vPrediction ? "stable-diffusion-v2-768-v" : "stable-diffusion-v2-512", "diffusers")
        default: ("sd_v1", "stable-diffusion-v1", "diffusers")
        }
        let size = config.resolution ?? pipeline.defaultSize
        let date = ISO8601DateFormatter().string(from: Date())
        let trained = [config.train.trainsFirstEncoder ? "text_encoder" : nil, config.train.trainsSecondEncoder ? "text_encoder_2" : nil]
            .compactMap { $0 }.joined(separator: " and ")
        let rewards = config.rewards.map { "\($0.name) x\($0.gamma)" }.joined(separator: ", ")
        return [
            "ss_network_module": "networks.lora",
            "ss_network_dim": String(config.lora.rank),
            "ss_network_alpha": String(config.lora.effectiveAlpha),
            "ss_network_dropout": String(config.lora.dropout),
            "ss_network_args": #"{"targets": "\#(config.lora.targetNames.joined(separator: ","))"}"#,
            "ss_base_model_version": base,
            "ss_v2": base == "sd_v2" ? "True" : "False",
            "ss_sd_model_name": modelName,
            "ss_output_name": "lora",
            "ss_text_encoder_lr": String(config.learningRate),
            "ss_unet_lr": "0",
            "ss_network_train_unet_only": "False",
            "ss_network_train_text_encoder_only": "True",
            "ss_seed": String(config.seed),
            "ss_max_train_steps": String(config.maxSteps),
            "ss_resolution": "(\(size), \(size))",
            "ss_mixed_precision": config.mixedPrecision.rawValue,
            "ss_training_comment": "TextCraftor (reward fine-tuning of the text encoder, \(trained)); rewards: \(rewards)",
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": "\(architecture)/lora",
            "modelspec.implementation": implementation,
            "modelspec.title": "TextCraftor LoRA of \(modelName)",
            "modelspec.date": date,
            "modelspec.resolution": "\(size)x\(size)",
            "modelspec.prediction_type": vPrediction ? "v" : "epsilon",
        ]
    }
}
