import Foundation

// The bridge between weight files (TensorData, libtorch-free) and tensors.

extension Tensor {
    /// A CPU tensor holding a copy of the bytes.
    public convenience init(_ data: TensorData) throws {
        self.init(handle: try data.withUnsafeBytes { try Tensor.copyHandle(bytes: $0, shape: data.shape, dtype: data.dtype) })
        data.storage.releasePages()  // the copy is ours now: the file's pages need not stay resident
    }

    /// The tensor's contiguous bytes (copied to the CPU), ready for a weight file.
    public func tensorData() -> TensorData {
        do {
            return try TensorData(dtype: dtype, shape: shape, bytes: bytes())
        } catch {
            trap("tensor_data", message: "\(error)")  // unreachable: bytes() always fills the shape
        }
    }

    /// Every tensor of a safetensors file, copied into memory.
    public static func load(safetensors url: URL) throws -> [String: Tensor] {
        let file = try SafeTensorsFile(url: url)
        var out: [String: Tensor] = [:]
        for name in file.names { out[name] = try Tensor(file.tensorData(name)) }
        return out
    }

    /// Writes tensors to a safetensors file (atomically: a temporary file, then a rename).
    public static func save(_ tensors: [String: Tensor], metadata: [String: String]? = nil, to url: URL) throws {
        let entries = tensors.keys.sorted().map { (name: $0, data: tensors[$0]!.tensorData()) }
        try SafeTensors.write(entries, metadata: metadata, to: url)
    }
}

extension AdamW {
    /// Saves the optimizer state (moments, step, hyper-parameters) as a safetensors file.
    public func save(to url: URL) throws {
        let (tensors, metadata) = state()
        try Tensor.save(tensors, metadata: metadata, to: url)
    }

    /// Restores a state written by `save(to:)`.
    public func load(from url: URL) throws {
        let file = try SafeTensorsFile(url: url)
        var tensors: [String: Tensor] = [:]
        for name in file.names { tensors[name] = try Tensor(file.tensorData(name)) }
        try load(state: tensors, metadata: file.metadata)
    }
}
