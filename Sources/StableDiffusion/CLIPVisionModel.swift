import Foundation
import NN
import Torch

/// transformers' `CLIPVisionConfig` (the `vision_config` of a `CLIPModel`'s `config.json`), with its defaults.
public struct CLIPVisionConfig: Codable, Sendable, Equatable {
    public var hidden_size = 768
    public var intermediate_size = 3072
    public var projection_dim = 512
    public var num_hidden_layers = 12
    public var num_attention_heads = 12
    public var num_channels = 3
    public var image_size = 224
    public var patch_size = 32
    public var hidden_act = "quick_gelu"
    public var layer_norm_eps = 1e-5

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            try c.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        let d = CLIPVisionConfig()
        hidden_size = try value(.hidden_size, d.hidden_size)
        intermediate_size = try value(.intermediate_size, d.intermediate_size)
        projection_dim = try value(.projection_dim, d.projection_dim)
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
}

extension CLIPVisionConfig: RangeCheckedConfig {
    public func checkRanges(file: String, prefix: String? = nil) throws {
        let check = ConfigRanges(file: file, prefix: prefix)
        try check.width("hidden_size", hidden_size)
        try check.width("intermediate_size", intermediate_size)
        try check.width("projection_dim", projection_dim)
        try check.layers("num_hidden_layers", num_hidden_layers)
        try check.width("num_attention_heads", num_attention_heads)
        try check.divides("num_attention_heads", heads: num_attention_heads, "hidden_size", width: hidden_size)
        try check.int("num_channels", num_channels, in: 1...64)
        try check.int("image_size", image_size, in: 1...8192)
        try check.int("patch_size", patch_size, in: 1...image_size)
        try check.epsilon("layer_norm_eps", layer_norm_eps)
        let (h, i) = (Double(hidden_size), Double(intermediate_size))
        let positions = Double(gridSize * gridSize + 1)
        try check.parameters(
            positions * h + Double(num_channels * patch_size * patch_size) * h
                + Double(num_hidden_layers) * (4 * h * h + 2 * h * i), key: "num_hidden_layers")
    }
}

/// What the vision tower returns, as transformers' `BaseModelOutputWithPooling`.
public struct CLIPVisionOutput {
    /// The last layer's states [B, 1 + patches, D] (the class token first), without `post_layernorm`.
    public let lastHiddenState: Tensor
    /// `post_layernorm` of the class token: [B, D]. The visual projection reads this.
    public let pooledOutput: Tensor
    /// When asked for: the embeddings after `pre_layrnorm`, then the output of every layer, L+1 tensors.
    public let hiddenStates: [Tensor]?
}

/// transformers' `CLIPVisionModel` in its checkpoint layout: `vision_model.embeddings.{class_embedding,
/// patch_embedding, position_embedding}`, `vision_model.pre_layrnorm` (sic), `vision_model.encoder.layers.N`,
/// `vision_model.post_layernorm`. A ViT whose pooled output is the normalised class token.
public final class CLIPVisionModel: Module {
    public let scope: ParameterScope
    public let config: CLIPVisionConfig
    /// [D]: the learned class token put in front of the patches.
    public let classEmbedding: Tensor
    let patchEmbedding: Conv2d
    let positionEmbedding: Embedding
    let preLayerNorm: LayerNorm
    let layers: [CLIPEncoderLayer]
    let postLayerNorm: LayerNorm

    /// `vb` points at the model root; the `vision_model.` prefix of transformers' checkpoints is found by itself.
    public convenience init(_ vb: VarBuilder, config: CLIPVisionConfig, configFile: String = "config.json") throws {
        let root = vb.contains("vision_model.embeddings.class_embedding") || !vb.contains("embeddings.class_embedding")
            ? vb.pp("vision_model") : vb
        try self.init(tower: root, scope: vb.scope, config: config, configFile: configFile)
    }

    /// `tower` points at the tower itself (`vision_model` in a `CLIPModel` checkpoint); the parameters are named
    /// relative to `scope` (the tower's own path when nil). `configKey` is where `config` sits in `configFile`
    /// (`vision_config` in a `CLIPModel`'s), for errors.
    public init(
        tower root: VarBuilder, scope: ParameterScope? = nil, config: CLIPVisionConfig, configFile: String = "config.json",
        configKey: String? = nil
    ) throws {
        try config.checkRanges(file: configFile, prefix: configKey)
        self.scope = scope ?? root.scope
        self.config = config
        let width = config.hidden_size
        let embeddings = root.pp("embeddings")
        classEmbedding = embeddings.get([width], "class_embedding", initializer: .normal(std: 1 / Double(width).squareRoot()))
        patchEmbedding = Conv2d(
            embeddings.pp("patch_embedding"), inChannels: config.num_channels, outChannels: width,
            kernelSize: config.patch_size, stride: config.patch_size, bias: false)
        positionEmbedding = Embedding(
            embeddings.pp("position_embedding"), count: config.gridSize * config.gridSize + 1, dimension: width)
        // Older checkpoints store the position_ids buffer (0..<positions); the model adds every position in order.
        embeddings.ignore("position_ids")
        preLayerNorm = LayerNorm(root.pp("pre_layrnorm"), size: width, eps: config.layer_norm_eps)
        let activation = try clipActivation(
            config.hidden_act, file: configFile, key: configKey.map { "\($0).hidden_act" } ?? "hidden_act")
        layers = (0..<config.num_hidden_layers).map {
            CLIPEncoderLayer(
                root.pp("encoder").pp("layers").pp($0), hiddenSize: width, intermediateSize: config.intermediate_size,
                heads: config.num_attention_heads, layerNormEps: config.layer_norm_eps, activation: activation,
                isCausal: false)
        }
        postLayerNorm = LayerNorm(root.pp("post_layernorm"), size: width, eps: config.layer_norm_eps)
    }

    /// Encodes normalised pixels [B, C, image_size, image_size] (converted to the weights' dtype).
    public func callAsFunction(_ pixels: Tensor, outputHiddenStates: Bool = false) -> CLIPVisionOutput {
        let size = config.image_size
        precondition(
            pixels.rank == 4 && pixels.size(1) == config.num_channels && pixels.size(2) == size && pixels.size(3) == size,
            "CLIPVisionModel: pixels of shape \(pixels.shape), the model takes [B, \(config.num_channels), \(size), \(size)]")
        let dtype = patchEmbedding.weight.dtype
        let x = pixels.dtype == dtype ? pixels : pixels.to(dtype)
        let batch = x.size(0)
        let patches = patchEmbedding(x).flatten(from: 2).transpose(1, 2)  // [B, grid², D]
        let classToken = classEmbedding.reshape([1, 1, -1]).expand([batch, 1, config.hidden_size])
        var hidden = Tensor.cat([classToken, patches], dim: 1) + positionEmbedding.weight.unsqueeze(0)
        hidden = preLayerNorm(hidden)
        var states = outputHiddenStates ? [hidden] : nil
        for layer in layers {
            hidden = layer(hidden)
            states?.append(hidden)
        }
        let pooled = postLayerNorm(hidden.select(dim: 1, index: 0))
        return CLIPVisionOutput(lastHiddenState: hidden, pooledOutput: pooled, hiddenStates: states)
    }
}
