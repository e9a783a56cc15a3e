import Foundation
import NN
import Torch

/// diffusers' `UNet2DConditionModel` config (`unet/config.json`), with diffusers' defaults for absent keys. The keys
/// are diffusers' own. `validate` says which values this implementation supports: those of Stable Diffusion 1.x,
/// 2.x and XL (text conditioning, SDXL's `text_time` added conditioning, positional timesteps, the five block types
/// below).
public struct UNet2DConditionConfig: Codable, Sendable, Equatable {
    public var sample_size: Int? = nil
    public var in_channels = 4
    public var out_channels = 4
    public var center_input_sample = false
    public var flip_sin_to_cos = true
    public var freq_shift = 0
    public var down_block_types = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    public var mid_block_type: String? = "UNetMidBlock2DCrossAttn"
    public var up_block_types = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    public var only_cross_attention: PerBlock<Bool> = .same(false)
    public var block_out_channels = [320, 640, 1280, 1280]
    public var layers_per_block: PerBlock<Int> = .same(2)
    public var downsample_padding = 1
    public var mid_block_scale_factor = 1.0
    public var act_fn = "silu"
    public var norm_num_groups: Int? = 32
    public var norm_eps = 1e-5
    public var cross_attention_dim: PerBlock<Int> = .same(1280)
    /// How many transformer blocks each attention of a block stacks (SDXL: [1, 2, 10]); an entry may be a list with
    /// one depth per layer of the block (diffusers' asymmetric UNets).
    public var transformer_layers_per_block: PerBlock<LayerDepths> = .same(.same(1))
    /// The up path's depths, one entry per up block (each one for all its layers or one per layer); nil: the down
    /// path's, reversed, as diffusers does.
    public var reverse_transformer_layers_per_block: [LayerDepths]? = nil
    /// diffusers' naming quirk: for Stable Diffusion 1.x/2.x this is the NUMBER OF HEADS of each block's attention
    /// (SD 1.5: 8; SD 2.x: [5, 10, 20, 20]), not the width of a head. diffusers takes the heads from
    /// `num_attention_heads` when given and from `attention_head_dim` otherwise; the head width is then the block's
    /// channels divided by the heads.
    public var attention_head_dim: PerBlock<Int> = .same(8)
    /// Refused by diffusers itself (it raises when this is set, see its issue #2011), so always null in practice.
    public var num_attention_heads: PerBlock<Int>? = nil
    public var dual_cross_attention = false
    public var use_linear_projection = false
    public var class_embed_type: String? = nil
    public var addition_embed_type: String? = nil
    public var num_class_embeds: Int? = nil
    /// `text_time` (SDXL): the width of each of the six sinusoidal features of the size and crop conditioning.
    public var addition_time_embed_dim: Int? = nil
    /// `text_time` (SDXL): the input width of `add_embedding`, the pooled text embeddings and the six features
    /// (SDXL base: 1280 + 6 x 256 = 2816).
    public var projection_class_embeddings_input_dim: Int? = nil
    public var encoder_hid_dim_type: String? = nil
    /// Attention scores in float32 (SD 2.x): only changes half-precision results.
    public var upcast_attention = false
    public var resnet_time_scale_shift = "default"
    public var resnet_skip_time_act = false
    public var time_embedding_type = "positional"
    public var time_embedding_dim: Int? = nil
    public var time_embedding_act_fn: String? = nil
    public var timestep_post_act: String? = nil
    public var time_cond_proj_dim: Int? = nil
    public var conv_in_kernel = 3
    public var conv_out_kernel = 3
    public var attention_type = "default"
    public var cross_attention_norm: String? = nil

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            try c.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        let d = UNet2DConditionConfig()
        sample_size = try value(.sample_size, d.sample_size)
        in_channels = try value(.in_channels, d.in_channels)
        out_channels = try value(.out_channels, d.out_channels)
        center_input_sample = try value(.center_input_sample, d.center_input_sample)
        flip_sin_to_cos = try value(.flip_sin_to_cos, d.flip_sin_to_cos)
        freq_shift = try value(.freq_shift, d.freq_shift)
        down_block_types = try value(.down_block_types, d.down_block_types)
        // An explicit null means "no mid block", which differs from the default; keep it.
        mid_block_type = c.contains(.mid_block_type) ? try c.decodeIfPresent(String.self, forKey: .mid_block_type) : d.mid_block_type
        up_block_types = try value(.up_block_types, d.up_block_types)
        only_cross_attention = try value(.only_cross_attention, d.only_cross_attention)
        block_out_channels = try value(.block_out_channels, d.block_out_channels)
        layers_per_block = try value(.layers_per_block, d.layers_per_block)
        downsample_padding = try value(.downsample_padding, d.downsample_padding)
        mid_block_scale_factor = try value(.mid_block_scale_factor, d.mid_block_scale_factor)
        act_fn = try value(.act_fn, d.act_fn)
        norm_num_groups = c.contains(.norm_num_groups) ? try c.decodeIfPresent(Int.self, forKey: .norm_num_groups) : d.norm_num_groups
        norm_eps = try value(.norm_eps, d.norm_eps)
        cross_attention_dim = try value(.cross_attention_dim, d.cross_attention_dim)
        // One number for every block, or a list whose entries are numbers or per-layer lists: read as the list
        // first, since a per-layer list alone would also read as one entry for every block.
        if let depth = try? c.decodeIfPresent(Int.self, forKey: .transformer_layers_per_block) {
            transformer_layers_per_block = .same(.same(depth))
        } else if let depths = try c.decodeIfPresent([LayerDepths].self, forKey: .transformer_layers_per_block) {
            transformer_layers_per_block = .each(depths)
        } else {
            transformer_layers_per_block = d.transformer_layers_per_block
        }
        reverse_transformer_layers_per_block = try value(
            .reverse_transformer_layers_per_block, d.reverse_transformer_layers_per_block)
        attention_head_dim = try value(.attention_head_dim, d.attention_head_dim)
        num_attention_heads = try value(.num_attention_heads, d.num_attention_heads)
        dual_cross_attention = try value(.dual_cross_attention, d.dual_cross_attention)
        use_linear_projection = try value(.use_linear_projection, d.use_linear_projection)
        class_embed_type = try value(.class_embed_type, d.class_embed_type)
        addition_embed_type = try value(.addition_embed_type, d.addition_embed_type)
        num_class_embeds = try value(.num_class_embeds, d.num_class_embeds)
        addition_time_embed_dim = try value(.addition_time_embed_dim, d.addition_time_embed_dim)
        projection_class_embeddings_input_dim = try value(
            .projection_class_embeddings_input_dim, d.projection_class_embeddings_input_dim)
        encoder_hid_dim_type = try value(.encoder_hid_dim_type, d.encoder_hid_dim_type)
        upcast_attention = try value(.upcast_attention, d.upcast_attention)
        resnet_time_scale_shift = try value(.resnet_time_scale_shift, d.resnet_time_scale_shift)
        resnet_skip_time_act = try value(.resnet_skip_time_act, d.resnet_skip_time_act)
        time_embedding_type = try value(.time_embedding_type, d.time_embedding_type)
        time_embedding_dim = try value(.time_embedding_dim, d.time_embedding_dim)
        time_embedding_act_fn = try value(.time_embedding_act_fn, d.time_embedding_act_fn)
        timestep_post_act = try value(.timestep_post_act, d.timestep_post_act)
        time_cond_proj_dim = try value(.time_cond_proj_dim, d.time_cond_proj_dim)
        conv_in_kernel = try value(.conv_in_kernel, d.conv_in_kernel)
        conv_out_kernel = try value(.conv_out_kernel, d.conv_out_kernel)
        attention_type = try value(.attention_type, d.attention_type)
        cross_attention_norm = try value(.cross_attention_norm, d.cross_attention_norm)
    }

    static let downBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"]
    static let upBlockTypes = ["CrossAttnUpBlock2D", "UpBlock2D"]

    /// Throws `StableDiffusionError.unsupported` for the first value this implementation cannot build, and
    /// `invalidConfig` for per-block lists whose lengths disagree; `file` names the config in the message.
    public func validate(file: String) throws {
        func require(_ ok: Bool, _ key: String, _ value: String, _ supported: [String]) throws {
            guard ok else { throw StableDiffusionError.unsupported(file: file, key: key, value: value, supported: supported) }
        }
        func null(_ key: String, _ value: (some CustomStringConvertible)?) throws {
            try require(value == nil, key, value.map(\.description) ?? "null", ["null"])
        }
        for type in down_block_types {
            try require(Self.downBlockTypes.contains(type), "down_block_types", type, Self.downBlockTypes)
        }
        for type in up_block_types { try require(Self.upBlockTypes.contains(type), "up_block_types", type, Self.upBlockTypes) }
        try require(
            mid_block_type == "UNetMidBlock2DCrossAttn", "mid_block_type", mid_block_type ?? "null",
            ["UNetMidBlock2DCrossAttn"])
        try null("class_embed_type", class_embed_type)
        try null("num_class_embeds", num_class_embeds)
        if let addition_embed_type {
            try require(addition_embed_type == "text_time", "addition_embed_type", addition_embed_type, ["null", "text_time"])
            for (key, value) in [("addition_time_embed_dim", addition_time_embed_dim),
                                 ("projection_class_embeddings_input_dim", projection_class_embeddings_input_dim)]
            where value == nil {
                throw StableDiffusionError.invalidConfig(file: file, message: "key \"\(key)\" is needed with addition_embed_type \"text_time\"")
            }
        }
        try null("encoder_hid_dim_type", encoder_hid_dim_type)
        try require(
            num_attention_heads == nil, "num_attention_heads", "set",
            ["null (diffusers refuses it too; the heads are read from attention_head_dim)"])
        try require(time_embedding_type == "positional", "time_embedding_type", time_embedding_type, ["positional"])
        try null("time_embedding_act_fn", time_embedding_act_fn)
        try null("timestep_post_act", timestep_post_act)
        try null("time_cond_proj_dim", time_cond_proj_dim)
        try require(resnet_time_scale_shift == "default", "resnet_time_scale_shift", resnet_time_scale_shift, ["default"])
        try require(!resnet_skip_time_act, "resnet_skip_time_act", "true", ["false"])
        try require(["silu", "swish"].contains(act_fn), "act_fn", act_fn, ["silu", "swish"])
        try require(!dual_cross_attention, "dual_cross_attention", "true", ["false"])
        try require(attention_type == "default", "attention_type", attention_type, ["default"])
        try null("cross_attention_norm", cross_attention_norm)
        try require(norm_num_groups != nil, "norm_num_groups", "null", ["a number of groups"])
        let count = down_block_types.count
        try require(
            !only_cross_attention.values(count: count).contains(true), "only_cross_attention", "true", ["false"])
        let lengths: [(String, Int)] = [
            ("up_block_types", up_block_types.count), ("block_out_channels", block_out_channels.count),
            ("layers_per_block", layers_per_block.values(count: count).count),
            ("attention_head_dim", attention_head_dim.values(count: count).count),
            ("cross_attention_dim", cross_attention_dim.values(count: count).count),
            ("transformer_layers_per_block", transformer_layers_per_block.values(count: count).count),
            ("reverse_transformer_layers_per_block", reverse_transformer_layers_per_block?.count ?? count),
        ]
        for (key, length) in lengths where length != count {
            throw StableDiffusionError.invalidConfig(
                file: file, message: "key \"\(key)\" has \(length) entries, down_block_types has \(count)")
        }
        // A per-layer list needs a depth for each layer of its block (diffusers reads the first ones).
        let layers = layers_per_block.values(count: count)
        for (i, depths) in transformer_layers_per_block.values(count: count).enumerated() {
            try depths.check(layers: layers[i], key: "transformer_layers_per_block.\(i)", file: file)
        }
        try transformer_layers_per_block.values(count: count)[count - 1].check(
            layers: 1, key: "transformer_layers_per_block.\(count - 1)", file: file)
        for (i, depths) in (reverse_transformer_layers_per_block ?? []).enumerated() {
            try depths.check(layers: layers[count - 1 - i] + 1, key: "reverse_transformer_layers_per_block.\(i)", file: file)
        }
        try checkRanges(file: file)
        try checkRelations(file: file)
    }
}

extension UNet2DConditionConfig: RangeCheckedConfig {
    public func checkRanges(file: String, prefix: String? = nil) throws {
        let check = ConfigRanges(file: file, prefix: prefix)
        try check.int("down_block_types", down_block_types.count, in: 1...16)
        if let sample_size { try check.int("sample_size", sample_size, in: 1...65_536) }
        try check.width("in_channels", in_channels)
        try check.width("out_channels", out_channels)
        try check.int("freq_shift", freq_shift, in: 0...1_000_000)
        try check.int("downsample_padding", downsample_padding, in: 0...16)
        try check.double("mid_block_scale_factor", mid_block_scale_factor, in: -1e6...1e6)
        try check.epsilon("norm_eps", norm_eps)
        if let norm_num_groups { try check.width("norm_num_groups", norm_num_groups) }
        if let time_embedding_dim { try check.width("time_embedding_dim", time_embedding_dim) }
        try check.int("conv_in_kernel", conv_in_kernel, in: 1...31)
        try check.int("conv_out_kernel", conv_out_kernel, in: 1...31)
        for (i, channels) in block_out_channels.enumerated() { try check.width("block_out_channels.\(i)", channels) }
        let count = down_block_types.count
        try check.each("layers_per_block", layers_per_block, count: count) { try check.layers($0, $1) }
        try check.depths("transformer_layers_per_block", transformer_layers_per_block)
        if let reverse = reverse_transformer_layers_per_block {
            try check.depths("reverse_transformer_layers_per_block", .each(reverse))
        }
        if let addition_time_embed_dim { try check.width("addition_time_embed_dim", addition_time_embed_dim) }
        if let projection_class_embeddings_input_dim {
            try check.width("projection_class_embeddings_input_dim", projection_class_embeddings_input_dim)
        }
        try check.each("cross_attention_dim", cross_attention_dim, count: count) { try check.width($0, $1) }
        try check.each("attention_head_dim", attention_head_dim, count: count) { try check.width($0, $1) }
        // A rough upper estimate from the config alone: resnets of 3x3 convolutions and transformer blocks per level.
        let layers = layers_per_block.values(count: count)
        let transformers = transformer_layers_per_block.values(count: count).map(\.deepest)
        let crossDims = cross_attention_dim.values(count: count)
        var total = 0.0
        for i in 0..<min(count, block_out_channels.count, layers.count, transformers.count, crossDims.count) {
            let c = Double(block_out_channels[i]), resnets = Double(2 * layers[i] + 2)
            total += resnets * 18 * c * c + resnets * Double(transformers[i]) * (12 * c * c + 2 * c * Double(crossDims[i]))
        }
        try check.parameters(total, key: "layers_per_block")
    }

    /// What holds between keys, checked by `validate(file:)` once the per-block lists agree in length: the groups
    /// of the group norms and the attention heads divide each block's channels.
    func checkRelations(file: String) throws {
        let check = ConfigRanges(file: file, prefix: nil)
        let count = down_block_types.count
        for (i, channels) in block_out_channels.enumerated() {
            if let groups = norm_num_groups, channels % groups != 0 {
                throw check.fail("norm_num_groups", "(\(groups)) must divide block_out_channels.\(i) (\(channels))")
            }
        }
        // attention_head_dim holds the number of heads (see its comment): it splits each block's channels.
        let heads = attention_head_dim.values(count: count)
        for (i, (channels, head)) in zip(block_out_channels, heads).enumerated() where channels % head != 0 {
            let key = if case .each = attention_head_dim { "attention_head_dim.\(i)" } else { "attention_head_dim" }
            throw check.fail(key, "(\(head)) must divide block_out_channels.\(i) (\(channels))")
        }
    }
}

/// diffusers' `UNet2DConditionModel` for Stable Diffusion 1.x/2.x: predicts the noise (or v) of a latent sample at a
/// timestep, conditioned on text embeddings through cross-attention. Key names are diffusers' (`conv_in`,
/// `time_embedding`, `down_blocks.N`, `mid_block`, `up_blocks.N`, `conv_norm_out`, `conv_out`). Forward is plain
/// tensor ops, so gradients flow to the sample and to the text embeddings.
public final class UNet2DConditionModel: Module {
    public let scope: ParameterScope
    public let config: UNet2DConditionConfig
    let convIn: Conv2d
    let timeProj: Timesteps
    let timeEmbedding: TimestepEmbedding
    /// SDXL's `text_time` added conditioning: `add_time_proj` (sinusoidal features of the six size and crop numbers)
    /// and `add_embedding` (an MLP of the pooled text embeddings and those features, added to the time embedding).
    let addTimeProj: Timesteps?
    let addEmbedding: TimestepEmbedding?
    let downBlocks: [any UNetDownBlock]
    let midBlock: UNetMidBlock2DCrossAttn
    let upBlocks: [any UNetUpBlock]
    let convNormOut: GroupNorm
    let convOut: Conv2d

    /// `configFile` names the config in error messages.
    public init(_ vb: VarBuilder, config: UNet2DConditionConfig, configFile: String = "config.json") throws {
        try config.validate(file: configFile)
        scope = vb.scope
        self.config = config
        let channels = config.block_out_channels
        let count = channels.count
        let groups = config.norm_num_groups!

        convIn = Conv2d(
            vb.pp("conv_in"), inChannels: config.in_channels, outChannels: channels[0], kernelSize: config.conv_in_kernel,
            padding: (config.conv_in_kernel - 1) / 2)
        let timeEmbedDim = config.time_embedding_dim ?? channels[0] * 4
        timeProj = Timesteps(
            channels: channels[0], flipSinToCos: config.flip_sin_to_cos, downscaleFreqShift: Double(config.freq_shift))
        timeEmbedding = TimestepEmbedding(vb.pp("time_embedding"), inChannels: channels[0], timeEmbedDim: timeEmbedDim)
        if config.addition_embed_type == "text_time" {
            addTimeProj = Timesteps(
                channels: config.addition_time_embed_dim!, flipSinToCos: config.flip_sin_to_cos,
                downscaleFreqShift: Double(config.freq_shift))
            addEmbedding = TimestepEmbedding(
                vb.pp("add_embedding"), inChannels: config.projection_class_embeddings_input_dim!, timeEmbedDim: timeEmbedDim)
        } else {
            addTimeProj = nil
            addEmbedding = nil
        }

        let settings = UNetBlockSettings(
            timeEmbeddingChannels: timeEmbedDim, groups: groups, eps: config.norm_eps,
            useLinearProjection: config.use_linear_projection, upcastAttention: config.upcast_attention)
        // The heads come from attention_head_dim (see its comment); the up path reads every list reversed.
        let heads = config.attention_head_dim.values(count: count)
        let crossDims = config.cross_attention_dim.values(count: count)
        let layers = config.layers_per_block.values(count: count)
        // Transformer depths: per block on the way down, the last block's in the middle, and on the way up
        // reverse_transformer_layers_per_block or else the down path's reversed (each per layer of its block).
        let downDepths = config.transformer_layers_per_block.values(count: count)
        let upDepths = config.reverse_transformer_layers_per_block ?? downDepths.reversed()
        func attention(_ i: Int, _ depths: [Int]) -> CrossAttentionSettings {
            CrossAttentionSettings(heads: heads[i], crossAttentionDim: crossDims[i], transformerLayers: depths)
        }

        var down: [any UNetDownBlock] = []
        for (i, type) in config.down_block_types.enumerated() {
            let vbBlock = vb.pp("down_blocks").pp(i)
            let (input, output, last) = (channels[max(i - 1, 0)], channels[i], i == count - 1)
            if type == "CrossAttnDownBlock2D" {
                down.append(CrossAttnDownBlock2D(
                    vbBlock, inChannels: input, outChannels: output, layers: layers[i], addDownsample: !last,
                    downsamplePadding: config.downsample_padding, attention: attention(i, downDepths[i].values(count: layers[i])),
                    settings: settings))
            } else {
                down.append(DownBlock2D(
                    vbBlock, inChannels: input, outChannels: output, layers: layers[i], addDownsample: !last,
                    downsamplePadding: config.downsample_padding, settings: settings))
            }
        }
        downBlocks = down

        midBlock = UNetMidBlock2DCrossAttn(
            vb.pp("mid_block"), channels: channels[count - 1], outputScaleFactor: config.mid_block_scale_factor,
            attention: attention(count - 1, downDepths[count - 1].values(count: 1)), settings: settings)

        let reversedChannels = Array(channels.reversed())
        var up: [any UNetUpBlock] = []
        for (i, type) in config.up_block_types.enumerated() {
            let vbBlock = vb.pp("up_blocks").pp(i)
            let j = count - 1 - i  // the same level on the down path
            let previous = reversedChannels[max(i - 1, 0)], output = reversedChannels[i]
            let input = reversedChannels[min(i + 1, count - 1)]
            let last = i == count - 1
            if type == "CrossAttnUpBlock2D" {
                up.append(CrossAttnUpBlock2D(
                    vbBlock, inChannels: input, prevOutputChannels: previous, outChannels: output, layers: layers[j] + 1,
                    addUpsample: !last, attention: attention(j, upDepths[i].values(count: layers[j] + 1)), settings: settings))
            } else {
                up.append(UpBlock2D(
                    vbBlock, inChannels: input, prevOutputChannels: previous, outChannels: output, layers: layers[j] + 1,
                    addUpsample: !last, settings: settings))
            }
        }
        upBlocks = up

        convNormOut = GroupNorm(vb.pp("conv_norm_out"), groups: groups, channels: channels[0], eps: config.norm_eps)
        convOut = Conv2d(
            vb.pp("conv_out"), inChannels: channels[0], outChannels: config.out_channels,
            kernelSize: config.conv_out_kernel, padding: (config.conv_out_kernel - 1) / 2)
    }

    /// The weights' floating-point type.
    public var dtype: DType { convIn.weight.dtype }

    /// Whether the model takes SDXL's added conditioning (pooled text embeddings and size/crop ids) beside the text.
    public var takesAddedConditioning: Bool { addEmbedding != nil }

    /// The model output for `sample` [B, C, H, W] at `timestep` (a scalar, or [B]; integer or fractional) given the
    /// text embeddings `encoderHiddenStates` [B, S, cross_attention_dim] (a model without added conditioning).
    public func callAsFunction(_ sample: Tensor, timestep: Tensor, encoderHiddenStates: Tensor) -> Tensor {
        self(sample, timestep: timestep, conditioning: Conditioning(hiddenStates: encoderHiddenStates))
    }

    /// The model output for `sample` [B, C, H, W] at `timestep` (a scalar, or [B]; integer or fractional) given the
    /// conditioning: the text embeddings [B, S, cross_attention_dim], and for an SDXL UNet the pooled text embeddings
    /// [B, P] and the time ids [B, 6] too (their absence there is a programming error, as diffusers raises).
    ///
    /// Inputs of another floating-point type than the weights' are cast to it, and the output back to the sample's
    /// type, as autocast would (mixed precision: float32 latents and text embeddings into a bfloat16 UNet).
    public func callAsFunction(_ sample: Tensor, timestep: Tensor, conditioning: Conditioning) -> Tensor {
        let dtype = self.dtype
        let encoderHiddenStates = conditioning.hiddenStates
        guard sample.dtype == dtype, conditioning.floatingPointTypes.allSatisfy({ $0 == dtype }) else {
            let output = self(sample.dtype == dtype ? sample : sample.to(dtype), timestep: timestep,
                              conditioning: conditioning.to(dtype: dtype))
            return output.to(sample.dtype)
        }
        let batch = sample.size(0)
        // Sizes that the up path cannot reach by doubling take their size from the skip connections instead.
        let overallUpFactor = 1 << (upBlocks.count - 1)
        let forwardUpsampleSize = sample.shape.suffix(2).contains { $0 % overallUpFactor != 0 }

        let input = config.center_input_sample ? sample * 2 - 1 : sample
        let timesteps = timestep.reshape([-1]).to(sample.device).expand([batch])
        var temb = timeEmbedding(timeProj(timesteps).to(sample.dtype))
        if let addTimeProj, let addEmbedding {
            guard let textEmbeds = conditioning.textEmbeds, let timeIds = conditioning.timeIds else {
                preconditionFailure("UNet2DConditionModel: addition_embed_type text_time needs the pooled text embeddings and the time ids")
            }
            // diffusers: the features of time_ids.flatten() reshaped to one row per sample, after the pooled
            // embeddings (float32 by type promotion), then in the model's type.
            let timeFeatures = addTimeProj(timeIds.reshape([-1])).reshape([textEmbeds.size(0), -1])
            temb = temb + addEmbedding(Tensor.cat([textEmbeds.to(.float32), timeFeatures], dim: -1).to(temb.dtype))
        }

        var hidden = convIn(input)
        var skips = [hidden]
        for block in downBlocks {
            let (output, states) = block(hidden, temb: temb, context: encoderHiddenStates)
            hidden = output
            skips += states
        }
        hidden = midBlock(hidden, temb: temb, context: encoderHiddenStates)

        for (i, block) in upBlocks.enumerated() {
            let own = Array(skips.suffix(block.resnetCount))
            skips.removeLast(block.resnetCount)
            let isLast = i == upBlocks.count - 1
            let size = !isLast && forwardUpsampleSize ? (skips.last!.size(2), skips.last!.size(3)) : nil
            hidden = block(hidden, skips: own, temb: temb, context: encoderHiddenStates, upsampleSize: size)
        }
        return convOut(convNormOut(hidden).silu())
    }

    /// Reads a diffusers `unet/` folder: `config.json` and `diffusion_pytorch_model[.variant].safetensors` (or `.bin`),
    /// strictly (every key used, every shape checked). `dtype` nil keeps the stored precision.
    /// `weights`: where the tensors come from instead of the folder's file (a single-file model's, `SingleFileCheckpoint`).
    public static func load(
        folder: URL, variant: String? = nil, dtype: DType? = nil, device: Device = .cpu,
        weights: ((UNet2DConditionConfig) throws -> any WeightSource)? = nil
    ) throws -> UNet2DConditionModel {
        let configURL = folder.appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: folder.path) else { throw StableDiffusionError.missingFile(folder.path) }
        let config = try decodeConfig(UNet2DConditionConfig.self, from: configURL)
        let source = try weights?(config) ?? componentWeights(in: folder, baseName: "diffusion_pytorch_model", variant: variant)
        return try VarBuilder.load(source, dtype: dtype, device: device) {
            try UNet2DConditionModel($0, config: config, configFile: configURL.path)
        }
    }
}
