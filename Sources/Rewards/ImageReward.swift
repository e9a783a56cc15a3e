// ImageReward (Xu et al. 2023, the `image-reward` package 1.5, `ImageReward/ImageReward.py`): BLIP's ViT-L/16 image
// encoder, BLIP's BERT-base text encoder reading the image through cross-attention in every layer, and an MLP head on
// the text's [CLS] state, normalised by the package's mean and std. In the layout of `ImageReward.pt` (the package's
// `ImageReward` module's state dict, which `ImageReward.load` reads with strict=False):
//
//     blip.visual_encoder.patch_embed.proj.{weight,bias}      Conv2d 3 → W, kernel = stride = 16
//     blip.visual_encoder.cls_token [1, 1, W], pos_embed [1, 1 + (S/16)², W]
//     blip.visual_encoder.blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}   pre-norm, exact GELU
//     blip.visual_encoder.norm                                LayerNorm eps 1e-6
//     blip.text_encoder.embeddings.{word_embeddings, position_embeddings, LayerNorm}   (position_ids: a buffer)
//     blip.text_encoder.encoder.layer.N.attention.{self.{query,key,value}, output.{dense,LayerNorm}}
//     blip.text_encoder.encoder.layer.N.crossattention.{self.{query,key,value}, output.{dense,LayerNorm}}
//     blip.text_encoder.encoder.layer.N.{intermediate.dense, output.{dense,LayerNorm}}     post-norm BERT layers
//     blip.vision_proj, blip.text_proj                        BLIP_Pretrain's projections, unused by the score
//     mlp.layers.{0,2,4,6,7}                                  768 → 1024 → 128 → 64 → 16 → 1, no activations
//
// The score (`ImageReward.score_gard`, and `score`/`inference_rank` on preprocessed images): image_embeds =
// visual_encoder(pixels); the prompt's ids ([CLS] … [SEP], padded to 35) go through text_encoder with its padding
// masked (BLIP's extended mask: (1 − mask) · −10000 added to the scores) and cross-attend to every image token;
// reward = (mlp(last_hidden_state[:, 0]) − 0.16717362830052426) / 1.0333394966054072.
import Foundation
import NN
import StableDiffusion
import Torch

/// `med_config.json`: BLIP's BERT text encoder (transformers' `BertConfig` keys that the package's `med.BertModel`
/// reads), with transformers' defaults for absent keys. `encoder_width` is ignored, as in the package, which sets it
/// to the image encoder's width (1024 for ViT-L); the width is read from the checkpoint instead.
public struct BLIPTextConfig: Codable, Sendable, Equatable {
    public var vocab_size = 30522
    public var hidden_size = 768
    public var num_hidden_layers = 12
    public var num_attention_heads = 12
    public var intermediate_size = 3072
    public var hidden_act = "gelu"
    public var layer_norm_eps = 1e-12
    public var max_position_embeddings = 512
    public var add_cross_attention = false
    public var position_embedding_type = "absolute"
    /// Not a package key: the image encoder's heads. BLIP's ViTs (base and large) have 64-wide heads, which is the
    /// default (width / 64); tiny test models set it.
    public var vision_num_attention_heads: Int?

    public init() {}

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = BLIPTextConfig()
        vocab_size = try c.decodeIfPresent(Int.self, forKey: .vocab_size) ?? d.vocab_size
        hidden_size = try c.decodeIfPresent(Int.self, forKey: .hidden_size) ?? d.hidden_size
        num_hidden_layers = try c.decodeIfPresent(Int.self, forKey: .num_hidden_layers) ?? d.num_hidden_layers
        num_attention_heads = try c.decodeIfPresent(Int.self, forKey: .num_attention_heads) ?? d.num_attention_heads
        intermediate_size = try c.decodeIfPresent(Int.self, forKey: .intermediate_size) ?? d.intermediate_size
        hidden_act = try c.decodeIfPresent(String.self, forKey: .hidden_act) ?? d.hidden_act
        layer_norm_eps = try c.decodeIfPresent(Double.self, forKey: .layer_norm_eps) ?? d.layer_norm_eps
        max_position_embeddings = try c.decodeIfPresent(Int.self, forKey: .max_position_embeddings) ?? d.max_position_embeddings
        add_cross_attention = try c.decodeIfPresent(Bool.self, forKey: .add_cross_attention) ?? d.add_cross_attention
        position_embedding_type = try c.decodeIfPresent(String.self, forKey: .position_embedding_type) ?? d.position_embedding_type
        vision_num_attention_heads = try c.decodeIfPresent(Int.self, forKey: .vision_num_attention_heads)
    }

    /// Reads and checks `med_config.json`.
    public static func load(from url: URL) throws -> BLIPTextConfig {
        let config: BLIPTextConfig
        do {
            config = try decodeConfig(BLIPTextConfig.self, from: url)
        } catch let error as StableDiffusionError {
            throw RewardError.invalidModel(file: url.path, message: "\(error)".replacingOccurrences(of: url.path + ": ", with: ""))
        }
        try config.validate(file: url.path)
        return config
    }

    /// One error naming the first key the model cannot be built with.
    public func validate(file: String) throws {
        func fail(_ message: String) -> RewardError { .invalidModel(file: file, message: message) }
        for (key, value) in [("vocab_size", vocab_size), ("hidden_size", hidden_size), ("num_hidden_layers", num_hidden_layers),
                             ("num_attention_heads", num_attention_heads), ("intermediate_size", intermediate_size),
                             ("max_position_embeddings", max_position_embeddings)] where value < 1 {
            throw fail("\(key): expected a number > 0, found \(value)")
        }
        guard hidden_size % num_attention_heads == 0 else {
            throw fail("hidden_size \(hidden_size) is not a multiple of num_attention_heads \(num_attention_heads)")
        }
        guard add_cross_attention else {
            throw fail("add_cross_attention is false: ImageReward's text encoder cross-attends to the image in every layer")
        }
        guard position_embedding_type == "absolute" else {
            throw fail("position_embedding_type \"\(position_embedding_type)\" is not supported (only \"absolute\")")
        }
        guard Self.activations[hidden_act] != nil else {
            throw fail("hidden_act \"\(hidden_act)\" is not supported (\(Self.activations.keys.sorted().joined(separator: ", ")))")
        }
        if let heads = vision_num_attention_heads, heads < 1 {
            throw fail("vision_num_attention_heads: expected a number > 0, found \(heads)")
        }
    }

    /// transformers' ACT2FN entries the BERT layers may name.
    static let activations: [String: @Sendable (Tensor) -> Tensor] = [
        "gelu": { $0.gelu(approximate: false) }, "gelu_new": { $0.gelu(approximate: true) },
        "gelu_pytorch_tanh": { $0.gelu(approximate: true) }, "relu": { $0.relu() },
    ]
}

/// BLIP's ViT: sizes read from the checkpoint's shapes (BLIP's `create_vit('large', 224)`: width 1024, 24 blocks, 16
/// heads, patch 16, image 224).
public struct BLIPVisionConfig: Sendable, Equatable {
    public var width: Int
    public var depth: Int
    public var heads: Int
    public var patchSize: Int
    public var imageSize: Int
    public var mlpWidth: Int

    public init(width: Int, depth: Int, heads: Int, patchSize: Int, imageSize: Int, mlpWidth: Int) {
        self.width = width
        self.depth = depth
        self.heads = heads
        self.patchSize = patchSize
        self.imageSize = imageSize
        self.mlpWidth = mlpWidth
    }

    /// ImageReward's image encoder.
    public static let vitL16 = BLIPVisionConfig(width: 1024, depth: 24, heads: 16, patchSize: 16, imageSize: 224, mlpWidth: 4096)

    /// The sizes of the ViT under `prefix` in `weights`; `heads` nil means width / 64.
    public static func inferred(from weights: any WeightSource, prefix: String, heads: Int?) throws -> BLIPVisionConfig {
        func shape(_ key: String) throws -> [Int] {
            guard let info = weights.info(prefix + key) else {
                throw RewardError.invalidModel(file: weights.origin, message: "not an ImageReward checkpoint: no \(prefix + key)")
            }
            return info.shape
        }
        let conv = try shape("patch_embed.proj.weight"), pos = try shape("pos_embed"), fc1 = try shape("blocks.0.mlp.fc1.weight")
        guard conv.count == 4, conv[2] == conv[3], pos.count == 3, fc1.count == 2 else {
            throw RewardError.invalidModel(
                file: weights.origin, message: "\(prefix)patch_embed.proj.weight \(conv) or \(prefix)pos_embed \(pos) is not a ViT's")
        }
        let width = conv[0], patch = conv[2]
        let grid = Int(Double(pos[1] - 1).squareRoot().rounded())
        guard grid * grid + 1 == pos[1] else {
            throw RewardError.invalidModel(file: weights.origin, message: "\(prefix)pos_embed \(pos) is not 1 + a square number of patches")
        }
        var depth = 0
        while weights.info("\(prefix)blocks.\(depth).norm1.weight") != nil { depth += 1 }
        let heads = heads ?? max(1, width / 64)
        guard width % heads == 0 else {
            throw RewardError.invalidModel(
                file: weights.origin, message: "the image encoder's width \(width) is not a multiple of its \(heads) heads")
        }
        return BLIPVisionConfig(width: width, depth: depth, heads: heads, patchSize: patch, imageSize: grid * patch, mlpWidth: fc1[0])
    }
}

// MARK: - Image encoder

/// BLIP's `VisionTransformer` (`blip/vit.py`, timm's layout): the patch tokens after the final norm, [CLS] first.
public final class BLIPVisionTransformer: Module {
    public let scope: ParameterScope
    public let config: BLIPVisionConfig
    let patchEmbed: Conv2d
    let clsToken: Tensor
    let posEmbed: Tensor
    let blocks: [BLIPVisionBlock]
    let norm: LayerNorm

    public init(_ vb: VarBuilder, config: BLIPVisionConfig) {
        scope = vb.scope
        self.config = config
        let w = config.width, grid = config.imageSize / config.patchSize
        patchEmbed = Conv2d(vb.pp("patch_embed").pp("proj"), inChannels: 3, outChannels: w, kernelSize: config.patchSize, stride: config.patchSize)
        clsToken = vb.get([1, 1, w], "cls_token", initializer: .normal(std: 0.02))
        posEmbed = vb.get([1, grid * grid + 1, w], "pos_embed", initializer: .normal(std: 0.02))
        blocks = (0..<config.depth).map { BLIPVisionBlock(vb.pp("blocks").pp($0), config: config) }
        norm = LayerNorm(vb.pp("norm"), size: w, eps: 1e-6)
    }

    /// Normalised pixels [B, 3, S, S] → image embeddings [B, 1 + (S/P)², W].
    public func callAsFunction(_ pixels: Tensor) -> Tensor {
        precondition(
            pixels.rank == 4 && pixels.size(1) == 3 && pixels.size(2) == config.imageSize && pixels.size(3) == config.imageSize,
            "BLIPVisionTransformer: pixels of shape \(pixels.shape), expected [B, 3, \(config.imageSize), \(config.imageSize)]")
        var x = patchEmbed(pixels.to(patchEmbed.weight.dtype)).flatten(from: 2).transpose(1, 2)  // [B, grid², W]
        let cls = clsToken.to(x.dtype).expand([x.size(0), 1, config.width])
        x = Tensor.cat([cls, x], dim: 1) + posEmbed.to(x.dtype)
        for block in blocks { x = block(x) }
        return norm(x)
    }
}

/// timm's pre-norm `Block` with a packed `qkv` projection.
final class BLIPVisionBlock: Module {
    let scope: ParameterScope
    let heads: Int
    let norm1, norm2: LayerNorm
    let qkv, proj, fc1, fc2: Linear

    init(_ vb: VarBuilder, config: BLIPVisionConfig) {
        scope = vb.scope
        let w = config.width
        heads = config.heads
        norm1 = LayerNorm(vb.pp("norm1"), size: w, eps: 1e-6)
        qkv = Linear(vb.pp("attn").pp("qkv"), inFeatures: w, outFeatures: 3 * w)
        proj = Linear(vb.pp("attn").pp("proj"), inFeatures: w, outFeatures: w)
        norm2 = LayerNorm(vb.pp("norm2"), size: w, eps: 1e-6)
        fc1 = Linear(vb.pp("mlp").pp("fc1"), inFeatures: w, outFeatures: config.mlpWidth)
        fc2 = Linear(vb.pp("mlp").pp("fc2"), inFeatures: config.mlpWidth, outFeatures: w)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let (b, n, c) = (x.size(0), x.size(1), x.size(2))
        // [B, N, 3, heads, d] → [3, B, heads, N, d], as the package's Attention.
        let packed = qkv(norm1(x)).reshape([b, n, 3, heads, c / heads]).permute([2, 0, 3, 1, 4])
        let attended = Functional.scaledDotProductAttention(
            query: packed.select(dim: 0, index: 0), key: packed.select(dim: 0, index: 1), value: packed.select(dim: 0, index: 2))
        let h = x + proj(attended.transpose(1, 2).reshape([b, n, c]))
        return h + fc2(fc1(norm2(h)).gelu(approximate: false))
    }
}

// MARK: - Text encoder

/// BLIP's `med.BertModel` with `add_cross_attention` and no pooler, run in its default "multimodal" mode: every
/// layer is self-attention, cross-attention to the image embeddings, then the feed-forward, each post-norm.
public final class BLIPTextEncoder: Module {
    public let scope: ParameterScope
    public let config: BLIPTextConfig
    let wordEmbeddings: Embedding
    let positionEmbeddings: Embedding
    let embeddingNorm: LayerNorm
    let layers: [BLIPTextLayer]

    public init(_ vb: VarBuilder, config: BLIPTextConfig, encoderWidth: Int) {
        scope = vb.scope
        self.config = config
        let e = vb.pp("embeddings")
        wordEmbeddings = Embedding(e.pp("word_embeddings"), count: config.vocab_size, dimension: config.hidden_size)
        positionEmbeddings = Embedding(e.pp("position_embeddings"), count: config.max_position_embeddings, dimension: config.hidden_size)
        embeddingNorm = LayerNorm(e.pp("LayerNorm"), size: config.hidden_size, eps: config.layer_norm_eps)
        _ = e.optional([1, config.max_position_embeddings], "position_ids")  // a buffer: arange, recomputed
        layers = (0..<config.num_hidden_layers).map {
            BLIPTextLayer(vb.pp("encoder").pp("layer").pp($0), config: config, encoderWidth: encoderWidth)
        }
    }

    /// The last hidden state [B, L, hidden] of ids [B, L] with their attention mask [B, L] (1 = token, 0 = padding),
    /// cross-attending to `image` [B, N, encoderWidth] (all of it: the package's image mask is all ones).
    public func callAsFunction(_ ids: Tensor, mask: Tensor, image: Tensor) -> Tensor {
        let length = ids.size(1)
        precondition(length <= config.max_position_embeddings, "BLIPTextEncoder: \(length) tokens, more than max_position_embeddings")
        let positions = Tensor.arange(Double(length), device: ids.device)
        var x = wordEmbeddings(ids) + positionEmbeddings(positions).unsqueeze(0)
        x = embeddingNorm(x)
        // BLIP's get_extended_attention_mask: (1 − mask) · −10000, added to the scores of every head and query.
        let additive = ((1 - mask.to(x.dtype)) * -10000).reshape([ids.size(0), 1, 1, length])
        let image = image.to(x.dtype)
        for layer in layers { x = layer(x, mask: additive, image: image) }
        return x
    }
}

final class BLIPTextLayer: Module {
    let scope: ParameterScope
    let selfAttention, crossAttention: MultiHeadAttention
    let selfNorm, crossNorm, outputNorm: LayerNorm
    let intermediate, output: Linear
    let activation: @Sendable (Tensor) -> Tensor

    static let names = MultiHeadAttention.ProjectionNames(
        query: "self.query", key: "self.key", value: "self.value", output: "output.dense")

    init(_ vb: VarBuilder, config: BLIPTextConfig, encoderWidth: Int) {
        scope = vb.scope
        let h = config.hidden_size, eps = config.layer_norm_eps
        selfAttention = MultiHeadAttention(vb.pp("attention"), dimension: h, heads: config.num_attention_heads, names: Self.names)
        selfNorm = LayerNorm(vb.pp("attention").pp("output").pp("LayerNorm"), size: h, eps: eps)
        crossAttention = MultiHeadAttention(
            vb.pp("crossattention"), dimension: h, heads: config.num_attention_heads, contextDim: encoderWidth, names: Self.names)
        crossNorm = LayerNorm(vb.pp("crossattention").pp("output").pp("LayerNorm"), size: h, eps: eps)
        intermediate = Linear(vb.pp("intermediate").pp("dense"), inFeatures: h, outFeatures: config.intermediate_size)
        output = Linear(vb.pp("output").pp("dense"), inFeatures: config.intermediate_size, outFeatures: h)
        outputNorm = LayerNorm(vb.pp("output").pp("LayerNorm"), size: h, eps: eps)
        activation = BLIPTextConfig.activations[config.hidden_act] ?? { $0.gelu(approximate: false) }
    }

    func callAsFunction(_ x: Tensor, mask: Tensor, image: Tensor) -> Tensor {
        let attended = selfNorm(selfAttention(x, mask: mask) + x)
        let crossed = crossNorm(crossAttention(attended, context: image) + attended)
        return outputNorm(output(activation(intermediate(crossed))) + crossed)
    }
}

// MARK: - The model

/// The whole ImageReward network: image encoder, text encoder and head, and the package's normalisation.
public final class ImageRewardModel: Module {
    public let scope: ParameterScope
    public let visual: BLIPVisionTransformer
    public let text: BLIPTextEncoder
    /// The package's `MLP`: the aesthetic predictor's layout (five linear layers, dropouts, no activations).
    public let head: AestheticPredictor
    public let tokenizer: BertTokenizer

    /// `ImageReward.mean` and `ImageReward.std` of the package.
    public static let mean = 0.16717362830052426
    public static let std = 1.0333394966054072

    /// `vb` at the checkpoint's root (where `blip.` and `mlp.` are).
    public init(_ vb: VarBuilder, vision: BLIPVisionConfig, text: BLIPTextConfig, tokenizer: BertTokenizer) {
        scope = vb.scope
        let blip = vb.pp("blip")
        visual = BLIPVisionTransformer(blip.pp("visual_encoder"), config: vision)
        self.text = BLIPTextEncoder(blip.pp("text_encoder"), config: text, encoderWidth: vision.width)
        head = AestheticPredictor(vb.pp("mlp"), inputWidth: text.hidden_size)
        self.tokenizer = tokenizer
    }

    /// Token ids and attention masks [B, 35] of the prompts, on `device`.
    public func tokens(_ prompts: [String], device: Device = .cpu) -> (ids: Tensor, mask: Tensor) {
        let (ids, mask) = tokenizer.tokenize(prompts)
        let shape = [ids.count, tokenizer.maxLength]
        return (Tensor(ids.flatMap { $0.map(Int64.init) }, shape: shape).to(device),
                Tensor(mask.flatMap { $0.map(Int64.init) }, shape: shape).to(device))
    }

    /// Rewards [B] of normalised pixels [B, 3, S, S] with token ids and masks [B, L]: the package's `score_gard`.
    public func callAsFunction(_ pixels: Tensor, ids: Tensor, mask: Tensor) -> Tensor {
        let image = visual(pixels)
        let states = text(ids, mask: mask, image: image)
        let cls = states.select(dim: 1, index: 0)
        let raw = head(cls.to(head.layers[0].weight.dtype)).squeeze(1)
        return (raw - Self.mean) / Self.std
    }

    /// Reads `ImageReward.pt` (a `torch.save` state dict, read by the safe unpickler) or a `.safetensors` copy with
    /// the same keys, with the text encoder's `med_config.json`. Strict for the image and text encoders and the head;
    /// other `blip.*` tensors (`vision_proj`, `text_proj`: BLIP_Pretrain's contrastive projections, which the score
    /// never reads) are skipped, as the package's non-strict `load_state_dict` leaves them unread too.
    public static func load(
        checkpoint: URL, config: BLIPTextConfig, tokenizer: BertTokenizer, dtype: DType? = nil, device: Device = .cpu
    ) throws -> ImageRewardModel {
        let weights = try Weights.open(checkpoint)
        let vision = try BLIPVisionConfig.inferred(
            from: weights, prefix: "blip.visual_encoder.", heads: config.vision_num_attention_heads)
        guard tokenizer.vocabularySize <= config.vocab_size else {
            throw RewardError.invalidModel(
                file: checkpoint.path,
                message: "the WordPiece vocabulary has \(tokenizer.vocabularySize) tokens with [DEC] and [ENC], "
                    + "but med_config.json's vocab_size is \(config.vocab_size)")
        }
        let skipped = weights.keys.filter {
            $0.hasPrefix("blip.") && !$0.hasPrefix("blip.visual_encoder.") && !$0.hasPrefix("blip.text_encoder.")
        }
        return try VarBuilder.load(weights, dtype: dtype, device: device) { vb in
            for key in skipped { vb.ignore(key) }
            return ImageRewardModel(vb, vision: vision, text: config, tokenizer: tokenizer)
        }
    }
}

// MARK: - The reward

/// ImageReward as a reward: about −2 to 2 (the package's normalised score; 0 is the mean over its training
/// comparisons). Differentiable with respect to the images; `preprocessing` brings them to the 224-pixel input with
/// CLIP's mean and std (the package's `_transform`: bicubic resize of the short side, centre crop, normalise).
public final class ImageRewardReward: Reward {
    public let name = "imagereward"
    public var preprocessing: PreprocessingMode
    /// The package's `_transform`: torchvision's Resize + CenterCrop on the PIL image.
    public var fileProcessor: PublishedImageProcessor { .torchvision(size: model.visual.config.imageSize) }
    public let model: ImageRewardModel

    public init(model: ImageRewardModel, preprocessing: PreprocessingMode = .training) {
        self.model = model
        self.preprocessing = preprocessing
    }

    /// `checkpoint`: `ImageReward.pt` or a safetensors copy; `config`: `med_config.json` (default: beside the
    /// checkpoint); `vocabulary`: bert-base-uncased's `vocab.txt` (default: beside the checkpoint).
    public static func load(
        checkpoint: URL, config: URL? = nil, vocabulary: URL? = nil, dtype: DType = .float32, device: Device = .cpu,
        preprocessing: PreprocessingMode = .training
    ) throws -> ImageRewardReward {
        let folder = checkpoint.deletingLastPathComponent()
        let configURL = config ?? folder.appendingPathComponent("med_config.json")
        guard FileManager.default.fileExists(atPath: configURL.path) else {
            throw RewardError.invalidModel(
                file: checkpoint.path,
                message: "ImageReward needs its text encoder's med_config.json beside the checkpoint (\(configURL.path) is missing)")
        }
        let vocabularyURL = vocabulary ?? folder.appendingPathComponent("vocab.txt")
        guard FileManager.default.fileExists(atPath: vocabularyURL.path) else {
            throw RewardError.invalidModel(
                file: checkpoint.path,
                message: "ImageReward needs bert-base-uncased's WordPiece vocab.txt: give it (imagereward=CKPT,VOCAB) "
                    + "or put it beside the checkpoint (\(vocabularyURL.path) is missing)")
        }
        let model = try ImageRewardModel.load(
            checkpoint: checkpoint, config: try BLIPTextConfig.load(from: configURL),
            tokenizer: try BertTokenizer(vocabularyFile: vocabularyURL), dtype: dtype, device: device)
        model.setTrainable(false)
        return ImageRewardReward(model: model, preprocessing: preprocessing)
    }

    /// Rewards [B] of images [B, 3, H, W] in [0, 1], one prompt per image (or one for all).
    public func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        let prompts = try promptsFor(images, prompts)
        let pixels = ImagePreprocessor(size: model.visual.config.imageSize)(images, mode: preprocessing)
        let (ids, mask) = model.tokens(prompts, device: images.device)
        return model(pixels, ids: ids, mask: mask)
    }
}
