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

    /// `contextDim` is the width of the keys' and values' input (cross-attention); nil for self-attention.
    public init(
        _ vb: VarBuilder, dimension: Int, heads: Int, contextDim: Int? = nil, names: ProjectionNames = .clip,
        projectionBias: Bool = true, outputBias: Bool = true
    ) {
        precondition(dimension % heads == 0, "MultiHeadAttention: dimension \(dimension) is not divisible by \(heads) heads")
        scope = vb.scope
        self.heads = heads
        let kv = contextDim ?? dimension
        query = Linear(vb.pp(names.query), inFeatures: dimension, outFeatures: dimension, bias: projectionBias)
        key = Linear(vb.pp(names.key), inFeatures: kv, outFeatures: dimension, bias: projectionBias)
        value = Linear(vb.pp(names.value), inFeatures: kv, outFeatures: dimension, bias: projectionBias)
        output = Linear(vb.pp(names.output), inFeatures: dimension, outFeatures: dimension, bias: outputBias)
    }

    /// x [B, L, D]; context [B, S, C] (defaults to x); mask broadcastable to [B, heads, L, S] (bool: true = attend,
    /// float: added to the scores).
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil, mask: Tensor? = nil, isCausal: Bool = false) -> Tensor {
        let source = context ?? x
        let (b, l) = (x.size(0), x.size(1))
        func split(_ t: Tensor) -> Tensor { t.reshape([b, t.size(1), heads, -1]).transpose(1, 2) }
        let attended = Functional.scaledDotProductAttention(
            query: split(query(x)), key: split(key(source)), value: split(value(source)), mask: mask, isCausal: isCausal)
        return output(attended.transpose(1, 2).reshape([b, l, -1]))
    }
}
