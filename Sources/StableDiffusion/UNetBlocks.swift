import NN
import Torch

// diffusers' unets/unet_2d_blocks.py: the blocks Stable Diffusion 1.x/2.x/XL's UNet is made of.

/// What every block of one UNet shares, from its config.
struct UNetBlockSettings {
    let timeEmbeddingChannels: Int
    let groups: Int
    let eps: Double
    let useLinearProjection: Bool
    let upcastAttention: Bool
}

/// What a block of the UNet's attention layers needs: heads (diffusers' `num_attention_heads`, see
/// `UNet2DConditionConfig.attention_head_dim`), text width and the transformer depth of each of its layers.
struct CrossAttentionSettings {
    let heads: Int
    let crossAttentionDim: Int
    let transformerLayers: [Int]
}

/// A down block: the new hidden state, and the states kept for the up path's skip connections.
protocol UNetDownBlock: Module {
    func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor) -> (Tensor, [Tensor])
}

/// An up block: consumes as many skip states (from the end of the list) as it has resnets.
protocol UNetUpBlock: Module {
    var resnetCount: Int { get }
    func callAsFunction(_ x: Tensor, skips: [Tensor], temb: Tensor, context: Tensor, upsampleSize: (Int, Int)?) -> Tensor
}

/// The attention of the block's `layer`-th layer.
func makeTransformer(
    _ vb: VarBuilder, channels: Int, attention: CrossAttentionSettings, layer: Int, settings: UNetBlockSettings
) -> Transformer2DModel {
    Transformer2DModel(
        vb, heads: attention.heads, headDim: channels / attention.heads, inChannels: channels,
        layers: attention.transformerLayers[layer], crossAttentionDim: attention.crossAttentionDim, groups: settings.groups,
        useLinearProjection: settings.useLinearProjection, upcastAttention: settings.upcastAttention)
}

func makeResnet(_ vb: VarBuilder, _ inChannels: Int, _ outChannels: Int, _ settings: UNetBlockSettings, scale: Double = 1)
    -> ResnetBlock2D
{
    ResnetBlock2D(
        vb, inChannels: inChannels, outChannels: outChannels, timeEmbeddingChannels: settings.timeEmbeddingChannels,
        groups: settings.groups, eps: settings.eps, outputScaleFactor: scale)
}

/// `resnets.M` each followed by `attentions.M`, then `downsamplers.0` unless it is the last block.
final class CrossAttnDownBlock2D: UNetDownBlock {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let attentions: [Transformer2DModel]
    let downsampler: Downsample2D?

    init(
        _ vb: VarBuilder, inChannels: Int, outChannels: Int, layers: Int, addDownsample: Bool, downsamplePadding: Int,
        attention: CrossAttentionSettings, settings: UNetBlockSettings
    ) {
        scope = vb.scope
        resnets = (0..<layers).map {
            makeResnet(vb.pp("resnets").pp($0), $0 == 0 ? inChannels : outChannels, outChannels, settings)
        }
        attentions = (0..<layers).map {
            makeTransformer(vb.pp("attentions").pp($0), channels: outChannels, attention: attention, layer: $0, settings: settings)
        }
        downsampler = addDownsample
            ? Downsample2D(vb.pp("downsamplers").pp(0), channels: outChannels, padding: downsamplePadding) : nil
    }

    func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor) -> (Tensor, [Tensor]) {
        var hidden = x
        var outputs: [Tensor] = []
        for (resnet, attention) in zip(resnets, attentions) {
            hidden = attention(resnet(hidden, temb: temb), context: context)
            outputs.append(hidden)
        }
        if let downsampler {
            hidden = downsampler(hidden)
            outputs.append(hidden)
        }
        return (hidden, outputs)
    }
}

/// `resnets.M`, then `downsamplers.0` unless it is the last block.
final class DownBlock2D: UNetDownBlock {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let downsampler: Downsample2D?

    init(
        _ vb: VarBuilder, inChannels: Int, outChannels: Int, layers: Int, addDownsample: Bool, downsamplePadding: Int,
        settings: UNetBlockSettings
    ) {
        scope = vb.scope
        resnets = (0..<layers).map {
            makeResnet(vb.pp("resnets").pp($0), $0 == 0 ? inChannels : outChannels, outChannels, settings)
        }
        downsampler = addDownsample
            ? Downsample2D(vb.pp("downsamplers").pp(0), channels: outChannels, padding: downsamplePadding) : nil
    }

    func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor) -> (Tensor, [Tensor]) {
        var hidden = x
        var outputs: [Tensor] = []
        for resnet in resnets {
            hidden = resnet(hidden, temb: temb)
            outputs.append(hidden)
        }
        if let downsampler {
            hidden = downsampler(hidden)
            outputs.append(hidden)
        }
        return (hidden, outputs)
    }
}

/// `resnets.0`, then (`attentions.0`, `resnets.1`) for each layer (one in Stable Diffusion).
final class UNetMidBlock2DCrossAttn: Module {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let attentions: [Transformer2DModel]

    init(
        _ vb: VarBuilder, channels: Int, layers: Int = 1, outputScaleFactor: Double, attention: CrossAttentionSettings,
        settings: UNetBlockSettings
    ) {
        scope = vb.scope
        resnets = (0...layers).map {
            makeResnet(vb.pp("resnets").pp($0), channels, channels, settings, scale: outputScaleFactor)
        }
        attentions = (0..<layers).map {
            makeTransformer(vb.pp("attentions").pp($0), channels: channels, attention: attention, layer: $0, settings: settings)
        }
    }

    func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor) -> Tensor {
        var hidden = resnets[0](x, temb: temb)
        for (attention, resnet) in zip(attentions, resnets.dropFirst()) {
            hidden = resnet(attention(hidden, context: context), temb: temb)
        }
        return hidden
    }
}

/// The channels of an up block's resnets: resnet i takes the previous state (`prevOutputChannels` for the first,
/// else `outChannels`) concatenated with a skip state (`inChannels` for the last, which comes from the level below,
/// else `outChannels`).
func upResnetInputs(layers: Int, inChannels: Int, prevOutputChannels: Int, outChannels: Int) -> [Int] {
    (0..<layers).map { ($0 == 0 ? prevOutputChannels : outChannels) + ($0 == layers - 1 ? inChannels : outChannels) }
}

/// `resnets.M` on [state, skip] concatenated, each followed by `attentions.M`, then `upsamplers.0` unless it is
/// the last block.
final class CrossAttnUpBlock2D: UNetUpBlock {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let attentions: [Transformer2DModel]
    let upsampler: Upsample2D?
    var resnetCount: Int { resnets.count }

    init(
        _ vb: VarBuilder, inChannels: Int, prevOutputChannels: Int, outChannels: Int, layers: Int, addUpsample: Bool,
        attention: CrossAttentionSettings, settings: UNetBlockSettings
    ) {
        scope = vb.scope
        let inputs = upResnetInputs(
            layers: layers, inChannels: inChannels, prevOutputChannels: prevOutputChannels, outChannels: outChannels)
        resnets = inputs.enumerated().map { makeResnet(vb.pp("resnets").pp($0.offset), $0.element, outChannels, settings) }
        attentions = (0..<layers).map {
            makeTransformer(vb.pp("attentions").pp($0), channels: outChannels, attention: attention, layer: $0, settings: settings)
        }
        upsampler = addUpsample ? Upsample2D(vb.pp("upsamplers").pp(0), channels: outChannels) : nil
    }

    func callAsFunction(_ x: Tensor, skips: [Tensor], temb: Tensor, context: Tensor, upsampleSize: (Int, Int)?) -> Tensor {
        var hidden = x
        for (resnet, (attention, skip)) in zip(resnets, zip(attentions, skips.reversed())) {
            hidden = attention(resnet(Tensor.cat([hidden, skip], dim: 1), temb: temb), context: context)
        }
        return upsampler.map { $0(hidden, size: upsampleSize) } ?? hidden
    }
}

/// `resnets.M` on [state, skip] concatenated, then `upsamplers.0` unless it is the last block.
final class UpBlock2D: UNetUpBlock {
    let scope: ParameterScope
    let resnets: [ResnetBlock2D]
    let upsampler: Upsample2D?
    var resnetCount: Int { resnets.count }

    init(
        _ vb: VarBuilder, inChannels: Int, prevOutputChannels: Int, outChannels: Int, layers: Int, addUpsample: Bool,
        settings: UNetBlockSettings
    ) {
        scope = vb.scope
        let inputs = upResnetInputs(
            layers: layers, inChannels: inChannels, prevOutputChannels: prevOutputChannels, outChannels: outChannels)
        resnets = inputs.enumerated().map { makeResnet(vb.pp("resnets").pp($0.offset), $0.element, outChannels, settings) }
        upsampler = addUpsample ? Upsample2D(vb.pp("upsamplers").pp(0), channels: outChannels) : nil
    }

    func callAsFunction(_ x: Tensor, skips: [Tensor], temb: Tensor, context: Tensor, upsampleSize: (Int, Int)?) -> Tensor {
        var hidden = x
        for (resnet, skip) in zip(resnets, skips.reversed()) {
            hidden = resnet(Tensor.cat([hidden, skip], dim: 1), temb: temb)
        }
        return upsampler.map { $0(hidden, size: upsampleSize) } ?? hidden
    }
}
