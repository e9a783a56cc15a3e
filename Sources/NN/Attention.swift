import Torch

/// Multi-head attention on `scaled_dot_product_attention`, with the projection names of the checkpoint family:
/// transformers' CLIP (`q_proj`, `k_proj`, `v_proj`, `out_proj`), diffusers (`to_q`, `to_k`, `to_v`, `to_out.0`), or
/// PyTorch's `nn.MultiheadAttention` (open_clip), whose queries, keys and values come from one packed projection.
public final class MultiHeadAttention: Module {
    public struct ProjectionNames: Sendable {
        public let query, key, value, output: String
        public init(query: String, key: String, value: String, output: String) {
            self.query = query
            self.key = key
            self.value = value
            self.output = output
        }
        public static let clip = ProjectionNames(query: "q_proj", key: "k_proj", value: "v_proj", output: "out_proj")
        public static let diffusers = ProjectionNames(query: "to_q", key: "to_k", value: "to_v", output: "to_out.0")
    }

    /// How the inputs become queries, keys and values.
    public enum InputProjection {
        /// Three linear layers.
        case separate(query: Linear, key: Linear, value: Linear)
        /// `nn.MultiheadAttention`'s `in_proj_weight` [3·D, D] and `in_proj_bias` [3·D]: the three row blocks are the
        /// query, key and value projections, in that order.
        case packed(weight: Tensor, bias: Tensor?)
    }

    public let scope: ParameterScope
    public let heads: Int
    public let input: InputProjection
    public let output: Linear
    /// Whether attention runs in float32 when the inputs are float16 or bfloat16 (diffusers' `upcast_attention`).
    public let upcast: Bool

    /// `contextDim` is the width of the keys' and values' input (cross-attention); nil for self-attention.
    /// `legacyNames` are older names a checkpoint may use for the same projections (diffusers' VAE before 0.14:
    /// `query`, `key`, `value`, `proj_attn`); the tensors are kept under `names`.
    /// `upcast` computes the scores and softmax in float32 for half-precision inputs, where they can overflow.
    public init(
        _ vb: VarBuilder, dimension: Int, heads: Int, contextDim: Int? = nil, names: ProjectionNames = .clip,
        legacyNames: ProjectionNames? = nil, projectionBias: Bool = true, outputBias: Bool = true, upcast: Bool = false
    ) {
        precondition(dimension % heads == 0, "MultiHeadAttention: dimension \(dimension) is not divisible by \(heads) heads")
        scope = vb.scope
        self.heads = heads
        self.upcast = upcast
        let kv = contextDim ?? dimension
        func at(_ name: String, _ legacy: String?) -> VarBuilder { legacy.map { vb.pp(name, alias: $0) } ?? vb.pp(name) }
        input = .separate(
            query: Linear(at(names.query, legacyNames?.query), inFeatures: dimension, outFeatures: dimension, bias: projectionBias),
            key: Linear(at(names.key, legacyNames?.key), inFeatures: kv, outFeatures: dimension, bias: projectionBias),
            value: Linear(at(names.value, legacyNames?.value), inFeatures: kv, outFeatures: dimension, bias: projectionBias))
        output = Linear(
            at(names.output, legacyNames?.output), inFeatures: dimension, outFeatures: dimension, bias: outputBias)
    }

    /// PyTorch's `nn.MultiheadAttention` layout (keys and values of the query's width): `in_proj_weight`,
    /// `in_proj_bias`, `out_proj.weight`, `out_proj.bias`.
    public init(packed vb: VarBuilder, dimension: Int, heads: Int, bias: Bool = true, upcast: Bool = false) {
        precondition(dimension % heads == 0, "MultiHeadAttention: dimension \(dimension) is not divisible by \(heads) heads")
        scope = vb.scope
        self.heads = heads
        self.upcast = upcast
        input = .packed(
            weight: vb.get([3 * dimension, dimension], "in_proj_weight", initializer: .uniformFanIn(dimension)),
            bias: bias ? vb.get([3 * dimension], "in_proj_bias", initializer: .zeros) : nil)
        output = Linear(vb.pp("out_proj"), inFeatures: dimension, outFeatures: dimension, bias: bias)
    }

    /// Queries, keys and values [B, L or S, D] before the split into heads.
    func project(_ x: Tensor, _ source: Tensor, selfAttention: Bool) -> (Tensor, Tensor, Tensor) {
        switch input {
        case .separate(let query, let key, let value):
            return (query(x), key(source), value(source))
        case .packed(let weight, let bias):
            if selfAttention {  // one matmul, as nn.MultiheadAttention does for self-attention
                let qkv = Functional.linear(x, weight: weight, bias: bias).chunk(3, dim: -1)
                return (qkv[0], qkv[1], qkv[2])
            }
            let w = weight.chunk(3, dim: 0)
            let b = bias?.chunk(3, dim: 0)
            return (
                Functional.linear(x, weight: w[0], bias: b?[0]), Functional.linear(source, weight: w[1], bias: b?[1]),
                Functional.linear(source, weight: w[2], bias: b?[2])
            )
        }
    }

    /// x [B, L, D]; context [B, S, C] (defaults to x); mask broadcastable to [B, heads, L, S] (bool: true = attend,
    /// float: added to the scores).
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil, mask: Tensor? = nil, isCausal: Bool = false) -> Tensor {
        let source = context ?? x
        let (b, l) = (x.size(0), x.size(1))
        let dtype = x.dtype
        let upcasting = upcast && (dtype == .float16 || dtype == .bfloat16)
        func split(_ t: Tensor) -> Tensor {
            let heads = t.reshape([b, t.size(1), self.heads, -1]).transpose(1, 2)
            return upcasting ? heads.to(.float32) : heads
        }
        let (q, k, v) = project(x, source, selfAttention: context == nil)
        var attended = Functional.scaledDotProductAttention(
            query: split(q), key: split(k), value: split(v),
            mask: upcasting && mask?.dtype.isFloatingPoint == true ? mask!.to(.float32) : mask, isCausal: isCausal)
        if upcasting { attended = attended.to(dtype) }
        return output(attended.transpose(1, 2).reshape([b, l, -1]))
    }
}
