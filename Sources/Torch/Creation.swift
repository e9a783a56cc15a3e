import CTorch

extension Tensor {
    static func withShape<R>(_ shape: [Int], _ body: (UnsafePointer<Int64>?, Int32) -> R) -> R {
        shape.map(Int64.init).withUnsafeBufferPointer { body($0.baseAddress, Int32(shape.count)) }
    }

    public static func zeros(_ shape: [Int], dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        full(shape, 0, dtype: dtype, device: device)
    }

    public static func ones(_ shape: [Int], dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        full(shape, 1, dtype: dtype, device: device)
    }

    public static func full(_ shape: [Int], _ value: Double, dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(withShape(shape) { ct_full($0, $1, value, dtype.rawValue, device.typeCode, device.index) }, "full"))
    }

    public static func empty(_ shape: [Int], dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(withShape(shape) { ct_empty($0, $1, dtype.rawValue, device.typeCode, device.index) }, "empty"))
    }

    /// `torch.arange(start, end, step)`; int64 unless a dtype is given, as in Python for integer arguments.
    public static func arange(_ start: Double, _ end: Double, step: Double = 1, dtype: DType = .int64, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(ct_arange(start, end, step, dtype.rawValue, device.typeCode, device.index), "arange"))
    }

    /// `torch.arange(end)`.
    public static func arange(_ end: Double, dtype: DType = .int64, device: Device = .cpu) -> Tensor {
        arange(0, end, dtype: dtype, device: device)
    }

    public static func linspace(_ start: Double, _ end: Double, count: Int, dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(ct_linspace(start, end, Int64(count), dtype.rawValue, device.typeCode, device.index), "linspace"))
    }

    public func zerosLike() -> Tensor { fullLike(0) }
    public func onesLike() -> Tensor { fullLike(1) }
    public func fullLike(_ value: Double) -> Tensor { Tensor(handle: check(ct_full_like(handle, value), "full_like")) }

    /// Standard normal samples, drawn as `torch.randn(shape, generator=g)` draws them (same values for the same seed).
    public static func randn(_ shape: [Int], dtype: DType = .float32, generator: Generator? = nil, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(withShape(shape) {
            ct_randn($0, $1, dtype.rawValue, generator?.handle, device.typeCode, device.index)
        }, "randn"))
    }

    /// Uniform samples in [0, 1), as `torch.rand`.
    public static func rand(_ shape: [Int], dtype: DType = .float32, generator: Generator? = nil, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(withShape(shape) {
            ct_rand($0, $1, dtype.rawValue, generator?.handle, device.typeCode, device.index)
        }, "rand"))
    }

    /// Integers in [low, high), int64, as `torch.randint`.
    public static func randint(_ low: Int, _ high: Int, _ shape: [Int], generator: Generator? = nil, device: Device = .cpu) -> Tensor {
        Tensor(handle: check(withShape(shape) {
            ct_randint(Int64(low), Int64(high), $0, $1, generator?.handle, device.typeCode, device.index)
        }, "randint"))
    }

    /// A random permutation of 0..<n (int64), as `torch.randperm`.
    public static func randperm(_ n: Int, generator: Generator? = nil) -> Tensor {
        Tensor(handle: check(ct_randperm(Int64(n), generator?.handle), "randperm"))
    }

    /// Fills in place with normal samples (`Tensor.normal_`).
    public func normal_(mean: Double = 0, std: Double = 1, generator: Generator? = nil) {
        checkStatus(ct_normal_(handle, mean, std, generator?.handle), "normal_")
    }

    /// Fills in place with uniform samples in [from, to) (`Tensor.uniform_`).
    public func uniform_(from: Double = 0, to: Double = 1, generator: Generator? = nil) {
        checkStatus(ct_uniform_(handle, from, to, generator?.handle), "uniform_")
    }
}
