import Foundation
import NN
import Torch

/// transformers' `CLIPConfig` (a `CLIPModel`'s `config.json`): both towers' configs, the shared projection width and
/// the initial `logit_scale`, with transformers' defaults for whatever is absent.
///
/// Older configs (openai/clip-vit-*, laion/CLIP-ViT-H-14) also carry `text_config_dict` / `vision_config_dict`.
/// transformers then builds each tower's config from the `_dict` alone (its defaults for absent keys) and overwrites
/// `text_config` with it, so the same is done here.
public struct CLIPConfig: Codable, Sendable, Equatable {
    public var text_config = CLIPTextConfig()
    public var vision_config = CLIPVisionConfig()
    public var projection_dim = 512
    public var logit_scale_init_value = 2.6592
    public var model_type: String? = "clip"

    public init() {}

    enum CodingKeys: String, CodingKey {
        case text_config, vision_config, projection_dim, logit_scale_init_value, model_type
        case text_config_dict, vision_config_dict
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPConfig()
        text_config = try c.decodeIfPresent(CLIPTextConfig.self, forKey: .text_config_dict)
            ?? c.decodeIfPresent(CLIPTextConfig.self, forKey: .text_config) ?? d.text_config
        vision_config = try c.decodeIfPresent(CLIPVisionConfig.self, forKey: .vision_config_dict)
            ?? c.decodeIfPresent(CLIPVisionConfig.self, forKey: .vision_config) ?? d.vision_config
        projection_dim = try c.decodeIfPresent(Int.self, forKey: .projection_dim) ?? d.projection_dim
        logit_scale_init_value = try c.decodeIfPresent(Double.self, forKey: .logit_scale_init_value) ?? d.logit_scale_init_value
        model_type = try c.decodeIfPresent(String.self, forKey: .model_type)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(text_config, forKey: .text_config)
        try c.encode(vision_config, forKey: .vision_config)
        try c.encode(projection_dim, forKey: .projection_dim)
        try c.encode(logit_scale_init_value, forKey: .logit_scale_init_value)
        try c.encodeIfPresent(model_type, forKey: .model_type)
    }

    /// Reads a `CLIPModel` `config.json`; a config of another model type (a lone text encoder's, say) is an error
    /// naming the file, rather than a model built from defaults that then fits no weights.
    public static func load(_ url: URL) throws -> CLIPConfig {
        let config = try decodeConfig(CLIPConfig.self, from: url)
        if let type = config.model_type, type != "clip" {
            throw StableDiffusionError.invalidConfig(
                file: url.path, message: "model_type \"\(type)\" is not a CLIPModel config (expected \"clip\")")
        }
        return config
    }
}

extension CLIPConfig: RangeCheckedConfig {
    public func checkRanges(file: String, prefix: String? = nil) throws {
        try text_config.checkRanges(file: file, prefix: "text_config")
        try vision_config.checkRanges(file: file, prefix: "vision_config")
        try ConfigRanges(file: file, prefix: prefix).width("projection_dim", projection_dim)
    }
}

/// transformers' `CLIPModel`: the text tower (`text_model.*`, Stable Diffusion's `CLIPTextModel`), the vision tower
/// (`vision_model.*`), `text_projection` and `visual_projection` (no bias) into one embedding space, and
/// `logit_scale`. PickScore_v1 is one (ViT-H/14), as is OpenAI's CLIP ViT-L/14 that the LAION aesthetic predictor reads.
public final class CLIPModel: Module {
    public let scope: ParameterScope
    public let config: CLIPConfig
    public let textModel: CLIPTextModel
    public let visionModel: CLIPVisionModel
    public let textProjection: Linear
    public let visualProjection: Linear
    /// `logit_scale`, a scalar: the log of the factor on cosine similarities (PickScore_v1: ~4.6, i.e. ×100).
    public let logitScaleParameter: Tensor
    /// The tokenizer the text tower reads (the model folder's own, or CLIP's bundled one).
    public let tokenizer: CLIPTokenizer

    /// The square input size of the vision tower.
    public var imageSize: Int { config.vision_config.image_size }

    public init(_ vb: VarBuilder, config: CLIPConfig, tokenizer: CLIPTokenizer, configFile: String = "config.json") throws {
        try ConfigRanges(file: configFile, prefix: nil).width("projection_dim", config.projection_dim)
        scope = vb.scope
        self.config = config
        self.tokenizer = tokenizer
        textModel = try CLIPTextModel(
            tower: vb.pp("text_model"), config: config.text_config, configFile: configFile, configKey: "text_config")
        visionModel = try CLIPVisionModel(
            tower: vb.pp("vision_model"), config: config.vision_config, configFile: configFile, configKey: "vision_config")
        visualProjection = Linear(
            vb.pp("visual_projection"), inFeatures: config.vision_config.hidden_size, outFeatures: config.projection_dim,
            bias: false)
        textProjection = Linear(
            vb.pp("text_projection"), inFeatures: config.text_config.hidden_size, outFeatures: config.projection_dim,
            bias: false)
        logitScaleParameter = vb.get([], "logit_scale", initializer: .zeros)
        if !vb.contains("logit_scale") {  // a fresh model starts at transformers' init value
            withNoGrad { logitScaleParameter.fill_(config.logit_scale_init_value) }
        }
    }

    /// transformers' `get_image_features`: the projected pooled output [B, E] of normalised pixels
    /// [B, 3, image_size, image_size]. Not normalised.
    public func imageFeatures(_ pixels: Tensor) -> Tensor {
        visualProjection(visionModel(pixels).pooledOutput)
    }

    /// transformers' `get_text_features`: the projected pooled output [B, E] of token ids [B, L]. Not normalised.
    public func textFeatures(_ inputIds: Tensor) -> Tensor {
        textProjection(textModel(inputIds).pooledOutput)
    }

    /// Loads a `CLIPModel` folder strictly: `config.json`, the weights (`model.safetensors` or PickScore_v1's
    /// `pytorch_model.bin`), and the tokenizer: `tokenizer/`, or `vocab.json` + `merges.txt` beside `config.json`,
    /// else CLIP's bundled one.
    public static func load(folder: URL, dtype: DType? = nil, device: Device = .cpu) throws -> CLIPModel {
        let configURL = folder.appendingPathComponent("config.json")
        let config = try CLIPConfig.load(configURL)
        let weights = try componentWeights(in: folder, baseName: "model", binBaseName: "pytorch_model")
        let (tokenizer, tokenizerOrigin) = try folderTokenizer(folder)
        guard tokenizer.vocabularySize <= config.text_config.vocab_size else {
            throw StableDiffusionError.invalidTokenizer(
                file: tokenizerOrigin,
                message: "the tokenizer has \(tokenizer.vocabularySize) tokens but text_config.vocab_size in "
                    + "\(configURL.path) is \(config.text_config.vocab_size)")
        }
        return try VarBuilder.load(weights, dtype: dtype, device: device) {
            try CLIPModel($0, config: config, tokenizer: tokenizer, configFile: configURL.path)
        }
    }

    /// The tokenizer of a model folder and where it came from.
    static func folderTokenizer(_ folder: URL) throws -> (CLIPTokenizer, String) {
        let files = FileManager.default
        let subfolder = folder.appendingPathComponent("tokenizer")
        if files.fileExists(atPath: subfolder.path) { return (try CLIPTokenizer(directory: subfolder), subfolder.path) }
        if files.fileExists(atPath: folder.appendingPathComponent("vocab.json").path)
            || files.fileExists(atPath: folder.appendingPathComponent("merges.txt").path)
        {
            return (try CLIPTokenizer(directory: folder), folder.path)
        }
        return (try CLIPTokenizer.bundled(), "the bundled CLIP tokenizer")
    }
}
