import CTorch

// Element-wise math, views and reductions. Names and argument conventions follow PyTorch's so that a reader can
// hold a line of Python beside ours: dims may be negative, shapes are [Int], scalars are Double.

extension Tensor {
    fileprivate func unary(_ op: ct_unary_op, _ name: StaticString) -> Tensor {
        Tensor(handle: check(ct_unary(Int32(op.rawValue), handle), name))
    }

    fileprivate func binary(_ op: ct_binary_op, _ other: Tensor, _ name: StaticString) -> Tensor {
        Tensor(handle: check(ct_binary(Int32(op.rawValue), handle, other.handle), name))
    }

    fileprivate func binary(_ op: ct_binary_op, _ scalar: Double, _ name: StaticString) -> Tensor {
        Tensor(handle: check(ct_binary_scalar(Int32(op.rawValue), handle, scalar), name))
    }

    fileprivate static func binary(_ op: ct_binary_op, _ scalar: Double, _ tensor: Tensor, _ name: StaticString) -> Tensor {
        Tensor(handle: check(ct_scalar_binary(Int32(op.rawValue), scalar, tensor.handle), name))
    }

    // MARK: arithmetic operators (broadcasting as in PyTorch)

    public static func + (a: Tensor, b: Tensor) -> Tensor { a.binary(CT_ADD, b, "add") }
    public static func - (a: Tensor, b: Tensor) -> Tensor { a.binary(CT_SUB, b, "sub") }
    public static func * (a: Tensor, b: Tensor) -> Tensor { a.binary(CT_MUL, b, "mul") }
    public static func / (a: Tensor, b: Tensor) -> Tensor { a.binary(CT_DIV, b, "div") }
    public static func + (a: Tensor, s: Double) -> Tensor { a.binary(CT_ADD, s, "add") }
    public static func - (a: Tensor, s: Double) -> Tensor { a.binary(CT_SUB, s, "sub") }
    public static func * (a: Tensor, s: Double) -> Tensor { a.binary(CT_MUL, s, "mul") }
    public static func / (a: Tensor, s: Double) -> Tensor { a.binary(CT_DIV, s, "div") }
    public static func + (s: Double, a: Tensor) -> Tensor { binary(CT_ADD, s, a, "add") }
    public static func - (s: Double, a: Tensor) -> Tensor { binary(CT_SUB, s, a, "rsub") }
    public static func * (s: Double, a: Tensor) -> Tensor { binary(CT_MUL, s, a, "mul") }
    public static func / (s: Double, a: Tensor) -> Tensor { binary(CT_DIV, s, a, "rdiv") }
    public static prefix func - (a: Tensor) -> Tensor { a.neg() }

    /// `a + alpha * b` in one op (`torch.add(a, b, alpha=)`).
    public func add(_ other: Tensor, alpha: Double) -> Tensor {
        Tensor(handle: check(ct_add_scaled(handle, other.handle, alpha), "add"))
    }

    public func pow(_ exponent: Double) -> Tensor { binary(CT_POW, exponent, "pow") }
    public func pow(_ exponent: Tensor) -> Tensor { binary(CT_POW, exponent, "pow") }
    public func maximum(_ other: Tensor) -> Tensor { binary(CT_MAXIMUM, other, "maximum") }
    public func minimum(_ other: Tensor) -> Tensor { binary(CT_MINIMUM, other, "minimum") }
    public func remainder(_ other: Double) -> Tensor { binary(CT_REMAINDER, other, "remainder") }
    public func atan2(_ other: Tensor) -> Tensor { binary(CT_ATAN2, other, "atan2") }

    // MARK: comparisons (bool tensors)

    public func eq(_ other: Tensor) -> Tensor { binary(CT_EQ, other, "eq") }
    public func ne(_ other: Tensor) -> Tensor { binary(CT_NE, other, "ne") }
    public func lt(_ other: Tensor) -> Tensor { binary(CT_LT, other, "lt") }
    public func le(_ other: Tensor) -> Tensor { binary(CT_LE, other, "le") }
    public func gt(_ other: Tensor) -> Tensor { binary(CT_GT, other, "gt") }
    public func ge(_ other: Tensor) -> Tensor { binary(CT_GE, other, "ge") }
    public func eq(_ s: Double) -> Tensor { binary(CT_EQ, s, "eq") }
    public func ne(_ s: Double) -> Tensor { binary(CT_NE, s, "ne") }
    public func lt(_ s: Double) -> Tensor { binary(CT_LT, s, "lt") }
    public func le(_ s: Double) -> Tensor { binary(CT_LE, s, "le") }
    public func gt(_ s: Double) -> Tensor { binary(CT_GT, s, "gt") }
    public func ge(_ s: Double) -> Tensor { binary(CT_GE, s, "ge") }
    public func logicalAnd(_ other: Tensor) -> Tensor { binary(CT_LOGICAL_AND, other, "logical_and") }
    public func logicalOr(_ other: Tensor) -> Tensor { binary(CT_LOGICAL_OR, other, "logical_or") }
    public func logicalNot() -> Tensor { unary(CT_LOGICAL_NOT, "logical_not") }

    // MARK: math

    public func neg() -> Tensor { unary(CT_NEG, "neg") }
    public func abs() -> Tensor { unary(CT_ABS, "abs") }
    public func exp() -> Tensor { unary(CT_EXP, "exp") }
    public func log() -> Tensor { unary(CT_LOG, "log") }
    public func sqrt() -> Tensor { unary(CT_SQRT, "sqrt") }
    public func rsqrt() -> Tensor { unary(CT_RSQRT, "rsqrt") }
    public func sin() -> Tensor { unary(CT_SIN, "sin") }
    public func cos() -> Tensor { unary(CT_COS, "cos") }
    public func tanh() -> Tensor { unary(CT_TANH, "tanh") }
    public func sigmoid() -> Tensor { unary(CT_SIGMOID, "sigmoid") }
    public func relu() -> Tensor { unary(CT_RELU, "relu") }
    public func silu() -> Tensor { unary(CT_SILU, "silu") }
    /// Exact GELU (`approximate="none"`), or the tanh approximation.
    public func gelu(approximate: Bool = false) -> Tensor {
        approximate ? unary(CT_GELU_TANH, "gelu") : unary(CT_GELU, "gelu")
    }
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's activation (transformers' `quick_gelu`).
    public func quickGelu() -> Tensor { unary(CT_QUICK_GELU, "quick_gelu") }
    public func softplus() -> Tensor { unary(CT_SOFTPLUS, "softplus") }
    public func square() -> Tensor { unary(CT_SQUARE, "square") }
    public func floor() -> Tensor { unary(CT_FLOOR, "floor") }
    public func ceil() -> Tensor { unary(CT_CEIL, "ceil") }
    public func round() -> Tensor { unary(CT_ROUND, "round") }
    public func sign() -> Tensor { unary(CT_SIGN, "sign") }
    public func reciprocal() -> Tensor { unary(CT_RECIPROCAL, "reciprocal") }
    public func erf() -> Tensor { unary(CT_ERF, "erf") }
    public func log1p() -> Tensor { unary(CT_LOG1P, "log1p") }
    public func expm1() -> Tensor { unary(CT_EXPM1, "expm1") }
    public func isnan() -> Tensor { unary(CT_ISNAN, "isnan") }
    public func isfinite() -> Tensor { unary(CT_ISFINITE, "isfinite") }

    public func clamp(min: Double? = nil, max: Double? = nil) -> Tensor {
        Tensor(handle: check(ct_clamp(handle, min ?? 0, max ?? 0, min == nil ? 0 : 1, max == nil ? 0 : 1), "clamp"))
    }

    /// `torch.where(condition, a, b)`.
    public static func `where`(_ condition: Tensor, _ a: Tensor, _ b: Tensor) -> Tensor {
        Tensor(handle: check(ct_where(condition.handle, a.handle, b.handle), "where"))
    }

    public func maskedFill(_ mask: Tensor, _ value: Double) -> Tensor {
        Tensor(handle: check(ct_masked_fill(handle, mask.handle, value), "masked_fill"))
    }

    /// `self + weight * (end - self)`.
    public func lerp(_ end: Tensor, weight: Double) -> Tensor {
        Tensor(handle: check(ct_lerp(handle, end.handle, weight), "lerp"))
    }

    // MARK: in place (they change this tensor's data and bump its version counter, as Python's `_` ops do)

    public static func += (a: Tensor, b: Tensor) { checkStatus(ct_binary_(Int32(CT_ADD.rawValue), a.handle, b.handle), "add_") }
    public static func -= (a: Tensor, b: Tensor) { checkStatus(ct_binary_(Int32(CT_SUB.rawValue), a.handle, b.handle), "sub_") }
    public static func *= (a: Tensor, b: Tensor) { checkStatus(ct_binary_(Int32(CT_MUL.rawValue), a.handle, b.handle), "mul_") }
    public static func /= (a: Tensor, b: Tensor) { checkStatus(ct_binary_(Int32(CT_DIV.rawValue), a.handle, b.handle), "div_") }
    public static func += (a: Tensor, s: Double) { checkStatus(ct_binary_scalar_(Int32(CT_ADD.rawValue), a.handle, s), "add_") }
    public static func -= (a: Tensor, s: Double) { checkStatus(ct_binary_scalar_(Int32(CT_SUB.rawValue), a.handle, s), "sub_") }
    public static func *= (a: Tensor, s: Double) { checkStatus(ct_binary_scalar_(Int32(CT_MUL.rawValue), a.handle, s), "mul_") }
    public static func /= (a: Tensor, s: Double) { checkStatus(ct_binary_scalar_(Int32(CT_DIV.rawValue), a.handle, s), "div_") }

    public func add_(_ other: Tensor, alpha: Double = 1) { checkStatus(ct_add_scaled_(handle, other.handle, alpha), "add_") }
    public func addcmul_(_ a: Tensor, _ b: Tensor, value: Double = 1) { checkStatus(ct_addcmul_(handle, a.handle, b.handle, value), "addcmul_") }
    public func addcdiv_(_ a: Tensor, _ b: Tensor, value: Double = 1) { checkStatus(ct_addcdiv_(handle, a.handle, b.handle, value), "addcdiv_") }
    public func lerp_(_ end: Tensor, weight: Double) { checkStatus(ct_lerp_(handle, end.handle, weight), "lerp_") }
    public func copy_(_ source: Tensor) { checkStatus(ct_copy_(handle, source.handle), "copy_") }
    public func fill_(_ value: Double) { checkStatus(ct_fill_(handle, value), "fill_") }
    public func zero_() { checkStatus(ct_zero_(handle), "zero_") }
    public func clamp_(min: Double? = nil, max: Double? = nil) {
        checkStatus(ct_clamp_(handle, min ?? 0, max ?? 0, min == nil ? 0 : 1, max == nil ? 0 : 1), "clamp_")
    }

    // MARK: conversion

    public func to(_ dtype: DType) -> Tensor { to(dtype: dtype, device: device) }
    public func to(_ device: Device) -> Tensor { to(dtype: dtype, device: device) }
    public func to(dtype: DType, device: Device, copy: Bool = false) -> Tensor {
        Tensor(handle: check(ct_to(handle, dtype.rawValue, device.typeCode, device.index, 0, copy ? 1 : 0), "to"))
    }
    public func clone() -> Tensor { Tensor(handle: check(ct_clone(handle), "clone")) }
    /// A tensor sharing the data but cut from the autograd graph.
    public func detach() -> Tensor { Tensor(handle: check(ct_detach(handle), "detach")) }
    public func contiguous() -> Tensor { Tensor(handle: check(ct_contiguous(handle), "contiguous")) }
    /// A second Swift handle to the same tensor (same storage and autograd identity).
    public func alias() -> Tensor { Tensor(handle: check(ct_shallow_clone(handle), "alias")) }

    // MARK: views and joins

    public func reshape(_ shape: [Int]) -> Tensor {
        Tensor(handle: check(Tensor.withShape(shape) { ct_reshape(handle, $0, $1) }, "reshape"))
    }
    public func view(_ shape: [Int]) -> Tensor {
        Tensor(handle: check(Tensor.withShape(shape) { ct_view(handle, $0, $1) }, "view"))
    }
    public func permute(_ dims: [Int]) -> Tensor {
        Tensor(handle: check(Tensor.withShape(dims) { ct_permute(handle, $0, $1) }, "permute"))
    }
    public func transpose(_ dim0: Int, _ dim1: Int) -> Tensor {
        Tensor(handle: check(ct_transpose(handle, Int64(dim0), Int64(dim1)), "transpose"))
    }
    /// The transpose of a matrix (`.t()`, `.T` for 2-D).
    public var T: Tensor { transpose(0, 1) }
    public func expand(_ shape: [Int]) -> Tensor {
        Tensor(handle: check(Tensor.withShape(shape) { ct_expand(handle, $0, $1) }, "expand"))
    }
    public func expand(as other: Tensor) -> Tensor { expand(other.shape) }
    /// Removes the given size-1 dims, or every size-1 dim when none are given.
    public func squeeze(_ dims: Int...) -> Tensor {
        Tensor(handle: check(Tensor.withShape(dims) { ct_squeeze(handle, $0, $1) }, "squeeze"))
    }
    public func unsqueeze(_ dim: Int) -> Tensor { Tensor(handle: check(ct_unsqueeze(handle, Int64(dim)), "unsqueeze")) }
    public func flatten(from start: Int = 0, to end: Int = -1) -> Tensor {
        Tensor(handle: check(ct_flatten(handle, Int64(start), Int64(end)), "flatten"))
    }
    /// `t[start:end:step]` along `dim` (end nil = to the end).
    public func slice(dim: Int, start: Int = 0, end: Int? = nil, step: Int = 1) -> Tensor {
        Tensor(handle: check(ct_slice(handle, Int64(dim), Int64(start), Int64(end ?? Int(Int64.max)), Int64(step)), "slice"))
    }
    public func narrow(dim: Int, start: Int, length: Int) -> Tensor {
        Tensor(handle: check(ct_narrow(handle, Int64(dim), Int64(start), Int64(length)), "narrow"))
    }
    /// `t.select(dim, index)`: drops `dim`.
    public func select(dim: Int, index: Int) -> Tensor {
        Tensor(handle: check(ct_select(handle, Int64(dim), Int64(index)), "select"))
    }
    /// `t[i]` along the first dimension.
    public subscript(_ index: Int) -> Tensor { select(dim: 0, index: index) }
    public func indexSelect(dim: Int, index: Tensor) -> Tensor {
        Tensor(handle: check(ct_index_select(handle, Int64(dim), index.handle), "index_select"))
    }
    public func gather(dim: Int, index: Tensor) -> Tensor {
        Tensor(handle: check(ct_gather(handle, Int64(dim), index.handle), "gather"))
    }
    public func `repeat`(_ repeats: [Int]) -> Tensor {
        Tensor(handle: check(Tensor.withShape(repeats) { ct_repeat(handle, $0, $1) }, "repeat"))
    }
    public func repeatInterleave(_ repeats: Int, dim: Int) -> Tensor {
        Tensor(handle: check(ct_repeat_interleave(handle, Int64(repeats), Int64(dim)), "repeat_interleave"))
    }
    public func tril(_ diagonal: Int = 0) -> Tensor { Tensor(handle: check(ct_tril(handle, Int64(diagonal)), "tril")) }
    public func triu(_ diagonal: Int = 0) -> Tensor { Tensor(handle: check(ct_triu(handle, Int64(diagonal)), "triu")) }

    public static func cat(_ tensors: [Tensor], dim: Int = 0) -> Tensor {
        let handles: [ct_tensor?] = tensors.map { $0.handle }
        return Tensor(handle: check(ct_cat(handles, Int32(handles.count), Int64(dim)), "cat"))
    }
    public static func stack(_ tensors: [Tensor], dim: Int = 0) -> Tensor {
        let handles: [ct_tensor?] = tensors.map { $0.handle }
        return Tensor(handle: check(ct_stack(handles, Int32(handles.count), Int64(dim)), "stack"))
    }
    public func chunk(_ chunks: Int, dim: Int = 0) -> [Tensor] {
        var out = [ct_tensor?](repeating: nil, count: chunks)
        let n = ct_chunk(handle, Int64(chunks), Int64(dim), &out, Int32(chunks))
        checkStatus(n, "chunk")
        return out.prefix(Int(Swift.max(n, 0))).map { Tensor(handle: $0!) }
    }
    /// Splits into pieces of the given sizes along `dim` (`split_with_sizes`).
    public func split(sizes: [Int], dim: Int = 0) -> [Tensor] {
        var out = [ct_tensor?](repeating: nil, count: sizes.count)
        let n = Tensor.withShape(sizes) { ct_split(handle, $0, $1, Int64(dim), &out, Int32(sizes.count)) }
        checkStatus(n, "split")
        return out.prefix(Int(Swift.max(n, 0))).map { Tensor(handle: $0!) }
    }
    /// Splits into pieces of `size` along `dim` (the last one may be smaller).
    public func split(size: Int, dim: Int = 0) -> [Tensor] {
        let total = self.size(dim)
        return split(sizes: stride(from: 0, to: total, by: size).map { Swift.min(size, total - $0) }, dim: dim)
    }

    // MARK: reductions

    fileprivate func reduce(_ op: ct_reduce_op, _ dims: [Int], _ keepDim: Bool, _ name: StaticString) -> Tensor {
        Tensor(handle: check(Tensor.withShape(dims) { ct_reduce(Int32(op.rawValue), handle, $0, $1, keepDim ? 1 : 0) }, name))
    }

    /// Sum over `dims` (all when empty).
    public func sum(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_SUM, dims, keepDim, "sum") }
    public func sum(dim: Int, keepDim: Bool = false) -> Tensor { sum([dim], keepDim: keepDim) }
    public func mean(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_MEAN, dims, keepDim, "mean") }
    public func mean(dim: Int, keepDim: Bool = false) -> Tensor { mean([dim], keepDim: keepDim) }
    public func amax(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_AMAX, dims, keepDim, "amax") }
    public func amin(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_AMIN, dims, keepDim, "amin") }
    public func prod(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_PROD, dims, keepDim, "prod") }
    public func logsumexp(_ dims: [Int], keepDim: Bool = false) -> Tensor { reduce(CT_LOGSUMEXP, dims, keepDim, "logsumexp") }
    public func any(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_ANY, dims, keepDim, "any") }
    public func all(_ dims: [Int] = [], keepDim: Bool = false) -> Tensor { reduce(CT_ALL, dims, keepDim, "all") }
    /// Largest element of the whole tensor.
    public func max() -> Tensor { amax() }
    public func min() -> Tensor { amin() }

    /// Variance with Bessel's correction by default (`correction: 1`), as `torch.var`.
    public func variance(_ dims: [Int] = [], correction: Double = 1, keepDim: Bool = false) -> Tensor {
        Tensor(handle: check(Tensor.withShape(dims) { ct_var(handle, $0, $1, correction, keepDim ? 1 : 0, 0) }, "var"))
    }
    public func std(_ dims: [Int] = [], correction: Double = 1, keepDim: Bool = false) -> Tensor {
        Tensor(handle: check(Tensor.withShape(dims) { ct_var(handle, $0, $1, correction, keepDim ? 1 : 0, 1) }, "std"))
    }

    /// `torch.max(t, dim)`: values and their indices.
    public func max(dim: Int, keepDim: Bool = false) -> (values: Tensor, indices: Tensor) { extremum(dim, keepDim, min: false) }
    public func min(dim: Int, keepDim: Bool = false) -> (values: Tensor, indices: Tensor) { extremum(dim, keepDim, min: true) }
    private func extremum(_ dim: Int, _ keepDim: Bool, min: Bool) -> (values: Tensor, indices: Tensor) {
        var values: ct_tensor?, indices: ct_tensor?
        let status = ct_max_dim(handle, Int64(dim), keepDim ? 1 : 0, min ? 1 : 0, &values, &indices)
        checkStatus(status, min ? "min" : "max")
        return (Tensor(handle: values!), Tensor(handle: indices!))
    }

    /// Index of the largest element (flattened when `dim` is nil).
    public func argmax(dim: Int? = nil, keepDim: Bool = false) -> Tensor {
        Tensor(handle: check(ct_argmax(handle, Int64(dim ?? 0), dim == nil ? 0 : 1, keepDim ? 1 : 0, 0), "argmax"))
    }
    public func argmin(dim: Int? = nil, keepDim: Bool = false) -> Tensor {
        Tensor(handle: check(ct_argmax(handle, Int64(dim ?? 0), dim == nil ? 0 : 1, keepDim ? 1 : 0, 1), "argmin"))
    }

    /// p-norm over `dims` (all when empty), as `torch.norm`.
    public func norm(p: Double = 2, _ dims: [Int] = [], keepDim: Bool = false) -> Tensor {
        Tensor(handle: check(Tensor.withShape(dims) { ct_norm(handle, p, $0, $1, keepDim ? 1 : 0) }, "norm"))
    }
    public func cumsum(dim: Int) -> Tensor { Tensor(handle: check(ct_cumsum(handle, Int64(dim)), "cumsum")) }

    // MARK: linear algebra

    public func matmul(_ other: Tensor) -> Tensor {
        let output = Tensor(handle: check(ct_matmul(handle, other.handle), "matmul"))
        FLOPCounter.record(2 * Double(output.elementCount) * Double(shape.last ?? 1), operands: [self, other])
        return output
    }
    public func bmm(_ other: Tensor) -> Tensor { Tensor(handle: check(ct_bmm(handle, other.handle), "bmm")) }
    /// `beta * self + alpha * (a @ b)` over batches.
    public func baddbmm(_ a: Tensor, _ b: Tensor, beta: Double = 1, alpha: Double = 1) -> Tensor {
        Tensor(handle: check(ct_baddbmm(handle, a.handle, b.handle, beta, alpha), "baddbmm"))
    }
}
