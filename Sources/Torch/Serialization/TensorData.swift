import Foundation

/// The bytes of one tensor as a weight file stores them: a dtype, a shape, and `elementCount * dtype.itemSize`
/// contiguous row-major (C-order) little-endian bytes.
///
/// The bytes are either owned or a range of a memory-mapped file (zero-copy loading). Views of a mapping are not
/// necessarily aligned to the element size (safetensors does not align tensors), so read them with
/// `loadUnaligned` or copy them, as `elements(as:)` does.
public struct TensorData: Sendable, Equatable {
    public let dtype: DType
    public let shape: [Int]
    let storage: ByteStorage

    /// Wraps `bytes`; throws unless it holds exactly `product(shape) * dtype.itemSize` bytes.
    public init(dtype: DType, shape: [Int], bytes: Data) throws {
        guard let expected = checkedByteCount(shape, dtype: dtype) else {
            throw SerializationError.invalidTensorData(
                reason: "shape \(excerpt(shape: shape)) is negative or too large")
        }
        guard bytes.count == expected else {
            throw SerializationError.invalidTensorData(
                reason: "\(dtype) tensor of shape \(excerpt(shape: shape)) needs \(expected) bytes, got \(bytes.count)")
        }
        self.init(dtype: dtype, shape: shape, storage: .owned(bytes))
    }

    public init(dtype: DType, shape: [Int], bytes: [UInt8]) throws {
        try self.init(dtype: dtype, shape: shape, bytes: Data(bytes))
    }

    /// For readers that have already validated that the storage holds exactly the tensor's bytes.
    init(dtype: DType, shape: [Int], storage: ByteStorage) {
        self.dtype = dtype
        self.shape = shape
        self.storage = storage
    }

    /// The number of elements: the product of `shape` (1 for a scalar, whose shape is `[]`).
    public var elementCount: Int { shape.reduce(1, *) }

    public var byteCount: Int { storage.count }

    /// True when the bytes are a view of a memory-mapped file rather than a copy.
    public var isMemoryMapped: Bool {
        if case .mapped = storage { true } else { false }
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes(body)
    }

    /// The elements decoded as `T`, in row-major order. `T` must have the dtype's size (e.g. `Float` for float32,
    /// `Int64` for int64, `UInt16` for the raw bits of float16/bfloat16); a mismatch is a programming error.
    public func elements<T: BitwiseCopyable>(as type: T.Type) -> [T] {
        precondition(MemoryLayout<T>.size == dtype.itemSize, "\(T.self) does not match \(dtype)")
        return withUnsafeBytes { raw in
            (0..<elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * dtype.itemSize, as: T.self) }
        }
    }

    /// An owned copy of the bytes.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    public static func == (lhs: TensorData, rhs: TensorData) -> Bool {
        guard lhs.dtype == rhs.dtype, lhs.shape == rhs.shape, lhs.byteCount == rhs.byteCount else { return false }
        return lhs.withUnsafeBytes { left in
            rhs.withUnsafeBytes { right in
                // memcmp, not elementsEqual: comparing gigabytes byte by byte in Swift is far slower.
                guard let leftBase = left.baseAddress, let rightBase = right.baseAddress else { return true }  // empty
                return memcmp(leftBase, rightBase, left.count) == 0
            }
        }
    }
}

/// Bytes that are either owned or a range of a memory-mapped file.
enum ByteStorage: Sendable {
    case owned(Data)
    /// A byte range of a mapping; holding the `MappedFile` keeps the mapping alive.
    case mapped(MappedFile, Range<Int>)

    var count: Int {
        switch self {
        case .owned(let data): data.count
        case .mapped(_, let range): range.count
        }
    }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch self {
        case .owned(let data):
            return try data.withUnsafeBytes(body)
        case .mapped(let file, let range):
            // An empty range of an empty (unmapped) file has no base address; slicing it is still valid.
            return try body(UnsafeRawBufferPointer(rebasing: file.bytes[range]))
        }
    }

    /// Once the bytes have been copied out: gives a mapping's whole pages in this range back to the kernel
    /// (`MADV_DONTNEED`; they fault in again from the file if read later), so that a loaded checkpoint does not stay
    /// in the resident set beside its converted copy. Nothing for owned bytes.
    func releasePages() {
        guard case .mapped(let file, let range) = self, let base = file.bytes.baseAddress, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: base) + range.lowerBound + page - 1) / page * page
        let end = (Int(bitPattern: base) + range.upperBound) / page * page
        guard end > start, let address = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(address, end - start, MADV_DONTNEED)
    }

    /// The bytes at `range`, counted from the start of this storage; a view for mappings, a copy for owned bytes
    /// (a copy keeps `Data`'s slice indices from leaking out). The caller checks that `range` is in bounds.
    func slice(_ range: Range<Int>) -> ByteStorage {
        switch self {
        case .owned(let data):
            .owned(data.withUnsafeBytes { Data(UnsafeRawBufferPointer(rebasing: $0[range])) })
        case .mapped(let file, let whole):
            .mapped(file, (whole.lowerBound + range.lowerBound)..<(whole.lowerBound + range.upperBound))
        }
    }
}

/// The product of `shape`, or nil when a dimension is negative or the product overflows. Weight files are untrusted
/// input, so shape arithmetic must not trap.
func checkedElementCount(_ shape: [Int]) -> Int? {
    var count = 1
    for dimension in shape {
        guard dimension >= 0 else { return nil }
        let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
        guard !overflow else { return nil }
        count = product
    }
    return count
}

/// `checkedElementCount(_:) * itemSize`, or nil on a negative dimension or overflow.
func checkedByteCount(_ shape: [Int], dtype: DType) -> Int? {
    guard let count = checkedElementCount(shape) else { return nil }
    let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.itemSize)
    return overflow ? nil : bytes
}
