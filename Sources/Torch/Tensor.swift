import CTorch
import Foundation

/// An n-dimensional array living in libtorch. The class owns one handle to an `at::Tensor` (shared, reference
/// counted storage, as in Python) and frees it when the Swift object goes away.
///
/// Failures of tensor arithmetic are programming errors, like an out-of-range array index: they stop the program with
/// the op's name and libtorch's message. Code that takes shapes or values from outside (a file, a user) checks them
/// first and throws, as `Module.load` and `Tensor(bytes:shape:dtype:)` do.
public final class Tensor: @unchecked Sendable {
    let handle: ct_tensor

    init(handle: ct_tensor) { self.handle = handle }
    deinit { ct_free(handle) }

    // MARK: metadata

    public var rank: Int { Int(ct_dim(handle)) }

    public var shape: [Int] {
        let n = rank
        if n <= 0 { return [] }
        var out = [Int64](repeating: 0, count: n)
        checkStatus(ct_shape(handle, &out), "shape")
        return out.map(Int.init)
    }

    public var strides: [Int] {
        var out = [Int64](repeating: 0, count: Swift.max(rank, 0))
        checkStatus(ct_strides(handle, &out), "strides")
        return out.map(Int.init)
    }

    public var elementCount: Int { Int(ct_numel(handle)) }

    public var dtype: DType {
        let code = ct_dtype(handle)
        guard let dtype = DType(rawValue: code) else { trap("dtype", message: "dtype not supported by the shim") }
        return dtype
    }

    public var device: Device {
        var type: Int32 = 0, index: Int32 = 0
        checkStatus(ct_device(handle, &type, &index), "device")
        return type == Int32(CT_CUDA) ? .cuda(Int(index)) : type == Int32(CT_META) ? .meta : .cpu
    }

    public var isContiguous: Bool { ct_is_contiguous(handle) == 1 }

    /// Size of one dimension; negative indices count from the end.
    public func size(_ dim: Int) -> Int {
        let s = shape
        return s[dim < 0 ? dim + s.count : dim]
    }

    // MARK: data in and out

    /// A tensor holding `values` (copied) with the given shape, on the CPU.
    public convenience init<T: TensorScalar>(_ values: [T], shape: [Int]) {
        precondition(
            values.count == shape.reduce(1, *),
            "Tensor: \(values.count) values do not fill shape \(shape)")
        let h = values.withUnsafeBytes { buffer in
            shape.map(Int64.init).withUnsafeBufferPointer {
                ct_from_data(buffer.baseAddress, $0.baseAddress, Int32(shape.count), T.dtype.rawValue)
            }
        }
        self.init(handle: check(h, "from_data"))
    }

    /// A one-dimensional tensor.
    public convenience init<T: TensorScalar>(_ values: [T]) { self.init(values, shape: [values.count]) }

    /// A zero-dimensional tensor.
    public convenience init<T: TensorScalar>(scalar: T) { self.init([scalar], shape: []) }

    /// A tensor from raw little-endian bytes (copied), e.g. a slice of a weight file.
    public convenience init(bytes: UnsafeRawBufferPointer, shape: [Int], dtype: DType) throws {
        self.init(handle: try Tensor.copyHandle(bytes: bytes, shape: shape, dtype: dtype))
    }

    static func copyHandle(bytes: UnsafeRawBufferPointer, shape: [Int], dtype: DType) throws -> ct_tensor {
        let expected = shape.reduce(1, *) * dtype.itemSize
        guard bytes.count == expected else {
            throw TorchError(op: "from_data", message: "\(bytes.count) bytes do not fill shape \(shape) of \(dtype) (\(expected) bytes)")
        }
        let h = shape.map(Int64.init).withUnsafeBufferPointer {
            ct_from_data(bytes.baseAddress, $0.baseAddress, Int32(shape.count), dtype.rawValue)
        }
        guard let h else { throw TorchError.last("from_data") }
        return h
    }

    /// The elements in row-major order, converted to `T`'s dtype (and copied to the CPU) when needed.
    public func toArray<T: TensorScalar>(_ type: T.Type = T.self) -> [T] {
        let source = dtype == T.dtype ? self : to(T.dtype)
        let count = elementCount
        var out = [T](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
        out.withUnsafeMutableBytes { buffer in
            checkStatus(ct_copy_to_host(source.handle, buffer.baseAddress, Int64(buffer.count)), "copy_to_host")
        }
        return out
    }

    /// The contiguous bytes of the tensor in its own dtype, on the CPU.
    public func bytes() -> [UInt8] {
        let count = elementCount * dtype.itemSize
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { buffer in
            checkStatus(ct_copy_to_host(handle, buffer.baseAddress, Int64(count)), "copy_to_host")
        }
        return out
    }

    /// The value of a one-element tensor.
    public func item() -> Double {
        let v = ct_item(handle)
        if ct_last_error() != nil { failed("item") }
        return v
    }

    public func item<T: TensorScalar>(_ type: T.Type) -> T { toArray(T.self)[0] }
}

/// Swift element types that map to a tensor dtype.
public protocol TensorScalar: Sendable {
    static var dtype: DType { get }
}
extension Float: TensorScalar { public static var dtype: DType { .float32 } }
extension Double: TensorScalar { public static var dtype: DType { .float64 } }
extension Int64: TensorScalar { public static var dtype: DType { .int64 } }
extension Int32: TensorScalar { public static var dtype: DType { .int32 } }
extension Int16: TensorScalar { public static var dtype: DType { .int16 } }
extension Int8: TensorScalar { public static var dtype: DType { .int8 } }
extension UInt8: TensorScalar { public static var dtype: DType { .uint8 } }
extension Bool: TensorScalar { public static var dtype: DType { .bool } }

extension Tensor: CustomStringConvertible {
    public var description: String {
        let header = "Tensor(shape: \(shape), dtype: \(dtype), device: \(device))"
        guard elementCount <= 16, elementCount > 0 else { return header }
        return header + " " + toArray(Double.self).map { String(format: "%.6g", $0) }.joined(separator: ", ")
    }
}
