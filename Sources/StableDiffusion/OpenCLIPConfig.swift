import Foundation

/// open_clip's model config: the JSON of `open_clip/model_configs/<name>.json`, or the `model_cfg` entry of a
/// hub folder's `open_clip_config.json`. Keys and defaults are open_clip 3.3's (`CLIPVisionCfg`, `CLIPTextCfg`).
///
/// Decoding accepts every config open_clip ships; `validate(file:)` then rejects, by key, what `OpenCLIPModel` does
/// not build (timm or ResNet image towers, Hugging Face text towers, CoCa, attentional pooling, the "custom" block
/// options, `custom_text` key layout). Keys that only matter for training (`patch_dropout`, `output_tokens`,
/// `timm_*` when `timm_model_name` is null) are read and ignored.
public struct OpenCLIPConfig: Codable, Sendable, Equatable {
    public var embed_dim: Int
    /// QuickGELU (x·σ(1.702x), OpenAI's original models) instead of exact GELU in both towers.
    public var quick_gelu = false
    /// The text tower as a separate module (`text.*` keys, `CustomTextCLIP`); not supported.
    public var custom_text = false
    /// SigLIP's `logit_bias`: the checkpoint then has a `logit_bias` tensor.
    public var init_logit_bias: Double?
    /// CoCa's decoder config; not supported.
    public var multimodal_cfg: JSONValue?
    public var vision_cfg: Vision
    public var text_cfg: Text

    public init(embed_dim: Int, quick_gelu: Bool = false, vision_cfg: Vision, text_cfg: Text) {
        self.embed_dim = embed_dim
        self.quick_gelu = quick_gelu
        self.vision_cfg = vision_cfg
        self.text_cfg = text_cfg
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        embed_dim = try c.decode(Int.self, forKey: .embed_dim)
        quick_gelu = try c.decodeIfPresent(Bool.self, forKey: .quick_gelu) ?? false
        custom_text = try c.decodeIfPresent(Bool.self, forKey: .custom_text) ?? false
        init_logit_bias = try c.decodeIfPresent(Double.self, forKey: .init_logit_bias)
        multimodal_cfg = try c.decodeIfPresent(JSONValue.self, forKey: .multimodal_cfg)
        vision_cfg = try c.decode(Vision.self, forKey: .vision_cfg)
        text_cfg = try c.decode(Text.self, forKey: .text_cfg)
    }

    /// open_clip's `CLIPVisionCfg`.
    public struct Vision: Codable, Sendable, Equatable {
        /// An int, or [height, width] (only square sizes are supported).
        public var image_size: PerBlock<Int> = .same(224)
        /// An int for a ViT; a list of four is a ModifiedResNet (not supported).
        public var layers: PerBlock<Int> = .same(12)
        public var width = 768
        /// Width of one attention head: heads = width / head_width.
        public var head_width = 64
        /// The MLP width is int(width · mlp_ratio), truncated as Python's int() does (ViT-g-14: 1408 · 4.3637 → 6144).
        public var mlp_ratio = 4.0
        public var patch_size: PerBlock<Int> = .same(16)
        /// LayerScale (`ls_1.gamma`, `ls_2.gamma` in every block) when set.
        public var ls_init_value: Double?
        public var patch_dropout = 0.0
        public var attentional_pool: JSONValue?
        public var no_ln_pre = false
        /// "learnable" or "sin_cos_2d": both are a `positional_embedding` tensor in the checkpoint.
        public var pos_embed_type = "learnable"
        /// ln_post after pooling instead of before (the same for "tok" pooling; differs for "avg").
        public var final_ln_after_pool = false
        /// "tok" (the class token) or "avg" (the mean of the patch tokens).
        public var pool_type = "tok"
        public var output_tokens = false
        public var act_kwargs: [String: JSONValue]?
        /// Only `eps` is supported.
        public var norm_kwargs: [String: JSONValue]?
        public var block_type: String?
        public var qk_norm = false
        public var scaled_cosine_attn = false
        public var scale_heads = false
        public var scale_attn_inner = false
        public var scale_attn = false
        public var scale_fc = false
        public var timm_model_name: String?

        public init(imageSize: Int, layers: Int, width: Int, headWidth: Int = 64, mlpRatio: Double = 4, patchSize: Int) {
            image_size = .same(imageSize)
            self.layers = .same(layers)
            self.width = width
            head_width = headWidth
            mlp_ratio = mlpRatio
            patch_size = .same(patchSize)
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
                try c.decodeIfPresent(T.self, forKey: key) ?? fallback
            }
            let d = Vision(imageSize: 224, layers: 12, width: 768, patchSize: 16)
            image_size = try value(.image_size, d.image_size)
            layers = try value(.layers, d.layers)
            width = try value(.width, d.width)
            head_width = try value(.head_width, d.head_width)
            mlp_ratio = try value(.mlp_ratio, d.mlp_ratio)
            patch_size = try value(.patch_size, d.patch_size)
            ls_init_value = try c.decodeIfPresent(Double.self, forKey: .ls_init_value)
            patch_dropout = try value(.patch_dropout, d.patch_dropout)
            attentional_pool = try c.decodeIfPresent(JSONValue.self, forKey: .attentional_pool)
            no_ln_pre = try value(.no_ln_pre, d.no_ln_pre)
            pos_embed_type = try value(.pos_embed_type, d.pos_embed_type)
            final_ln_after_pool = try value(.final_ln_after_pool, d.final_ln_after_pool)
            pool_type = try value(.pool_type, d.pool_type)
            output_tokens = try value(.output_tokens, d.output_tokens)
            act_kwargs = try c.decodeIfPresent([String: JSONValue].self, forKey: .act_kwargs)
            norm_kwargs = try c.decodeIfPresent([String: JSONValue].self, forKey: .norm_kwargs)
            block_type = try c.decodeIfPresent(String.self, forKey: .block_type)
            qk_norm = try value(.qk_norm, d.qk_norm)
            scaled_cosine_attn = try value(.scaled_cosine_attn, d.scaled_cosine_attn)
            scale_heads = try value(.scale_heads, d.scale_heads)
            scale_attn_inner = try value(.scale_attn_inner, d.scale_attn_inner)
            scale_attn = try value(.scale_attn, d.scale_attn)
            scale_fc = try value(.scale_fc, d.scale_fc)
            timm_model_name = try c.decodeIfPresent(String.self, forKey: .timm_model_name)
        }
    }

    /// open_clip's `CLIPTextCfg`.
    public struct Text: Codable, Sendable, Equatable {
        public var context_length = 77
        public var vocab_size = 49408
        public var hf_tokenizer_name: String?
        public var tokenizer_kwargs: [String: JSONValue]?
        public var width = 512
        public var heads = 8
        public var layers = 12
        public var mlp_ratio = 4.0
        public var ls_init_value: Double?
        public var embed_cls = false
        public var pad_id = 0
        /// The id pooled at when `pool_type` is "eos".
        public var eos_id = 2
        /// A bidirectional text tower instead of a causal one.
        public var no_causal_mask = false
        public var final_ln_after_pool = false
        /// "argmax" (the position of the largest id: CLIP's end token), "eos", "first" or "last".
        public var pool_type = "argmax"
        /// A `text_projection` Linear (weight and bias) instead of a [width, embed_dim] matrix.
        public var proj_bias = false
        /// "linear", or "none" for no projection.
        public var proj_type = "linear"
        public var output_tokens = false
        public var act_kwargs: [String: JSONValue]?
        public var norm_kwargs: [String: JSONValue]?
        public var block_type: String?
        public var qk_norm = false
        public var scaled_cosine_attn = false
        public var scale_heads = false
        public var scale_attn_inner = false
        public var scale_attn = false
        public var scale_fc = false
        public var hf_model_name: String?

        public init(contextLength: Int = 77, vocabSize: Int = 49408, width: Int, heads: Int, layers: Int) {
            context_length = contextLength
            vocab_size = vocabSize
            self.width = width
            self.heads = heads
            self.layers = layers
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
                try c.decodeIfPresent(T.self, forKey: key) ?? fallback
            }
            let d = Text(width: 512, heads: 8, layers: 12)
            context_length = try value(.context_length, d.context_length)
            vocab_size = try value(.vocab_size, d.vocab_size)
            hf_tokenizer_name = try c.decodeIfPresent(String.self, forKey: .hf_tokenizer_name)
            tokenizer_kwargs = try c.decodeIfPresent([String: JSONValue].self, forKey: .tokenizer_kwargs)
            width = try value(.width, d.width)
            heads = try value(.heads, d.heads)
            layers = try value(.layers, d.layers)
            mlp_ratio = try value(.mlp_ratio, d.mlp_ratio)
            ls_init_value = try c.decodeIfPresent(Double.self, forKey: .ls_init_value)
            embed_cls = try value(.embed_cls, d.embed_cls)
            pad_id = try value(.pad_id, d.pad_id)
            eos_id = try value(.eos_id, d.eos_id)
            no_causal_mask = try value(.no_causal_mask, d.no_causal_mask)
            final_ln_after_pool = try value(.final_ln_after_pool, d.final_ln_after_pool)
            pool_type = try value(.pool_type, d.pool_type)
            proj_bias = try value(.proj_bias, d.proj_bias)
            proj_type = try value(.proj_type, d.proj_type)
            output_tokens = try value(.output_tokens, d.output_tokens)
            act_kwargs = try c.decodeIfPresent([String: JSONValue].self, forKey: .act_kwargs)
            norm_kwargs = try c.decodeIfPresent([String: JSONValue].self, forKey: .norm_kwargs)
            block_type = try c.decodeIfPresent(String.self, forKey: .block_type)
            qk_norm = try value(.qk_norm, d.qk_norm)
            scaled_cosine_attn = try value(.scaled_cosine_attn, d.scaled_cosine_attn)
            scale_heads = try value(.scale_heads, d.scale_heads)
            scale_attn_inner = try value(.scale_attn_inner, d.scale_attn_inner)
            scale_attn = try value(.scale_attn, d.scale_attn)
            scale_fc = try value(.scale_fc, d.scale_fc)
            hf_model_name = try c.decodeIfPresent(String.self, forKey: .hf_model_name)
        }
    }
}

// MARK: - Presets

extension OpenCLIPConfig {
    /// `model_configs/ViT-H-14.json`: LAION's ViT-H/14, the tower of HPSv2 and PickScore's base.
    public static let vitH14 = OpenCLIPConfig(
        embed_dim: 1024,
        vision_cfg: Vision(imageSize: 224, layers: 32, width: 1280, headWidth: 80, patchSize: 14),
        text_cfg: Text(width: 1024, heads: 16, layers: 24))

    /// `model_configs/ViT-g-14.json`: LAION's ViT-g/14, TextCraftor's CLIP-score constraint.
    public static let vitG14 = OpenCLIPConfig(
        embed_dim: 1024,
        vision_cfg: Vision(imageSize: 224, layers: 40, width: 1408, headWidth: 88, mlpRatio: 4.3637, patchSize: 14),
        text_cfg: Text(width: 1024, heads: 16, layers: 24))

    /// `model_configs/ViT-L-14.json` (GELU). OpenAI's own ViT-L/14 weights need QuickGELU: open_clip loads them as
    /// `ViT-L-14-quickgelu` (or sets quick_gelu for the "openai" tag), which is this with `quick_gelu = true`.
    public static let vitL14 = OpenCLIPConfig(
        embed_dim: 768,
        vision_cfg: Vision(imageSize: 224, layers: 24, width: 1024, patchSize: 14),
        text_cfg: Text(width: 768, heads: 12, layers: 12))

    /// `model_configs/ViT-bigG-14.json`: LAION's ViT-bigG/14 (the second text encoder of SDXL).
    public static let vitBigG14 = OpenCLIPConfig(
        embed_dim: 1280,
        vision_cfg: Vision(imageSize: 224, layers: 48, width: 1664, headWidth: 104, mlpRatio: 4.9231, patchSize: 14),
        text_cfg: Text(width: 1280, heads: 20, layers: 32))

    /// The presets by open_clip's model names.
    public static let presets: [String: OpenCLIPConfig] = [
        "ViT-H-14": vitH14, "ViT-g-14": vitG14, "ViT-L-14": vitL14, "ViT-bigG-14": vitBigG14,
    ]

    /// A preset by its open_clip name (`ViT-H-14`); a `-quickgelu` suffix turns QuickGELU on, as open_clip's
    /// `*-quickgelu.json` configs do.
    public static func preset(named name: String) throws -> OpenCLIPConfig {
        let quick = name.hasSuffix("-quickgelu")
        let base = quick ? String(name.dropLast("-quickgelu".count)) : name
        guard var config = presets[base] else {
            throw StableDiffusionError.invalidArgument(
                "unknown open_clip model \"\(name)\" (known: \(presets.keys.sorted().joined(separator: ", ")), "
                    + "each also with -quickgelu)")
        }
        if quick { config.quick_gelu = true }
        return config
    }
}

// MARK: - Files and validation

extension OpenCLIPConfig {
    /// Reads an `open_clip_config.json` (the model config under `model_cfg`) or a bare model config, and checks that
    /// `OpenCLIPModel` supports it.
    public static func load(from url: URL) throws -> OpenCLIPConfig {
        struct HubConfig: Decodable { var model_cfg: OpenCLIPConfig? }
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw StableDiffusionError.missingFile(url.path)
        }
        let hasModelCfg = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["model_cfg"] != nil
        let config =
            hasModelCfg
            ? try decodeConfig(HubConfig.self, from: url).model_cfg! : try decodeConfig(OpenCLIPConfig.self, from: url)
        try config.validate(file: url.path)
        return config
    }

    /// Throws `StableDiffusionError.unsupported` naming the first key whose value `OpenCLIPModel` cannot build.
    public func validate(file: String) throws {
        func unsupported(_ key: String, _ value: String, _ supported: [String]) -> StableDiffusionError {
            .unsupported(file: file, key: key, value: value, supported: supported)
        }
        if custom_text { throw unsupported("custom_text", "true", ["false"]) }
        if multimodal_cfg != nil { throw unsupported("multimodal_cfg", "(CoCa)", ["absent"]) }
        let v = vision_cfg, t = text_cfg
        if let name = v.timm_model_name { throw unsupported("vision_cfg.timm_model_name", name, ["null"]) }
        if case .each(let list) = v.layers {
            throw unsupported("vision_cfg.layers", "\(list) (a ModifiedResNet)", ["an int (a ViT)"])
        }
        if case .each(let size) = v.image_size, size.count != 2 || size[0] != size[1] {
            throw unsupported("vision_cfg.image_size", "\(size)", ["an int", "[n, n]"])
        }
        if case .each(let size) = v.patch_size, size.count != 2 || size[0] != size[1] {
            throw unsupported("vision_cfg.patch_size", "\(size)", ["an int", "[n, n]"])
        }
        if let pool = v.attentional_pool, pool != .bool(false) {
            throw unsupported("vision_cfg.attentional_pool", pool.description, ["false"])
        }
        if !["learnable", "sin_cos_2d"].contains(v.pos_embed_type) {
            throw unsupported("vision_cfg.pos_embed_type", v.pos_embed_type, ["learnable", "sin_cos_2d"])
        }
        if !["tok", "avg"].contains(v.pool_type) { throw unsupported("vision_cfg.pool_type", v.pool_type, ["tok", "avg"]) }
        if let name = t.hf_model_name { throw unsupported("text_cfg.hf_model_name", name, ["null"]) }
        if let name = t.hf_tokenizer_name {
            throw unsupported("text_cfg.hf_tokenizer_name", name, ["null (CLIP's BPE tokenizer)"])
        }
        if let kwargs = t.tokenizer_kwargs, !kwargs.isEmpty {
            throw unsupported("text_cfg.tokenizer_kwargs", JSONValue.object(kwargs).description, ["null"])
        }
        if t.embed_cls { throw unsupported("text_cfg.embed_cls", "true", ["false"]) }
        if !["argmax", "eos", "first", "last"].contains(t.pool_type) {
            throw unsupported("text_cfg.pool_type", t.pool_type, ["argmax", "eos", "first", "last"])
        }
        if !["linear", "none"].contains(t.proj_type) { throw unsupported("text_cfg.proj_type", t.proj_type, ["linear", "none"]) }
        for (tower, block) in [("vision_cfg", v.blockOptions), ("text_cfg", t.blockOptions)] {
            if let type = block.type, type != "default" { throw unsupported("\(tower).block_type", type, ["default"]) }
            if let option = block.enabled.first { throw unsupported("\(tower).\(option)", "true", ["false"]) }
            if let kwargs = block.activation, !kwargs.isEmpty {
                throw unsupported("\(tower).act_kwargs", JSONValue.object(kwargs).description, ["null"])
            }
            if let kwargs = block.norm, let key = kwargs.keys.sorted().first(where: { $0 != "eps" }) {
                throw unsupported("\(tower).norm_kwargs.\(key)", kwargs[key]!.description, ["eps"])
            }
            if let eps = block.norm?["eps"], eps.number == nil {
                throw unsupported("\(tower).norm_kwargs.eps", eps.description, ["a number"])
            }
        }
        try checkRanges(file: file)
    }

    /// Sizes positive and bounded, heads dividing widths, finite MLP ratios and epsilons, an estimated parameter
    /// count within bounds: else `invalidConfig` naming the file and the key (issue 17), before anything is built.
    func checkRanges(file: String) throws {
        let check = ConfigRanges(file: file, prefix: nil)
        let v = vision_cfg, t = text_cfg
        try check.width("embed_dim", embed_dim)
        try check.width("vision_cfg.width", v.width)
        try check.width("vision_cfg.head_width", v.head_width)
        try check.divides("vision_cfg.head_width", heads: v.head_width, "vision_cfg.width", width: v.width)
        try check.layers("vision_cfg.layers", v.layerCount)
        try check.int("vision_cfg.image_size", v.imageSize, in: 1...8192)
        try check.int("vision_cfg.patch_size", v.patchSize, in: 1...v.imageSize)
        try check.double("vision_cfg.mlp_ratio", v.mlp_ratio, in: 0...64, open: true)
        try check.width("vision_cfg.mlp_ratio", v.mlpWidth)
        try check.epsilon("vision_cfg.norm_kwargs.eps", v.layerNormEps)
        try check.width("text_cfg.width", t.width)
        try check.width("text_cfg.heads", t.heads)
        try check.divides("text_cfg.heads", heads: t.heads, "text_cfg.width", width: t.width)
        try check.layers("text_cfg.layers", t.layers)
        try check.int("text_cfg.vocab_size", t.vocab_size, in: 1...ConfigRanges.maxVocab)
        try check.width("text_cfg.context_length", t.context_length)
        try check.double("text_cfg.mlp_ratio", t.mlp_ratio, in: 0...64, open: true)
        try check.width("text_cfg.mlp_ratio", t.mlpWidth)
        try check.epsilon("text_cfg.norm_kwargs.eps", t.layerNormEps)
        func tower(_ width: Int, _ mlp: Int, _ layers: Int) -> Double {
            Double(layers) * (4 * Double(width) * Double(width) + 2 * Double(width) * Double(mlp))
        }
        let grid = Double(v.imageSize / v.patchSize)
        try check.parameters(
            tower(v.width, v.mlpWidth, v.layerCount) + (grid * grid + Double(3 * v.patchSize * v.patchSize)) * Double(v.width),
            key: "vision_cfg.layers")
        try check.parameters(
            tower(t.width, t.mlpWidth, t.layers) + Double(t.vocab_size + t.context_length) * Double(t.width),
            key: "text_cfg.layers")
    }
}

extension OpenCLIPConfig.Vision {
    /// The square input size.
    public var imageSize: Int { image_size.values(count: 1)[0] }
    public var patchSize: Int { patch_size.values(count: 1)[0] }
    public var layerCount: Int { layers.values(count: 1)[0] }
    public var heads: Int { width / head_width }
    public var mlpWidth: Int { Int(Double(width) * mlp_ratio) }
    public var layerNormEps: Double { norm_kwargs?["eps"]?.number ?? 1e-5 }
    var blockOptions: OpenCLIPConfig.BlockOptions {
        OpenCLIPConfig.BlockOptions(
            type: block_type, activation: act_kwargs, norm: norm_kwargs,
            flags: [("qk_norm", qk_norm), ("scaled_cosine_attn", scaled_cosine_attn), ("scale_heads", scale_heads),
                    ("scale_attn_inner", scale_attn_inner), ("scale_attn", scale_attn), ("scale_fc", scale_fc)])
    }
}

extension OpenCLIPConfig.Text {
    public var mlpWidth: Int { Int(Double(width) * mlp_ratio) }
    public var layerNormEps: Double { norm_kwargs?["eps"]?.number ?? 1e-5 }
    var blockOptions: OpenCLIPConfig.BlockOptions {
        OpenCLIPConfig.BlockOptions(
            type: block_type, activation: act_kwargs, norm: norm_kwargs,
            flags: [("qk_norm", qk_norm), ("scaled_cosine_attn", scaled_cosine_attn), ("scale_heads", scale_heads),
                    ("scale_attn_inner", scale_attn_inner), ("scale_attn", scale_attn), ("scale_fc", scale_fc)])
    }
}

extension OpenCLIPConfig {
    /// The options of open_clip's "custom" residual block, which the plain block does not have.
    struct BlockOptions {
        let type: String?
        let activation: [String: JSONValue]?
        let norm: [String: JSONValue]?
        let flags: [(String, Bool)]
        var enabled: [String] { flags.filter(\.1).map(\.0) }
    }
}
