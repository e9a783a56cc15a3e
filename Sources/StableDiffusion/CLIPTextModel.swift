import Foundation
import NN
import Torch

/// transformers' `CLIPTextConfig` (a text encoder's `config.json`), with its defaults.
public struct CLIPTextConfig: Codable, Sendable, Equatable {
    public var vocab_size = 49408
    public var hidden_size = 512
    public var intermediate_size = 2048
    public var num_hidden_layers = 12
    public var num_attention_heads = 8
    public var max_position_embeddings = 77
    public var hidden_act = "quick_gelu"
    public var layer_norm_eps = 1e-5
    public var projection_dim: Int? = 512
    public var bos_token_id: Int? = 49406
    public var eos_token_id: Int? = 49407
    public var pad_token_id: Int? = 1

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            try c.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        let d = CLIPTextConfig()
        vocab_size = try value(.vocab_size, d.vocab_size)
        hidden_size = try value(.hidden_size, d.hidden_size)
        intermediate_size = try value(.intermediate_size, d.intermediate_size)
        num_hidden_layers = try value(.num_hidden_layers, d.num_hidden_layers)
        num_attention_heads = try value(.num_attention_heads, d.num_attention_heads)
        max_position_embeddings = try value(.max_position_embeddings, d.max_position_embeddings)
        hidden_act = try value(.hidden_act, d.hidden_act)
        layer_norm_eps = try value(.layer_norm_eps, d.layer_norm_eps)
        projection_dim = try value(.projection_dim, d.projection_dim)
        bos_token_id = try value(.bos_token_id, d.bos_token_id)
        eos_token_id = try value(.eos_token_id, d.eos_token_id)
        pad_token_id = try value(.pad_token_id, d.pad_token_id)
    }

    static let activations = ["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"]

    /// The activation of `hidden_act` (transformers' ACT2FN names).
    func activation(file: String, key: String = "hidden_act") throws -> @Sendable (Tensor) -> Tensor {
        try clipActivation(hidden_act, file: file, key: key)
    }
}

extension CLIPTextConfig: RangeCheckedConfig {
    public func checkRanges(file: String, prefix: String? = nil) throws {
        let check = ConfigRanges(file: file, prefix: prefix)
        try check.int("vocab_size", vocab_size, in: 1...ConfigRanges.maxVocab)
        try check.width("hidden_size", hidden_size)
        try check.width("intermediate_size", intermediate_size)
        try check.layers("num_hidden_layers", num_hidden_layers)
        try check.width("num_attention_heads", num_attention_heads)
        try check.divides("num_attention_heads", heads: num_attention_heads, "hidden_size", width: hidden_size)
        try check.width("max_position_embeddings", max_position_embeddings)
        try check.epsilon("layer_norm_eps", layer_norm_eps)
        if let projection_dim { try check.width("projection_dim", projection_dim) }
        let (h, i) = (Double(hidden_size), Double(intermediate_size))
        let perLayer = 4 * h * h + 2 * h * i
        try check.parameters(
            Double(vocab_size + max_position_embeddings) * h + Double(num_hidden_layers) * perLayer, key: "num_hidden_layers")
    }
}

/// transformers' ACT2FN for the names CLIP configs use (`hidden_act` of the text and the vision tower).
func clipActivation(_ name: String, file: String, key: String = "hidden_act") throws -> @Sendable (Tensor) -> Tensor {
    switch name {
    case "quick_gelu": { $0.quickGelu() }
    case "gelu": { $0.gelu() }
    case "gelu_new", "gelu_pytorch_tanh": { $0.gelu(approximate: true) }
    case "relu": { $0.relu() }
    case "silu": { $0.silu() }
    default:
        throw StableDiffusionError.unsupported(file: file, key: key, value: name, supported: CLIPTextConfig.activations)
    }
}

/// What the text encoder returns, as transformers' `BaseModelOutputWithPooling`.
public struct CLIPTextOutput {
    /// The last layer's states after `final_layer_norm`: [B, L, D]. Stable Diffusion conditions on this.
    public let lastHiddenState: Tensor
    /// The final state at each prompt's end-of-text token: [B, D].
    public let pooledOutput: Tensor
    /// When asked for: the embeddings, then the output of every layer (before the final norm), L+1 tensors.
    public let hiddenStates: [Tensor]?
}

/// transformers' `CLIPTextModel` in its checkpoint layout (`text_model.embeddings...`, `text_model.encoder.layers.N`,
/// `text_model.final_layer_norm`): the text tower of Stable Diffusion, and the model TextCraftor fine-tunes.
public final class CLIPTextModel: Module {
    public let scope: ParameterScope
    public let config: CLIPTextConfig
    let tokenEmbedding: Embedding
    let positionEmbedding: Embedding
    let layers: [CLIPEncoderLayer]
    let finalLayerNorm: LayerNorm
    /// Rows of tokens added after the vocabulary (textual inversion), [N, D]: the ids `config.vocab_size` ..< + N look
    /// them up, as if the token embedding had been resized and they written into it (transformers'
    /// `resize_token_embeddings`), while the table itself stays as loaded (not a parameter: it is neither saved nor
    /// loaded with the model). A tensor that requires grad trains through them. nil: none.
    public var addedTokenEmbeddings: Tensor?

    /// `vb` points at the model root; the `text_model.` prefix of real checkpoints is found by itself.
    public convenience init(_ vb: VarBuilder, config: CLIPTextConfig, configFile: String = "config.json") throws {
        let root = vb.contains("text_model.embeddings.token_embedding.weight") || !vb.contains("embeddings.token_embedding.weight")
            ? vb.pp("text_model") : vb
        try self.init(tower: root, scope: vb.scope, config: config, configFile: configFile)
    }

    /// `tower` points at the tower itself (`text_model` in a `CLIPModel` checkpoint); the parameters are named
    /// relative to `scope` (the tower's own path when nil). `configKey` is where `config` sits in `configFile`
    /// (`text_config` in a `CLIPModel`'s), for errors.
    public init(
        tower root: VarBuilder, scope: ParameterScope? = nil, config: CLIPTextConfig, configFile: String = "config.json",
        configKey: String? = nil
    ) throws {
        try config.checkRanges(file: configFile, prefix: configKey)
        self.scope = scope ?? root.scope
        self.config = config
        let embeddings = root.pp("embeddings")
        tokenEmbedding = Embedding(embeddings.pp("token_embedding"), count: config.vocab_size, dimension: config.hidden_size)
        positionEmbedding = Embedding(
            embeddings.pp("position_embedding"), count: config.max_position_embeddings, dimension: config.hidden_size)
        // Older checkpoints store the position_ids buffer (0..<77); the positions are recomputed, so it is skipped.
        embeddings.ignore("position_ids")
        let activation = try config.activation(file: configFile, key: configKey.map { "\($0).hidden_act" } ?? "hidden_act")
        layers = (0..<config.num_hidden_layers).map {
            CLIPEncoderLayer(
                root.pp("encoder").pp("layers").pp($0), hiddenSize: config.hidden_size,
                intermediateSize: config.intermediate_size, heads: config.num_attention_heads,
                layerNormEps: config.layer_norm_eps, activation: activation, isCausal: true)
        }
        finalLayerNorm = LayerNorm(root.pp("final_layer_norm"), size: config.hidden_size, eps: config.layer_norm_eps)
    }

    /// Encodes token ids [B, L] (int64 or int32). Causal self-attention, as CLIP's text tower.
    public func callAsFunction(_ inputIds: Tensor, outputHiddenStates: Bool = false) -> CLIPTextOutput {
        let ids = inputIds.dtype == .int64 ? inputIds : inputIds.to(.int64)
        let length = ids.size(1)
        let positions = Tensor.arange(Double(length), device: ids.device).unsqueeze(0)
        var hidden = embedTokens(ids) + positionEmbedding(positions)
        var states = outputHiddenStates ? [hidden] : nil
        for layer in layers {
            hidden = layer(hidden)
            states?.append(hidden)
        }
        let last = finalLayerNorm(hidden)
        return CLIPTextOutput(lastHiddenState: last, pooledOutput: pool(last, ids), hiddenStates: states)
    }

    /// The token embedding of `ids`, the added rows where an id is past the vocabulary.
    func embedTokens(_ ids: Tensor) -> Tensor {
        guard let added = addedTokenEmbeddings else { return tokenEmbedding(ids) }
        let vocabulary = Double(config.vocab_size)
        // (A Double scalar makes the integer ids float; they are exact there, and go back to int64 for the lookups.)
        let base = tokenEmbedding(ids.clamp(max: vocabulary - 1).to(.int64))
        let rows = Functional.embedding((ids - vocabulary).clamp(min: 0).to(.int64), weight: added.to(dtype: base.dtype, device: base.device))
        return Tensor.where(ids.ge(vocabulary).unsqueeze(-1), rows, base)
    }

    /// The state at the end-of-text token. Configs with `eos_token_id == 2` (the original SD text encoders, from
    /// before transformers fixed the id) take the position of the largest id, which is the end token in CLIP's
    /// vocabulary; others take the first position holding `eos_token_id`. Same rule as transformers 4.x.
    func pool(_ states: Tensor, _ ids: Tensor) -> Tensor {
        let eos = config.eos_token_id ?? 2
        let position = eos == 2 ? ids.argmax(dim: -1) : ids.eq(Double(eos)).to(.int32).argmax(dim: -1)
        let index = position.reshape([-1, 1, 1]).expand([ids.size(0), 1, states.size(2)])
        return states.gather(dim: 1, index: index).squeeze(1)
    }

    /// Reads `config.json` and the weights (`model.safetensors`, `pytorch_model.bin`, or a variant such as
    /// `model.fp16.safetensors`) of a text encoder folder, strictly.
    public static func load(_ weights: any WeightSource, configFile: URL, dtype: DType? = nil, device: Device = .cpu) throws
        -> CLIPTextModel
    {
        try loadTextTower(weights, configFile: configFile, dtype: dtype, device: device) {
            try CLIPTextModel($0, config: $1, configFile: $2)
        }
    }
}

/// A text encoder folder's model: its `config.json` decoded, then built strictly from `weights`.
func loadTextTower<M>(
    _ weights: any WeightSource, configFile: URL, dtype: DType?, device: Device,
    _ make: (VarBuilder, CLIPTextConfig, String) throws -> M
) throws -> M {
    let config = try decodeConfig(CLIPTextConfig.self, from: configFile)
    return try VarBuilder.load(weights, dtype: dtype, device: device) { try make($0, config, configFile.path) }
}

/// What `CLIPTextModelWithProjection` returns, as transformers' `CLIPTextModelOutput`.
public struct CLIPTextModelWithProjectionOutput {
    /// `text_projection` of the pooled output: [B, projection_dim]. SDXL's UNet adds it to its time embedding.
    public let textEmbeds: Tensor
    /// The last layer's states after `final_layer_norm`: [B, L, D].
    public let lastHiddenState: Tensor
    /// When asked for: the embeddings, then the output of every layer (before the final norm), L+1 tensors.
    public let hiddenStates: [Tensor]?
}

/// transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`, OpenCLIP ViT-bigG's text tower): the text
/// tower under `text_model.` and `text_projection`, a linear map without bias of the pooled output.
public final class CLIPTextModelWithProjection: Module {
    public let scope: ParameterScope
    /// The tower alone (its parameters are named relative to `text_model`).
    public let textModel: CLIPTextModel
    let textProjection: Linear

    public var config: CLIPTextConfig { textModel.config }

    public init(_ vb: VarBuilder, config: CLIPTextConfig, configFile: String = "config.json") throws {
        guard let projection = config.projection_dim else {
            throw StableDiffusionError.invalidConfig(
                file: configFile, message: "key \"projection_dim\" is needed by a CLIPTextModelWithProjection")
        }
        scope = vb.scope
        textModel = try CLIPTextModel(tower: vb.pp("text_model"), config: config, configFile: configFile)
        textProjection = Linear(vb.pp("text_projection"), inFeatures: config.hidden_size, outFeatures: projection, bias: false)
    }

    /// Encodes token ids [B, L] (int64 or int32).
    public func callAsFunction(_ inputIds: Tensor, outputHiddenStates: Bool = false) -> CLIPTextModelWithProjectionOutput {
        let out = textModel(inputIds, outputHiddenStates: outputHiddenStates)
        return CLIPTextModelWithProjectionOutput(
            textEmbeds: textProjection(out.pooledOutput), lastHiddenState: out.lastHiddenState, hiddenStates: out.hiddenStates)
    }

    /// Reads `config.json` and the weights (`model.safetensors`, `pytorch_model.bin`, or a variant) of a
    /// `text_encoder_2/` folder, strictly.
    public static func load(_ weights: any WeightSource, configFile: URL, dtype: DType? = nil, device: Device = .cpu) throws
        -> CLIPTextModelWithProjection
    {
        try loadTextTower(weights, configFile: configFile, dtype: dtype, device: device) {
            try CLIPTextModelWithProjection($0, config: $1, configFile: $2)
        }
    }
}

/// One pre-norm transformer block of CLIP (`layer_norm1`, `self_attn`, `layer_norm2`, `mlp.fc1`, `mlp.fc2`): causal in
/// the text tower, bidirectional in the vision tower.
final class CLIPEncoderLayer: Module {
    let scope: ParameterScope
    let layerNorm1, layerNorm2: LayerNorm
    let selfAttention: MultiHeadAttention
    let fc1, fc2: Linear
    let activation: @Sendable (Tensor) -> Tensor
    let isCausal: Bool

    init(
        _ vb: VarBuilder, hiddenSize: Int, intermediateSize: Int, heads: Int, layerNormEps: Double,
        activation: @escaping @Sendable (Tensor) -> Tensor, isCausal: Bool
    ) {
        scope = vb.scope
        layerNorm1 = LayerNorm(vb.pp("layer_norm1"), size: hiddenSize, eps: layerNormEps)
        selfAttention = MultiHeadAttention(vb.pp("self_attn"), dimension: hiddenSize, heads: heads)
        layerNorm2 = LayerNorm(vb.pp("layer_norm2"), size: hiddenSize, eps: layerNormEps)
        fc1 = Linear(vb.pp("mlp").pp("fc1"), inFeatures: hiddenSize, outFeatures: intermediateSize)
        fc2 = Linear(vb.pp("mlp").pp("fc2"), inFeatures: intermediateSize, outFeatures: hiddenSize)
        self.activation = activation
        self.isCausal = isCausal
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let h = x + selfAttention(layerNorm1(x), isCausal: isCausal)
        return h + fc2(activation(fc1(layerNorm2(h))))
    }
}
