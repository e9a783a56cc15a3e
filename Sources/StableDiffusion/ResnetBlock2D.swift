import NN
import Torch

// diffusers' models/resnet.py (ResnetBlock2D), downsampling.py (Downsample2D) and upsampling.py (Upsample2D), as
// Stable Diffusion's UNet and VAE use them: pre-norm, SiLU, "default" time-embedding norm (added before norm2).

/// A residual block: norm1, SiLU, conv1, (+ projected time embedding), norm2, SiLU, conv2, plus the input (through a
/// 1x1 `conv_shortcut` when the channel count changes), divided by `outputScaleFactor`.
public final class ResnetBlock2D: Module {
    public let scope: ParameterScope
    let norm1: GroupNorm, conv1: Conv2d
    let timeEmbProj: Linear?
    let norm2: GroupNorm, conv2: Conv2d
    let convShortcut: Conv2d?
    let outputScaleFactor: Double

    /// `timeEmbeddingChannels` nil builds the VAE's variant, which has no `time_emb_proj`.
    public init(
        _ vb: VarBuilder, inChannels: Int, outChannels: Int, timeEmbeddingChannels: Int?, groups: Int, eps: Double,
        outputScaleFactor: Double = 1
    ) {
        scope = vb.scope
        norm1 = GroupNorm(vb.pp("norm1"), groups: groups, channels: inChannels, eps: eps)
        conv1 = Conv2d(vb.pp("conv1"), inChannels: inChannels, outChannels: outChannels, kernelSize: 3, padding: 1)
        timeEmbProj = timeEmbeddingChannels.map {
            Linear(vb.pp("time_emb_proj"), inFeatures: $0, outFeatures: outChannels)
        }
        norm2 = GroupNorm(vb.pp("norm2"), groups: groups, channels: outChannels, eps: eps)
        conv2 = Conv2d(vb.pp("conv2"), inChannels: outChannels, outChannels: outChannels, kernelSize: 3, padding: 1)
        convShortcut = inChannels == outChannels
            ? nil : Conv2d(vb.pp("conv_shortcut"), inChannels: inChannels, outChannels: outChannels, kernelSize: 1)
        self.outputScaleFactor = outputScaleFactor
    }

    /// x [B, C, H, W]; temb [B, T] (nil in the VAE).
    public func callAsFunction(_ x: Tensor, temb: Tensor?) -> Tensor {
        var h = conv1(norm1(x).silu())
        if let timeEmbProj, let temb {
            h = h + timeEmbProj(temb.silu()).unsqueeze(-1).unsqueeze(-1)
        }
        h = conv2(norm2(h).silu())  // dropout is 0 in inference and in TextCraftor's training
        let shortcut = convShortcut.map { $0(x) } ?? x
        let sum = shortcut + h
        return outputScaleFactor == 1 ? sum : sum / outputScaleFactor
    }
}

/// A stride-2 3x3 convolution (`conv`). With `padding` 0 (the VAE encoder) diffusers first pads one zero row and
/// column at the bottom and right, so that even sizes halve exactly.
public final class Downsample2D: Module {
    public let scope: ParameterScope
    let conv: Conv2d
    let padding: Int

    public init(_ vb: VarBuilder, channels: Int, padding: Int) {
        scope = vb.scope
        conv = Conv2d(vb.pp("conv"), inChannels: channels, outChannels: channels, kernelSize: 3, stride: 2, padding: padding)
        self.padding = padding
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        conv(padding == 0 ? Functional.pad(x, [0, 1, 0, 1]) : x)
    }
}

/// Nearest-neighbour 2x upsampling, then a 3x3 convolution (`conv`). `size` forces the output size instead of 2x,
/// for inputs whose size is not a multiple of the UNet's overall factor (the skip connection fixes the size).
public final class Upsample2D: Module {
    public let scope: ParameterScope
    let conv: Conv2d

    public init(_ vb: VarBuilder, channels: Int) {
        scope = vb.scope
        conv = Conv2d(vb.pp("conv"), inChannels: channels, outChannels: channels, kernelSize: 3, padding: 1)
    }

    public func callAsFunction(_ x: Tensor, size: (Int, Int)? = nil) -> Tensor {
        let upsampled = size.map { Functional.interpolate(x, size: $0, mode: .nearest) }
            ?? Functional.interpolate(x, scaleFactor: (2, 2), mode: .nearest)
        return conv(upsampled)
    }
}
