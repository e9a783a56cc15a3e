import NN
import Torch

// diffusers' autoencoders/vae.py (Encoder, Decoder) and the blocks of unets/unet_2d_blocks.py they use
// (DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D), with the VAE's fixed eps of 1e-6 and no time embedding.

/// Single-head self-attention over the pixels of a feature map, with its own GroupNorm (`group_norm`) and a
/// residual connection: diffusers' `Attention` as the VAE builds it (`_from_deprecated_attn_block`). Checkpoints
/// saved before diffusers 0.14 name the projections `query`, `key`, `value`, `proj_attn`; they load as aliases.
public final class AttentionBlock: Module {
    static let legacyNames = MultiHeadAttention.ProjectionNames(
        query: "query", key: "key", value: "value", output: "proj_attn")

    public let scope: ParameterScope
    let groupNorm: GroupNorm
    let attention: MultiHeadAttention

    public init(_ vb: VarBuilder, channels: Int, groups: Int, eps: Double) {
        scope = vb.scope
        groupNorm = GroupNorm(vb.pp("group_norm"), groups: groups, channels: channels, eps: eps)
        attention = MultiHeadAttention(
            vb, dimension: channels, heads: 1, names: .diffusers, legacyNames: Self.legacyNames)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.size(0), x.size(1), x.size(2), x.size(3))
        let tokens = groupNorm(x.reshape([b, c, h * w])).transpose(1, 2)  // [B, HW, C]
        let attended = attention(tokens).transpose(1, 2).reshape([b, c, h, w])
        return attended + x  // rescale_output_factor is 1
    }
}

/// `resnets.0`, then (`attentions.0`, `resnets.1`); without attention when `mid_block_add_attention` is false.
final class UNetMidBlock2D: Module {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let attentions: [AttentionBlock]

    init(_ vb: VarBuilder, channels: Int, groups: Int, addAttention: Bool) {
        scope = vb.scope
        resnets = (0..<2).map {
            ResnetBlock2D(
                vb.pp("resnets").pp($0), inChannels: channels, outChannels: channels, timeEmbeddingChannels: nil,
                groups: groups, eps: 1e-6)
        }
        attentions = addAttention ? [AttentionBlock(vb.pp("attentions").pp(0), channels: channels, groups: groups, eps: 1e-6)] : []
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        var hidden = resnets[0](x, temb: nil)
        for attention in attentions { hidden = attention(hidden) }
        return resnets[1](hidden, temb: nil)
    }
}

/// `resnets.M`, then `downsamplers.0` (padding 0, after diffusers' one-sided pad) unless it is the last block.
final class DownEncoderBlock2D: Module {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let downsampler: Downsample2D?

    init(_ vb: VarBuilder, inChannels: Int, outChannels: Int, layers: Int, groups: Int, addDownsample: Bool) {
        scope = vb.scope
        resnets = (0..<layers).map {
            ResnetBlock2D(
                vb.pp("resnets").pp($0), inChannels: $0 == 0 ? inChannels : outChannels, outChannels: outChannels,
                timeEmbeddingChannels: nil, groups: groups, eps: 1e-6)
        }
        downsampler = addDownsample ? Downsample2D(vb.pp("downsamplers").pp(0), channels: outChannels, padding: 0) : nil
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let hidden = resnets.reduce(x) { $1($0, temb: nil) }
        return downsampler.map { $0(hidden) } ?? hidden
    }
}

/// `resnets.M`, then `upsamplers.0` unless it is the last block.
final class UpDecoderBlock2D: Module {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let upsampler: Upsample2D?

    init(_ vb: VarBuilder, inChannels: Int, outChannels: Int, layers: Int, groups: Int, addUpsample: Bool) {
        scope = vb.scope
        resnets = (0..<layers).map {
            ResnetBlock2D(
                vb.pp("resnets").pp($0), inChannels: $0 == 0 ? inChannels : outChannels, outChannels: outChannels,
                timeEmbeddingChannels: nil, groups: groups, eps: 1e-6)
        }
        upsampler = addUpsample ? Upsample2D(vb.pp("upsamplers").pp(0), channels: outChannels) : nil
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let hidden = resnets.reduce(x) { $1($0, temb: nil) }
        return upsampler.map { $0(hidden) } ?? hidden
    }
}

/// diffusers' `Encoder` (vae.py; renamed here because Swift's `Decoder`/`Encoder` protocols hold those names).
/// Image [B, in, H, W] -> mean and log-variance of the latent [B, 2 * latent, H / f, W / f] (`double_z`).
public final class VAEEncoder: Module {
    public let scope: ParameterScope
    let convIn: Conv2d
    let downBlocks: [DownEncoderBlock2D]
    let midBlock: UNetMidBlock2D
    let convNormOut: GroupNorm
    let convOut: Conv2d

    init(_ vb: VarBuilder, config: AutoencoderKLConfig) {
        scope = vb.scope
        let channels = config.block_out_channels, groups = config.norm_num_groups
        convIn = Conv2d(vb.pp("conv_in"), inChannels: config.in_channels, outChannels: channels[0], kernelSize: 3, padding: 1)
        downBlocks = channels.indices.map { i in
            DownEncoderBlock2D(
                vb.pp("down_blocks").pp(i), inChannels: channels[max(i - 1, 0)], outChannels: channels[i],
                layers: config.layers_per_block, groups: groups, addDownsample: i < channels.count - 1)
        }
        midBlock = UNetMidBlock2D(
            vb.pp("mid_block"), channels: channels.last!, groups: groups, addAttention: config.mid_block_add_attention)
        convNormOut = GroupNorm(vb.pp("conv_norm_out"), groups: groups, channels: channels.last!, eps: 1e-6)
        convOut = Conv2d(
            vb.pp("conv_out"), inChannels: channels.last!, outChannels: 2 * config.latent_channels, kernelSize: 3, padding: 1)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let hidden = midBlock(downBlocks.reduce(convIn(x)) { $1($0) })
        return convOut(convNormOut(hidden).silu())
    }
}

/// diffusers' `Decoder` (vae.py). Latent [B, latent, h, w] -> image [B, out, h * f, w * f].
public final class VAEDecoder: Module {
    public let scope: ParameterScope
    let convIn: Conv2d
    let midBlock: UNetMidBlock2D
    let upBlocks: [UpDecoderBlock2D]
    let convNormOut: GroupNorm
    let convOut: Conv2d

    init(_ vb: VarBuilder, config: AutoencoderKLConfig) {
        scope = vb.scope
        let channels = config.block_out_channels, groups = config.norm_num_groups
        let reversed = Array(channels.reversed())
        convIn = Conv2d(
            vb.pp("conv_in"), inChannels: config.latent_channels, outChannels: reversed[0], kernelSize: 3, padding: 1)
        midBlock = UNetMidBlock2D(
            vb.pp("mid_block"), channels: reversed[0], groups: groups, addAttention: config.mid_block_add_attention)
        upBlocks = reversed.indices.map { i in
            UpDecoderBlock2D(
                vb.pp("up_blocks").pp(i), inChannels: reversed[max(i - 1, 0)], outChannels: reversed[i],
                layers: config.layers_per_block + 1, groups: groups, addUpsample: i < reversed.count - 1)
        }
        convNormOut = GroupNorm(vb.pp("conv_norm_out"), groups: groups, channels: channels[0], eps: 1e-6)
        convOut = Conv2d(vb.pp("conv_out"), inChannels: channels[0], outChannels: config.out_channels, kernelSize: 3, padding: 1)
    }

    public func callAsFunction(_ z: Tensor) -> Tensor {
        let hidden = upBlocks.reduce(midBlock(convIn(z))) { $1($0) }
        return convOut(convNormOut(hidden).silu())
    }

    /// The decoder as a chain of pieces that, applied in order, compute `callAsFunction`: the input convolution and
    /// the mid block, then every resnet and upsampler of the up blocks, then the output head. For gradient
    /// checkpointing: only the pieces' inputs need to be kept, and one piece's activations at a time.
    public var stages: [(Tensor) -> Tensor] {
        var stages: [(Tensor) -> Tensor] = [{ [convIn, midBlock] in midBlock(convIn($0)) }]
        for block in upBlocks {
            stages += block.resnets.map { resnet in { resnet($0, temb: nil) } }
            if let upsampler = block.upsampler { stages.append { upsampler($0) } }
        }
        stages.append { [convNormOut, convOut] in convOut(convNormOut($0).silu()) }
        return stages
    }
}
