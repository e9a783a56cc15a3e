import CTorch

extension Tensor {
    /// Whether autograd records operations on this tensor. Setting it is only allowed on leaves.
    public var requiresGrad: Bool {
        get { ct_requires_grad(handle) == 1 }
        set { checkStatus(ct_set_requires_grad(handle, newValue ? 1 : 0), "requires_grad_") }
    }

    /// Sets `requiresGrad` and returns self, for chaining (`Tensor.randn([3]).requiringGrad()`).
    @discardableResult
    public func requiringGrad(_ flag: Bool = true) -> Tensor {
        requiresGrad = flag
        return self
    }

    public var isLeaf: Bool { ct_is_leaf(handle) == 1 }

    /// The gradient accumulated by `backward` (nil until there is one).
    public var grad: Tensor? {
        get {
            var out: ct_tensor?
            checkStatus(ct_grad(handle, &out), "grad")
            return out.map { Tensor(handle: $0) }
        }
        set { checkStatus(ct_set_grad(handle, newValue?.handle), "grad") }
    }

    /// Drops the accumulated gradient (`zero_grad(set_to_none=True)`, PyTorch's default).
    public func zeroGrad() { grad = nil }

    /// Backpropagates from this tensor. `gradient` is required unless the tensor has one element.
    /// `retainGraph` nil follows PyTorch (it equals `createGraph`).
    public func backward(gradient: Tensor? = nil, retainGraph: Bool? = nil, createGraph: Bool = false) {
        let retain: Int32 = retainGraph.map { $0 ? 1 : 0 } ?? -1
        checkStatus(ct_backward(handle, gradient?.handle, retain, createGraph ? 1 : 0), "backward")
    }
}

/// Vector-Jacobian products and the grad-mode scopes.
public enum Autograd {
    /// `torch.autograd.grad`: d(Σ outputs·gradOutputs)/d(inputs). An input that does not influence the outputs gives
    /// nil when `allowUnused`, else an error.
    public static func grad(
        outputs: [Tensor], inputs: [Tensor], gradOutputs: [Tensor?]? = nil, retainGraph: Bool? = nil,
        createGraph: Bool = false, allowUnused: Bool = false
    ) -> [Tensor?] {
        precondition(gradOutputs == nil || gradOutputs!.count == outputs.count, "Autograd.grad: one gradOutput per output")
        let outs: [ct_tensor?] = outputs.map { $0.handle }
        let ins: [ct_tensor?] = inputs.map { $0.handle }
        let gos: [ct_tensor?]? = gradOutputs?.map { $0?.handle }
        var results = [ct_tensor?](repeating: nil, count: inputs.count)
        let retain: Int32 = retainGraph.map { $0 ? 1 : 0 } ?? -1
        let status: Int32 = (gos ?? []).withUnsafeBufferPointer { goBuffer in
            ct_autograd_grad(
                outs, Int32(outs.count), ins, Int32(ins.count), gos == nil ? nil : goBuffer.baseAddress, retain,
                createGraph ? 1 : 0, allowUnused ? 1 : 0, &results)
        }
        checkStatus(status, "autograd.grad")
        return results.map { $0.map { Tensor(handle: $0) } }
    }

    /// `torch.autograd.backward(tensors, grad_tensors)`: backpropagates from several outputs in one pass, each with
    /// its own incoming gradient (nil for an output of one element), accumulating into the leaves' `.grad`. One pass
    /// rather than one per output: the graph they share (SDXL's two conditioning tensors come out of the same
    /// encoder) is walked once, and freed once.
    public static func backward(_ outputs: [Tensor], gradients: [Tensor?], retainGraph: Bool? = nil, createGraph: Bool = false) {
        precondition(gradients.count == outputs.count, "Autograd.backward: one gradient per output")
        let outs: [ct_tensor?] = outputs.map { $0.handle }
        let grads: [ct_tensor?] = gradients.map { $0?.handle }
        let retain: Int32 = retainGraph.map { $0 ? 1 : 0 } ?? -1
        checkStatus(ct_autograd_backward(outs, Int32(outs.count), grads, retain, createGraph ? 1 : 0), "autograd.backward")
    }

    /// Whether operations are recorded for autograd on this thread.
    public static var isGradEnabled: Bool { ct_grad_enabled() == 1 }
}

/// Runs `body` with gradient recording off (`torch.no_grad()`); the previous mode is restored on exit, also when
/// `body` throws.
public func withNoGrad<R>(_ body: () throws -> R) rethrows -> R {
    try withGradEnabled(false, body)
}

/// Runs `body` with gradient recording on or off (`torch.set_grad_enabled(flag)` as a scope).
public func withGradEnabled<R>(_ enabled: Bool, _ body: () throws -> R) rethrows -> R {
    let previous = ct_grad_enabled()
    ct_set_grad_enabled(enabled ? 1 : 0)
    defer { ct_set_grad_enabled(previous) }
    return try body()
}

/// Runs `body` under autocast (`torch.autocast(device_type, dtype)`): eligible ops run in `dtype`. The previous
/// state is restored on exit, and the cast cache is cleared when the outermost scope ends, as in Python.
public func withAutocast<R>(
    dtype: DType = .bfloat16, device: Device = .cpu, enabled: Bool = true, _ body: () throws -> R
) rethrows -> R {
    var previousEnabled: Int32 = 0, previousDType: Int32 = 0
    checkStatus(ct_autocast_push(device.typeCode, dtype.rawValue, enabled ? 1 : 0, &previousEnabled, &previousDType), "autocast")
    defer { checkStatus(ct_autocast_pop(device.typeCode, previousEnabled, previousDType), "autocast") }
    return try body()
}

extension Autograd {
    /// Whether autocast is on for the device's type on this thread.
    public static func isAutocastEnabled(_ device: Device = .cpu) -> Bool { ct_autocast_enabled(device.typeCode) == 1 }
}
