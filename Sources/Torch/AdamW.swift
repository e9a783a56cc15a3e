import Foundation

/// AdamW with decoupled weight decay, step for step the update of `torch.optim.AdamW` (its single-tensor path,
/// the one PyTorch takes for CPU tensors; amsgrad and maximize are not offered).
public final class AdamW {
    public let parameters: [Tensor]
    public var learningRate: Double
    public var betas: (Double, Double)
    public var eps: Double
    public var weightDecay: Double
    /// Calls of `step()` so far.
    public private(set) var completedSteps = 0
    /// Updates each parameter has had (`state[p]["step"]`): a parameter without a gradient at a step is skipped
    /// and its count, which drives its bias correction, stays behind, as in PyTorch.
    private var parameterSteps: [Int]
    private var expAvg: [Tensor?]
    private var expAvgSq: [Tensor?]

    public init(
        parameters: [Tensor], learningRate: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999), eps: Double = 1e-8,
        weightDecay: Double = 1e-2
    ) {
        self.parameters = parameters
        self.learningRate = learningRate
        self.betas = betas
        self.eps = eps
        self.weightDecay = weightDecay
        expAvg = Array(repeating: nil, count: parameters.count)
        expAvgSq = Array(repeating: nil, count: parameters.count)
        parameterSteps = Array(repeating: 0, count: parameters.count)
    }

    /// Drops every parameter's gradient (`zero_grad()`, set_to_none).
    public func zeroGrad() { parameters.forEach { $0.zeroGrad() } }

    /// One update from the gradients now in `.grad`; parameters without a gradient are left alone.
    public func step() {
        completedSteps += 1
        let (beta1, beta2) = betas
        withNoGrad {
            for (i, parameter) in parameters.enumerated() {
                guard let grad = parameter.grad else { continue }
                parameterSteps[i] += 1
                let biasCorrection1 = 1 - Foundation.pow(beta1, Double(parameterSteps[i]))
                let biasCorrection2Sqrt = (1 - Foundation.pow(beta2, Double(parameterSteps[i]))).squareRoot()
                let stepSize = learningRate / biasCorrection1
                let m = expAvg[i] ?? parameter.detach().zerosLike()
                let v = expAvgSq[i] ?? parameter.detach().zerosLike()
                expAvg[i] = m
                expAvgSq[i] = v
                if weightDecay != 0 { parameter *= 1 - learningRate * weightDecay }
                m.lerp_(grad, weight: 1 - beta1)
                v *= beta2
                v.addcmul_(grad, grad, value: 1 - beta2)
                let denominator = v.sqrt() / biasCorrection2Sqrt
                denominator += eps
                parameter.addcdiv_(m, denominator, value: -stepSize)
            }
        }
    }

    // MARK: state, for exact resume

    /// The moment tensors by parameter index (`exp_avg.N`, `exp_avg_sq.N`), and as string metadata the
    /// hyper-parameters and step counts (`step`, `step.N`); `load(state:metadata:)` takes the same back.
    public func state() -> (tensors: [String: Tensor], metadata: [String: String]) {
        var tensors: [String: Tensor] = [:]
        var metadata: [String: String] = [:]
        for i in parameters.indices {
            if let m = expAvg[i] { tensors["exp_avg.\(i)"] = m }
            if let v = expAvgSq[i] { tensors["exp_avg_sq.\(i)"] = v }
            metadata["step.\(i)"] = String(parameterSteps[i])
        }
        metadata.merge([
            "optimizer": "AdamW", "step": String(completedSteps), "lr": String(learningRate), "beta1": String(betas.0),
            "beta2": String(betas.1), "eps": String(eps), "weight_decay": String(weightDecay),
            "parameter_count": String(parameters.count),
        ]) { $1 }
        return (tensors, metadata)
    }

    /// Restores a state saved by `state()`. The moments must match the parameters in number and shape.
    public func load(state tensors: [String: Tensor], metadata: [String: String]) throws {
        func number(_ key: String) throws -> Double {
            guard let text = metadata[key], let value = Double(text) else {
                throw TorchError(op: "AdamW.load", message: "optimizer state has no valid '\(key)'")
            }
            return value
        }
        guard metadata["optimizer"] == "AdamW" else {
            throw TorchError(op: "AdamW.load", message: "the state is not an AdamW state (optimizer = \(metadata["optimizer"] ?? "none"))")
        }
        let count = Int(try number("parameter_count"))
        guard count == parameters.count else {
            throw TorchError(op: "AdamW.load", message: "the state is for \(count) parameters, the optimizer has \(parameters.count)")
        }
        var newAvg = [Tensor?](repeating: nil, count: count), newAvgSq = newAvg
        let newSteps = try parameters.indices.map { Int(try number("step.\($0)")) }
        for (i, parameter) in parameters.enumerated() {
            for (key, slot) in [("exp_avg.\(i)", 0), ("exp_avg_sq.\(i)", 1)] {
                guard let t = tensors[key] else { continue }
                guard t.shape == parameter.shape else {
                    throw TorchError(op: "AdamW.load", message: "\(key) has shape \(t.shape), parameter \(i) has \(parameter.shape)")
                }
                let copy = t.to(dtype: parameter.dtype, device: parameter.device, copy: true)
                if slot == 0 { newAvg[i] = copy } else { newAvgSq[i] = copy }
            }
        }
        completedSteps = Int(try number("step"))
        parameterSteps = newSteps
        learningRate = try number("lr")
        betas = (try number("beta1"), try number("beta2"))
        eps = try number("eps")
        weightDecay = try number("weight_decay")
        expAvg = newAvg
        expAvgSq = newAvgSq
    }
}
