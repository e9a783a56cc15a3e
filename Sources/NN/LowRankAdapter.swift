import Torch

/// LoRA's low-rank update of a linear layer (Hu et al. 2021, as PEFT and kohya's sd-scripts build it): the layer
/// computes W x + b + (alpha / rank) · up(down(dropout(x))), with `down` [rank, in] and `up` [out, rank]. Initialised
/// with `down` kaiming-uniform (a = √5: U(−1/√in, 1/√in)) and `up` zero, it starts as the layer itself.
///
/// Dropout is active while autograd records (the training forward), never in inference; its masks are drawn from
/// `dropoutGenerator` when one is set (a CPU generator whose state a checkpoint can keep), else from torch's.
public final class LowRankAdapter {
    public let down: Tensor
    public let up: Tensor
    public let alpha: Double
    public let dropout: Double
    public var dropoutGenerator: Generator?

    public var rank: Int { down.size(0) }
    /// alpha / rank: the factor of up · down in the effective weight.
    public var scale: Double { alpha / Double(rank) }

    public init(down: Tensor, up: Tensor, alpha: Double, dropout: Double = 0) {
        precondition(down.rank == 2 && up.rank == 2 && up.size(1) == down.size(0), "LowRankAdapter: down [r, in], up [out, r]")
        self.down = down
        self.up = up
        self.alpha = alpha
        self.dropout = dropout
    }

    /// A fresh adapter for a [out, in] layer: `down` drawn from `generator`, `up` zeros; float32, trainable.
    public convenience init(inFeatures: Int, outFeatures: Int, rank: Int, alpha: Double, dropout: Double = 0,
                            generator: Generator, device: Device = .cpu) {
        let bound = 1 / Double(max(inFeatures, 1)).squareRoot()
        let down = (Tensor.rand([rank, inFeatures], generator: generator) * (2 * bound) - bound).to(dtype: .float32, device: device)
        let up = Tensor.zeros([outFeatures, rank], dtype: .float32, device: device)
        down.requiresGrad = true
        up.requiresGrad = true
        self.init(down: down, up: up, alpha: alpha, dropout: dropout)
    }

    /// The low-rank term for `x` [..., in], in `x`'s type.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x.dtype == down.dtype ? x : x.to(down.dtype)
        if dropout > 0, Autograd.isGradEnabled {
            if let dropoutGenerator {
                let keep = Tensor.rand(h.shape, generator: dropoutGenerator).ge(dropout).to(dtype: h.dtype, device: h.device)
                h = h * keep * (1 / (1 - dropout))
            } else {
                h = Functional.dropout(h, p: dropout, training: true)
            }
        }
        let y = Functional.linear(Functional.linear(h, weight: down, bias: nil), weight: up, bias: nil) * scale
        return y.dtype == x.dtype ? y : y.to(x.dtype)
    }
}
