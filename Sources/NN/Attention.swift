import Torch

/// Multi-head attention on `scaled_dot_product_attention`, with the projection names of the checkpoint family:
/// transformers' CLIP (`q_proj`, `k_proj`, `v_proj`, `out_proj`) or diffusers (`to_q`, `to_k`, `to_v`, `to_out.0`).
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

    public let scope: ParameterScope
    public let heads: Int
    public let query, key, value, output: Linear
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
        query = Linear(at(names.query, legacyNames?.query), inFeatures: dimension, outFeatures: dimension, bias: projectionBias)
        key = Linear(at(names.key, legacyNames?.key), inFeatures: kv, outFeatures: dimension, bias: projectionBias)
        value = Linear(at(names.value, legacyNames?.value), inFeatures: kv, outFeatures: dimension, bias: projectionBias)
        output = Linear(
            at(names.output, legacyNames?.output), inFeatures: dimension, outFeatures: dimension, bias: outputBias)
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
        var attended = Functional.scaledDotProductAttention(
            query: split(query(x)), key: split(key(source)), value: split(value(source)),
            mask: upcasting && mask?.dtype.isFloatingPoint == true ? mask!.to(.float32) : mask, isCausal: isCausal)
        if upcasting { attended = attended.to(dtype) }
        return output(attended.transpose(1, 2).reshape([b, l, -1]))
    }
}
