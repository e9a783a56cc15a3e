import NN
import Torch

// diffusers' transformers/transformer_2d.py (continuous input) and attention.py (BasicTransformerBlock,
// FeedForward with GEGLU), as Stable Diffusion 1.x/2.x use them: layer norms, no attention bias, geglu.

/// Attention over the pixels of a feature map: GroupNorm, `proj_in` (a 1x1 convolution, or a linear layer on the
/// flattened pixels when `use_linear_projection`, as in SD 2.x), `transformer_blocks`, `proj_out`, plus the input.
public final class Transformer2DModel: Module {
    /// `proj_in`/`proj_out`: the two layouts diffusers has for the same map.
    enum Projection {
        case conv(Conv2d)
        case linear(Linear)
    }

    public let scope: ParameterScope
    let norm: GroupNorm
    let projIn: Projection
    let transformerBlocks: [BasicTransformerBlock]
    let projOut: Projection

    public init(
        _ vb: VarBuilder, heads: Int, headDim: Int, inChannels: Int, layers: Int, crossAttentionDim: Int, groups: Int,
        useLinearProjection: Bool, upcastAttention: Bool
    ) {
        scope = vb.scope
        let inner = heads * headDim
        norm = GroupNorm(vb.pp("norm"), groups: groups, channels: inChannels, eps: 1e-6)
        func projection(_ name: String, _ from: Int, _ to: Int) -> Projection {
            useLinearProjection
                ? .linear(Linear(vb.pp(name), inFeatures: from, outFeatures: to))
                : .conv(Conv2d(vb.pp(name), inChannels: from, outChannels: to, kernelSize: 1))
        }
        projIn = projection("proj_in", inChannels, inner)
        transformerBlocks = (0..<layers).map {
            BasicTransformerBlock(
                vb.pp("transformer_blocks").pp($0), dimension: inner, heads: heads, crossAttentionDim: crossAttentionDim,
                upcastAttention: upcastAttention)
        }
        projOut = projection("proj_out", inner, inChannels)
    }

    /// x [B, C, H, W]; context [B, S, crossAttentionDim].
    public func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        let (b, h, w) = (x.size(0), x.size(2), x.size(3))
        func toTokens(_ t: Tensor) -> Tensor { t.permute([0, 2, 3, 1]).reshape([b, h * w, t.size(1)]) }
        func toMap(_ t: Tensor) -> Tensor { t.reshape([b, h, w, t.size(2)]).permute([0, 3, 1, 2]).contiguous() }
        var hidden: Tensor
        switch projIn {
        case .conv(let conv): hidden = toTokens(conv(norm(x)))
        case .linear(let linear): hidden = linear(toTokens(norm(x)))
        }
        for block in transformerBlocks { hidden = block(hidden, context: context) }
        switch projOut {
        case .conv(let conv): hidden = conv(toMap(hidden))
        case .linear(let linear): hidden = toMap(linear(hidden))
        }
        return hidden + x
    }
}

/// Self-attention (`attn1`), cross-attention on the text (`attn2`), feed-forward (`ff`), each after a LayerNorm
/// (`norm1`, `norm2`, `norm3`) and added to its input.
public final class BasicTransformerBlock: Module {
    public let scope: ParameterScope
    let norm1: LayerNorm, attn1: MultiHeadAttention
    let norm2: LayerNorm, attn2: MultiHeadAttention
    let norm3: LayerNorm, ff: FeedForward

    public init(_ vb: VarBuilder, dimension: Int, heads: Int, crossAttentionDim: Int, upcastAttention: Bool) {
        scope = vb.scope
        norm1 = LayerNorm(vb.pp("norm1"), size: dimension)
        attn1 = MultiHeadAttention(
            vb.pp("attn1"), dimension: dimension, heads: heads, names: .diffusers, projectionBias: false,
            upcast: upcastAttention)
        norm2 = LayerNorm(vb.pp("norm2"), size: dimension)
        attn2 = MultiHeadAttention(
            vb.pp("attn2"), dimension: dimension, heads: heads, contextDim: crossAttentionDim, names: .diffusers,
            projectionBias: false, upcast: upcastAttention)
        norm3 = LayerNorm(vb.pp("norm3"), size: dimension)
        ff = FeedForward(vb.pp("ff"), dimension: dimension)
    }

    public func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        var hidden = attn1(norm1(x)) + x
        hidden = attn2(norm2(hidden), context: context) + hidden
        return ff(norm3(hidden)) + hidden
    }
}

/// `ff.net.0` (GEGLU: a projection to twice the inner width, one half gating the other through exact GELU) and
/// `ff.net.2` (back to the model width); `ff.net.1` is dropout, which has no parameters.
public final class FeedForward: Module {
    public let scope: ParameterScope
    let geglu: Linear, out: Linear

    public init(_ vb: VarBuilder, dimension: Int, multiplier: Int = 4) {
        scope = vb.scope
        let inner = dimension * multiplier
        geglu = Linear(vb.pp("net").pp(0).pp("proj"), inFeatures: dimension, outFeatures: inner * 2)
        out = Linear(vb.pp("net").pp(2), inFeatures: inner, outFeatures: dimension)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let halves = geglu(x).chunk(2, dim: -1)
        return out(halves[0] * halves[1].gelu())
    }
}
