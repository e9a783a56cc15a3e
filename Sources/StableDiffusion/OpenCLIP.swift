// open_clip's `CLIP` (open_clip/model.py and transformer.py, version 3.3) in its own checkpoint layout: the model of
// HPSv2 (`HPS_v2_compressed.pt`, open_clip ViT-H-14) and of LAION's ViT-H/14, ViT-g/14 and ViT-bigG/14 releases
// (`open_clip_model.safetensors`). Both towers, their projections and `logit_scale`:
//
//     visual.conv1.weight                      patch embedding, no bias
//     visual.class_embedding, visual.positional_embedding, visual.ln_pre
//     visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
//                                     ls_1.gamma?, ln_2, mlp.c_fc, mlp.c_proj, ls_2.gamma?}
//     visual.ln_post, visual.proj              [width, embed_dim], applied as x @ proj
//     token_embedding, positional_embedding, transformer.resblocks.N..., ln_final
//     text_projection                          [width, embed_dim] (x @ proj), or a Linear when proj_bias
//     logit_scale (a scalar log), logit_bias (SigLIP configs only)
//
// The blocks are pre-norm: x + ls_1(attn(ln_1(x))), then x + ls_2(c_proj(act(c_fc(ln_2(x))))). The activation is
// exact GELU, or QuickGELU when `quick_gelu` is set. Attention is `nn.MultiheadAttention`: NN.MultiHeadAttention with
// its packed input projection. The image tower pools the class token after ln_post (open_clip's default
// `pool_type "tok"`, which ViT-H-14, ViT-g-14, ViT-L-14 and ViT-bigG-14 keep); the text tower is causal and pools the
// state after ln_final at argmax(ids), the end token, as CLIP's vocabulary puts it last. The options of the CLIPA
// configs (no ln_pre, average pooling with ln_post after it, a bidirectional text tower pooled at the last position)
// and LayerScale are built too; CLIPA itself is refused for its BERT tokenizer.
//
// Tokens: open_clip's SimpleTokenizer and our CLIPTokenizer give the same ids but for padding (open_clip pads with 0,
// ours with the end token) and the names of the two special tokens in text (open_clip splits "<start_of_text>" and
// "<end_of_text>" written in a prompt, ours "<|startoftext|>" and "<|endoftext|>"). Cleaning is the same: ftfy, then
// open_clip unescapes HTML entities twice more, which ftfy has already done unless the text looks like HTML.
// `openCLIPPadding` rewrites our padding to open_clip's; with argmax or eos pooling and the causal mask it does not
// change any result (positions after the end token are neither pooled nor attended to), but "last" pooling or a
// bidirectional text tower see the padding.
import Foundation
import NN
import Torch

public final class OpenCLIPModel: Module {
    public let scope: ParameterScope
    public let config: OpenCLIPConfig
    /// The text tower's tokenizer: CLIP's BPE, `context_length` tokens.
    public let tokenizer: CLIPTokenizer
    public let visual: OpenCLIPVisionTransformer
    let tokenEmbedding: Embedding
    let positionalEmbedding: Tensor
    let transformer: OpenCLIPTransformer
    let lnFinal: LayerNorm
    let textProjection: Projection?
    /// `logit_scale`, a log (scores use exp() of it). Always present in open_clip's CLIP; optional to match
    /// Rewards.CLIPEmbedder, whose transformers-layout models may lack it.
    public let logitScale: Tensor?
    /// SigLIP's `logit_bias` (configs with `init_logit_bias`).
    public let logitBias: Tensor?

    /// `vb` points at the model root (where `logit_scale` is). Weights saved from inside DistributedDataParallel
    /// (every key under `module.`) are found too: open_clip strips that prefix when it loads them, and so does this.
    public init(_ vb: VarBuilder, config: OpenCLIPConfig, tokenizer: CLIPTokenizer, configFile: String = "open_clip_config.json")
        throws
    {
        try config.validate(file: configFile)
        let text = config.text_cfg
        guard tokenizer.vocabularySize <= text.vocab_size else {
            throw StableDiffusionError.invalidTokenizer(
                file: configFile,
                message: "the tokenizer has \(tokenizer.vocabularySize) tokens but text_cfg.vocab_size is \(text.vocab_size)")
        }
        guard tokenizer.maxLength <= text.context_length else {
            throw StableDiffusionError.invalidTokenizer(
                file: configFile,
                message: "the tokenizer makes \(tokenizer.maxLength) tokens but text_cfg.context_length is \(text.context_length)")
        }
        let vb = vb.allowingWrapper("module")
        scope = vb.scope
        self.config = config
        self.tokenizer = tokenizer
        let activation: @Sendable (Tensor) -> Tensor
        if config.quick_gelu { activation = { $0.quickGelu() } } else { activation = { $0.gelu(approximate: false) } }
        visual = OpenCLIPVisionTransformer(vb.pp("visual"), config: config, activation: activation)
        tokenEmbedding = Embedding(vb.pp("token_embedding"), count: text.vocab_size, dimension: text.width)
        positionalEmbedding = vb.get([text.context_length, text.width], "positional_embedding", initializer: .normal(std: 0.01))
        transformer = OpenCLIPTransformer(
            vb.pp("transformer"), width: text.width, layers: text.layers, heads: text.heads, mlpWidth: text.mlpWidth,
            layerScale: text.ls_init_value != nil, eps: text.layerNormEps, activation: activation)
        lnFinal = LayerNorm(vb.pp("ln_final"), size: text.width, eps: text.layerNormEps)
        switch (text.proj_type, text.proj_bias) {
        case ("none", _): textProjection = nil
        case (_, true):
            textProjection = .linear(Linear(vb.pp("text_projection"), inFeatures: text.width, outFeatures: config.embed_dim))
        case (_, false):
            textProjection = .matrix(
                vb.get([text.width, config.embed_dim], "text_projection", initializer: .normal(std: 1 / Double(text.width).squareRoot())))
        }
        logitScale = vb.get([], "logit_scale", initializer: .zeros)
        logitBias = config.init_logit_bias != nil ? vb.get([], "logit_bias", initializer: .zeros) : nil
    }

    /// The square input size of the image tower.
    public var imageSize: Int { config.vision_cfg.imageSize }

    /// Image features [B, embed_dim] (not normalised) of normalised pixels [B, 3, imageSize, imageSize]:
    /// open_clip's `encode_image`.
    public func encodeImage(_ pixels: Tensor) -> Tensor { visual(pixels) }

    /// Text features [B, embed_dim] (not normalised) of token ids [B, L], L ≤ context_length: open_clip's
    /// `encode_text`. The ids are taken as they are; see `openCLIPPadding` for ids from our tokenizer.
    public func encodeText(_ ids: Tensor) -> Tensor {
        let ids = ids.dtype == .int64 ? ids : ids.to(.int64)
        let length = ids.size(1)
        precondition(
            length <= config.text_cfg.context_length,
            "OpenCLIPModel.encodeText: \(length) tokens, more than context_length \(config.text_cfg.context_length)")
        var x = tokenEmbedding(ids)
        x = x + positionalEmbedding.narrow(dim: 0, start: 0, length: length).to(x.dtype)
        x = transformer(x, isCausal: !config.text_cfg.no_causal_mask)
        x = lnFinal(x)
        x = pool(x, ids)
        switch textProjection {
        case .none: return x
        case .linear(let linear): return linear(x)
        case .matrix(let matrix): return x.matmul(matrix)
        }
    }

    /// The text state [B, width] that open_clip's `text_global_pool` takes.
    func pool(_ states: Tensor, _ ids: Tensor) -> Tensor {
        let position: Tensor
        switch config.text_cfg.pool_type {
        case "first": return states.select(dim: 1, index: 0)
        case "last": return states.select(dim: 1, index: states.size(1) - 1)
        case "eos": position = ids.eq(Double(config.text_cfg.eos_id)).to(.int32).argmax(dim: -1)
        default: position = ids.argmax(dim: -1)  // "argmax": the first position of the largest id
        }
        let index = position.reshape([-1, 1, 1]).expand([ids.size(0), 1, states.size(2)])
        return states.gather(dim: 1, index: index).squeeze(1)
    }

    /// Our tokenizer's ids with open_clip's padding: every position after the first end token becomes 0.
    /// Ids padded by open_clip already are returned unchanged.
    public func openCLIPPadding(_ ids: Tensor) -> Tensor {
        let isEnd = ids.eq(Double(tokenizer.eosTokenId)).to(.int64)
        let afterEnd = (isEnd.cumsum(dim: 1) - isEnd).gt(0)
        return ids.maskedFill(afterEnd, 0)
    }

    enum Projection {
        case matrix(Tensor)
        case linear(Linear)
    }
}

// MARK: - Loading

extension OpenCLIPModel {
    /// Builds the model from named tensors, strictly: every missing key, unused key and shape that does not fit
    /// `config` is reported in one error. `tokenizer` defaults to the bundled CLIP tokenizer (49408 tokens).
    public static func load(
        _ weights: any WeightSource, config: OpenCLIPConfig, tokenizer: CLIPTokenizer? = nil, dtype: DType? = nil,
        device: Device = .cpu, configFile: String = "open_clip_config.json"
    ) throws -> OpenCLIPModel {
        let tokenizer = try tokenizer ?? CLIPTokenizer.bundled(maxLength: config.text_cfg.context_length)
        // Names and shapes are checked first: a wrong HPSv2 file is refused before a ViT-H's 3.9 GB are allocated.
        return try VarBuilder.load(weights, dtype: dtype, device: device) {
            try OpenCLIPModel($0, config: config, tokenizer: tokenizer, configFile: configFile)
        }
    }

    /// Loads `open_clip_model.safetensors`, or a `torch.save` checkpoint (`.pt`, `.pth`, `.bin`) holding the weights
    /// at the top or under `state_dict` (HPSv2's `HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`). Keys under
    /// `module.` (a model saved inside DistributedDataParallel) are accepted. The pickle in `.pt` files is read by
    /// TorchCheckpoint, which refuses any global outside the few a state dict needs and never executes one.
    /// `tokenizerFolder` is a tokenizer folder (vocab.json, merges.txt) for models with another vocabulary.
    public static func load(
        checkpoint url: URL, config: OpenCLIPConfig, tokenizerFolder: URL? = nil, dtype: DType? = nil,
        device: Device = .cpu
    ) throws -> OpenCLIPModel {
        let tokenizer = try tokenizerFolder.map { try CLIPTokenizer(directory: $0) }
        return try load(Weights.open(url), config: config, tokenizer: tokenizer, dtype: dtype, device: device)
    }
}

// MARK: - Towers

/// open_clip's `VisionTransformer`, in the layout of `visual.*`.
public final class OpenCLIPVisionTransformer: Module {
    public let scope: ParameterScope
    let config: OpenCLIPConfig.Vision
    let conv1: Conv2d
    let classEmbedding: Tensor
    let positionalEmbedding: Tensor
    let lnPre: LayerNorm?
    let transformer: OpenCLIPTransformer
    let lnPost: LayerNorm
    let proj: Tensor

    init(_ vb: VarBuilder, config: OpenCLIPConfig, activation: @escaping @Sendable (Tensor) -> Tensor) {
        scope = vb.scope
        let v = config.vision_cfg
        self.config = v
        let grid = v.imageSize / v.patchSize
        let scale = 1 / Double(v.width).squareRoot()
        conv1 = Conv2d(
            vb.pp("conv1"), inChannels: 3, outChannels: v.width, kernelSize: v.patchSize, stride: v.patchSize, bias: false)
        classEmbedding = vb.get([v.width], "class_embedding", initializer: .normal(std: scale))
        positionalEmbedding = vb.get([grid * grid + 1, v.width], "positional_embedding", initializer: .normal(std: scale))
        lnPre = v.no_ln_pre ? nil : LayerNorm(vb.pp("ln_pre"), size: v.width, eps: v.layerNormEps)
        transformer = OpenCLIPTransformer(
            vb.pp("transformer"), width: v.width, layers: v.layerCount, heads: v.heads, mlpWidth: v.mlpWidth,
            layerScale: v.ls_init_value != nil, eps: v.layerNormEps, activation: activation)
        lnPost = LayerNorm(vb.pp("ln_post"), size: v.width, eps: v.layerNormEps)
        proj = vb.get([v.width, config.embed_dim], "proj", initializer: .normal(std: scale))
    }

    /// Pixels [B, 3, S, S] (S = image_size) → features [B, embed_dim].
    public func callAsFunction(_ pixels: Tensor) -> Tensor {
        precondition(
            pixels.rank == 4 && pixels.size(1) == 3 && pixels.size(2) == config.imageSize && pixels.size(3) == config.imageSize,
            "OpenCLIPVisionTransformer: pixels of shape \(pixels.shape), expected [B, 3, \(config.imageSize), \(config.imageSize)]")
        var x = conv1(pixels.to(conv1.weight.dtype))  // [B, width, grid, grid]
        x = x.flatten(from: 2).transpose(1, 2)  // [B, grid², width]
        let batch = x.size(0), width = x.size(2)
        let cls = classEmbedding.to(x.dtype).reshape([1, 1, width]).expand([batch, 1, width])
        x = Tensor.cat([cls, x], dim: 1) + positionalEmbedding.to(x.dtype)
        if let lnPre { x = lnPre(x) }
        x = transformer(x, isCausal: false)
        let pooled = config.final_ln_after_pool ? lnPost(pool(x)) : pool(lnPost(x))
        return pooled.matmul(proj)
    }

    /// "tok": the class token; "avg": the mean of the patch tokens.
    func pool(_ x: Tensor) -> Tensor {
        config.pool_type == "avg" ? x.narrow(dim: 1, start: 1, length: x.size(1) - 1).mean(dim: 1) : x.select(dim: 1, index: 0)
    }
}

/// open_clip's `Transformer`: `resblocks.N`, batch first.
final class OpenCLIPTransformer: Module {
    let scope: ParameterScope
    let blocks: [OpenCLIPResidualAttentionBlock]

    init(
        _ vb: VarBuilder, width: Int, layers: Int, heads: Int, mlpWidth: Int, layerScale: Bool, eps: Double,
        activation: @escaping @Sendable (Tensor) -> Tensor
    ) {
        scope = vb.scope
        blocks = (0..<layers).map {
            OpenCLIPResidualAttentionBlock(
                vb.pp("resblocks").pp($0), width: width, heads: heads, mlpWidth: mlpWidth, layerScale: layerScale, eps: eps,
                activation: activation)
        }
    }

    func callAsFunction(_ x: Tensor, isCausal: Bool) -> Tensor {
        blocks.reduce(x) { $1($0, isCausal: isCausal) }
    }
}

/// open_clip's `ResidualAttentionBlock`: pre-norm attention and MLP, each optionally scaled by a LayerScale.
final class OpenCLIPResidualAttentionBlock: Module {
    let scope: ParameterScope
    let ln1, ln2: LayerNorm
    let attention: MultiHeadAttention
    let cFc, cProj: Linear
    /// LayerScale's `gamma` of the attention and MLP branches (`ls_1.gamma`, `ls_2.gamma`).
    let ls1, ls2: Tensor?
    let activation: @Sendable (Tensor) -> Tensor

    init(
        _ vb: VarBuilder, width: Int, heads: Int, mlpWidth: Int, layerScale: Bool, eps: Double,
        activation: @escaping @Sendable (Tensor) -> Tensor
    ) {
        scope = vb.scope
        ln1 = LayerNorm(vb.pp("ln_1"), size: width, eps: eps)
        attention = MultiHeadAttention(packed: vb.pp("attn"), dimension: width, heads: heads)
        ls1 = layerScale ? vb.get([width], "ls_1.gamma", initializer: .ones) : nil
        ln2 = LayerNorm(vb.pp("ln_2"), size: width, eps: eps)
        cFc = Linear(vb.pp("mlp").pp("c_fc"), inFeatures: width, outFeatures: mlpWidth)
        cProj = Linear(vb.pp("mlp").pp("c_proj"), inFeatures: mlpWidth, outFeatures: width)
        ls2 = layerScale ? vb.get([width], "ls_2.gamma", initializer: .ones) : nil
        self.activation = activation
    }

    func callAsFunction(_ x: Tensor, isCausal: Bool) -> Tensor {
        func scaled(_ branch: Tensor, _ gamma: Tensor?) -> Tensor { gamma.map { branch * $0 } ?? branch }
        let h = x + scaled(attention(ln1(x), isCausal: isCausal), ls1)
        return h + scaled(cProj(activation(cFc(ln2(h)))), ls2)
    }
}
