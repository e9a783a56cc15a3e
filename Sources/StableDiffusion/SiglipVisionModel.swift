import Foundation
import NN
import Torch

/// transformers' `SiglipVisionConfig` (a `SiglipVisionModel`'s `config.json`, or the `vision_config` of a
/// `SiglipModel`'s), with its defaults. google/siglip-so400m-patch14-384: hidden 1152, intermediate 4304, 27 layers,
/// 16 heads, patch 14, image 384.
public struct SiglipVisionConfig: Codable, Sendable, Equatable {
    public var hidden_size = 768
    public var intermediate_size = 3072
    public var num_hidden_layers = 12
    public var num_attention_heads = 12
    public var num_channels = 3
    public var image_size = 224
    public var patch_size = 16
    public var hidden_act = "gelu_pytorch_tanh"
    public var layer_norm_eps = 1e-6

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            try c.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        let d = SiglipVisionConfig()
        hidden_size = try value(.hidden_size, d.hidden_size)
        intermediate_size = try value(.intermediate_size, d.intermediate_size)
        num_hidden_layers = try value(.num_hidden_layers, d.num_hidden_layers)
        num_attention_heads = try value(.num_attention_heads, d.num_attention_heads)
        num_channels = try value(.num_channels, d.num_channels)
        image_size = try value(.image_size, d.image_size)
        patch_size = try value(.patch_size, d.patch_size)
        hidden_act = try value(.hidden_act, d.hidden_act)
        layer_norm_eps = try value(.layer_norm_eps, d.layer_norm_eps)
    }

    /// Patches per side of the (square) input.
    public var gridSize: Int { image_size / patch_size }

    /// The vision config of a SigLIP folder's `config.json`: a `SiglipVisionModel`'s (model_type
    /// `siglip_vision_model`, the keys at the top) or a `SiglipModel`'s (`siglip`, under `vision_config`). The flag
    /// says which, since a `SiglipModel`'s weights also hold the text tower.
    public static func load(_ url: URL) throws -> (config: SiglipVisionConfig, fullModel: Bool) {
        struct Header: Decodable {
            var model_type: String?
            var vision_config: SiglipVisionConfig?
        }
        let header = try decodeConfig(Header.self, from: url)
        let known = ["siglip", "siglip_vision_model"]
        if let type = header.model_type, !known.contains(type) {
            throw StableDiffusionError.invalidConfig(
                file: url.path,
                message: "model_type \"\(type)\" is not a SigLIP config (expected \(known.map { "\"\($0)\"" }.joined(separator: " or ")))")
        }
        // A SiglipModel's config without vision_config gets transformers' default vision config, as SiglipConfig does.
        if header.vision_config != nil || header.model_type == "siglip" {
            let vision = header.vision_config ?? SiglipVisionConfig()
            try vision.checkRanges(file: url.path, prefix: "vision_config")
            return (vision, true)
        }
        return (try decodeConfig(SiglipVisionConfig.self, from: url), false)
    }
}

extension SiglipVisionConfig: RangeCheckedConfig {
    public func checkRanges(file: String, prefix: String? = nil) throws {
        let check = ConfigRanges(file: file, prefix: prefix)
        try check.width("hidden_size", hidden_size)
        try check.width("intermediate_size", intermediate_size)
        try check.layers("num_hidden_layers", num_hidden_layers)
        try check.width("num_attention_heads", num_attention_heads)
        try check.divides("num_attention_heads", heads: num_attention_heads, "hidden_size", width: hidden_size)
        try check.int("num_channels", num_channels, in: 1...64)
        try check.int("image_size", image_size, in: 1...8192)
        try check.int("patch_size", patch_size, in: 1...image_size)
        try check.epsilon("layer_norm_eps", layer_norm_eps)
        let (h, i) = (Double(hidden_size), Double(intermediate_size))
        let positions = Double(gridSize * gridSize)
        try check.parameters(
            positions * h + Double(num_channels * patch_size * patch_size) * h
                + Double(num_hidden_layers + 1) * (4 * h * h + 2 * h * i), key: "num_hidden_layers")
    }
}

/// What the SigLIP vision tower returns, as transformers' `BaseModelOutputWithPooling`.
public struct SiglipVisionOutput {
    /// The last layer's states after `post_layernorm`: [B, patches, D] (no class token).
    public let lastHiddenState: Tensor
    /// The attention-pooling head's output [B, D] (`pooler_output`).
    public let pooledOutput: Tensor
}

/// transformers' `SiglipVisionModel` in its checkpoint layout: `vision_model.embeddings.{patch_embedding,
/// position_embedding}` (a biased convolution, one position per patch, no class token), `vision_model.encoder.layers.N`
/// (CLIP's layer: `layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc{1,2}`),
/// `vision_model.post_layernorm`, and the multihead-attention pooling head `vision_model.head.{probe,
/// attention.in_proj_weight/bias, attention.out_proj, layernorm, mlp.fc{1,2}}`: a learned query attends to every
/// patch (`nn.MultiheadAttention`), then a residual MLP. The Aesthetic Predictor v2.5 reads its pooled output.
public final class SiglipVisionModel: Module {
    public let scope: ParameterScope
    public let config: SiglipVisionConfig
    let patchEmbedding: Conv2d
    let positionEmbedding: Embedding
    let layers: [CLIPEncoderLayer]
    let postLayerNorm: LayerNorm
    let head: SiglipAttentionPoolingHead

    /// `vb` points at the model root (the `vision_model.` prefix is added here). `configKey` is where `config` sits
    /// in `configFile` (`vision_config` in a `SiglipModel`'s), for errors.
    public init(_ vb: VarBuilder, config: SiglipVisionConfig, configFile: String = "config.json", configKey: String? = nil) throws {
        try config.checkRanges(file: configFile, prefix: configKey)
        scope = vb.scope
        self.config = config
        let root = vb.pp("vision_model")
        let width = config.hidden_size
        let embeddings = root.pp("embeddings")
        patchEmbedding = Conv2d(
            embeddings.pp("patch_embedding"), inChannels: config.num_channels, outChannels: width,
            kernelSize: config.patch_size, stride: config.patch_size)
        positionEmbedding = Embedding(
            embeddings.pp("position_embedding"), count: config.gridSize * config.gridSize, dimension: width)
        // A persistent buffer in older transformers versions (0..<positions); every position is added in order.
        embeddings.ignore("position_ids")
        let activation = try clipActivation(
            config.hidden_act, file: configFile, key: configKey.map { "\($0).hidden_act" } ?? "hidden_act")
        layers = (0..<config.num_hidden_layers).map {
            CLIPEncoderLayer(
                root.pp("encoder").pp("layers").pp($0), hiddenSize: width, intermediateSize: config.intermediate_size,
                heads: config.num_attention_heads, layerNormEps: config.layer_norm_eps, activation: activation,
                isCausal: false)
        }
        postLayerNorm = LayerNorm(root.pp("post_layernorm"), size: width, eps: config.layer_norm_eps)
        head = SiglipAttentionPoolingHead(root.pp("head"), config: config, activation: activation)
    }

    /// Encodes normalised pixels [B, C, image_size, image_size] (converted to the weights' dtype).
    public func callAsFunction(_ pixels: Tensor) -> SiglipVisionOutput {
        let size = config.image_size
        precondition(
            pixels.rank == 4 && pixels.size(1) == config.num_channels && pixels.size(2) == size && pixels.size(3) == size,
            "SiglipVisionModel: pixels of shape \(pixels.shape), the model takes [B, \(config.num_channels), \(size), \(size)]")
        let dtype = patchEmbedding.weight.dtype
        let x = pixels.dtype == dtype ? pixels : pixels.to(dtype)
        var hidden = patchEmbedding(x).flatten(from: 2).transpose(1, 2) + positionEmbedding.weight.unsqueeze(0)
        for layer in layers { hidden = layer(hidden) }
        hidden = postLayerNorm(hidden)
        return SiglipVisionOutput(lastHiddenState: hidden, pooledOutput: head(hidden))
    }

    /// Loads a SigLIP folder strictly: `config.json` and `model.safetensors` (or `pytorch_model.bin`) of a
    /// `SiglipVisionModel`, or of a whole `SiglipModel` (google/siglip-so400m-patch14-384), whose `vision_model.*`
    /// tensors are taken and the text tower's left unread.
    public static func load(folder: URL, dtype: DType? = nil, device: Device = .cpu) throws -> SiglipVisionModel {
        let configURL = folder.appendingPathComponent("config.json")
        let (config, fullModel) = try SiglipVisionConfig.load(configURL)
        var weights = try componentWeights(in: folder, baseName: "model", binBaseName: "pytorch_model")
        if fullModel {
            let vision = weights.keys.filter { $0.hasPrefix("vision_model.") }
            weights = RenamedWeights(weights, names: Dictionary(uniqueKeysWithValues: vision.map { ($0, $0) }))
        }
        return try VarBuilder.load(weights, dtype: dtype, device: device) {
            try SiglipVisionModel($0, config: config, configFile: configURL.path, configKey: fullModel ? "vision_config" : nil)
        }
    }
}

/// transformers' `SiglipMultiheadAttentionPoolingHead`: `probe` [1, 1, D] queries the patches through
/// `nn.MultiheadAttention` (`attention.in_proj_weight` [3D, D], `in_proj_bias`, `out_proj`), then
/// h + mlp(layernorm(h)); the one query's row is the pooled output.
final class SiglipAttentionPoolingHead: Module {
    let scope: ParameterScope
    let probe: Tensor
    let attention: MultiHeadAttention
    let layerNorm: LayerNorm
    let fc1, fc2: Linear
    let activation: @Sendable (Tensor) -> Tensor

    init(_ vb: VarBuilder, config: SiglipVisionConfig, activation: @escaping @Sendable (Tensor) -> Tensor) {
        scope = vb.scope
        let width = config.hidden_size
        probe = vb.get([1, 1, width], "probe", initializer: .normal(std: 1))
        attention = MultiHeadAttention(packed: vb.pp("attention"), dimension: width, heads: config.num_attention_heads)
        layerNorm = LayerNorm(vb.pp("layernorm"), size: width, eps: config.layer_norm_eps)
        fc1 = Linear(vb.pp("mlp").pp("fc1"), inFeatures: width, outFeatures: config.intermediate_size)
        fc2 = Linear(vb.pp("mlp").pp("fc2"), inFeatures: config.intermediate_size, outFeatures: width)
        self.activation = activation
    }

    /// Pooled [B, D] of states [B, N, D].
    func callAsFunction(_ hidden: Tensor) -> Tensor {
        let query = probe.expand([hidden.size(0), 1, probe.size(2)])
        let attended = attention(query, context: hidden)
        let out = attended + fc2(activation(fc1(layerNorm(attended))))
        return out.select(dim: 1, index: 0)
    }
}
