import Torch

// The basic layers, loaded by the names PyTorch's own modules use (`weight`, `bias`).

/// `nn.Linear`: y = x Wᵀ + b, weight [out, in]. With an `adapter` (LoRA), its low-rank term is added.
public final class Linear: Module {
    public let scope: ParameterScope
    public let weight: Tensor
    public let bias: Tensor?
    /// A trainable low-rank update beside the (frozen) weight; nil: a plain linear layer.
    public var adapter: LowRankAdapter?

    public init(_ vb: VarBuilder, inFeatures: Int, outFeatures: Int, bias: Bool = true) {
        scope = vb.scope
        weight = vb.get([outFeatures, inFeatures], "weight", initializer: .uniformFanIn(inFeatures))
        self.bias = bias ? vb.get([outFeatures], "bias", initializer: .uniformFanIn(inFeatures)) : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let y = Functional.linear(x, weight: weight, bias: bias)
        guard let adapter else { return y }
        return y + adapter(x)
    }
}

/// `nn.Conv2d` with square kernels, weight [out, in / groups, k, k].
public final class Conv2d: Module {
    public let scope: ParameterScope
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int, padding: Int, groups: Int

    public init(
        _ vb: VarBuilder, inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
        groups: Int = 1, bias: Bool = true
    ) {
        scope = vb.scope
        let fanIn = inChannels / groups * kernelSize * kernelSize
        weight = vb.get([outChannels, inChannels / groups, kernelSize, kernelSize], "weight", initializer: .uniformFanIn(fanIn))
        self.bias = bias ? vb.get([outChannels], "bias", initializer: .uniformFanIn(fanIn)) : nil
        self.stride = stride
        self.padding = padding
        self.groups = groups
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        Functional.conv2d(x, weight: weight, bias: bias, stride: (stride, stride), padding: (padding, padding), groups: groups)
    }
}

/// `nn.GroupNorm`.
public final class GroupNorm: Module {
    public let scope: ParameterScope
    public let groups: Int, eps: Double
    public let weight: Tensor?, bias: Tensor?

    public init(_ vb: VarBuilder, groups: Int, channels: Int, eps: Double = 1e-5, affine: Bool = true) {
        scope = vb.scope
        self.groups = groups
        self.eps = eps
        weight = affine ? vb.get([channels], "weight", initializer: .ones) : nil
        bias = affine ? vb.get([channels], "bias", initializer: .zeros) : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        Functional.groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps)
    }
}

/// `nn.LayerNorm` over the last dimension.
public final class LayerNorm: Module {
    public let scope: ParameterScope
    public let eps: Double
    public let weight: Tensor?, bias: Tensor?
    let size: Int

    public init(_ vb: VarBuilder, size: Int, eps: Double = 1e-5, affine: Bool = true, bias: Bool = true) {
        scope = vb.scope
        self.size = size
        self.eps = eps
        weight = affine ? vb.get([size], "weight", initializer: .ones) : nil
        self.bias = affine && bias ? vb.get([size], "bias", initializer: .zeros) : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        Functional.layerNorm(x, normalizedShape: [size], weight: weight, bias: bias, eps: eps)
    }
}

/// `nn.Embedding`: rows of a [count, dim] table.
public final class Embedding: Module {
    public let scope: ParameterScope
    public let weight: Tensor

    public init(_ vb: VarBuilder, count: Int, dimension: Int) {
        scope = vb.scope
        weight = vb.get([count, dimension], "weight", initializer: .normal(std: 1))
    }

    public func callAsFunction(_ indices: Tensor) -> Tensor { Functional.embedding(indices, weight: weight) }
}

/// `nn.Dropout`: active only when called with `training: true`.
public struct Dropout {
    public let p: Double
    public init(p: Double) { self.p = p }
    public func callAsFunction(_ x: Tensor, training: Bool = false) -> Tensor {
        training && p > 0 ? Functional.dropout(x, p: p, training: true) : x
    }
}
