import Foundation
import Torch

/// Named tensors a model can be loaded from: a safetensors file, a `torch.save` checkpoint, several shards, or
/// tensors in memory. Reading is lazy where the format allows (safetensors are memory-mapped).
public protocol WeightSource {
    /// Says where the weights come from, for error messages (a path, or a list of paths).
    var origin: String { get }
    var keys: [String] { get }
    func info(_ key: String) -> (dtype: DType, shape: [Int])?
    func tensor(_ key: String) throws -> Tensor
}

extension SafeTensorsFile: WeightSource {
    public var origin: String { url.path }
    public var keys: [String] { names }
    public func tensor(_ key: String) throws -> Tensor { try Tensor(tensorData(key)) }
}

/// Tensors already in memory (a decoded `.bin`/`.pth` checkpoint, or a model's own state dict).
public struct TensorDictionary: WeightSource {
    public let origin: String
    let tensors: [String: TensorData]

    public init(_ tensors: [String: TensorData], origin: String) {
        self.tensors = tensors
        self.origin = origin
    }

    public init(_ tensors: [String: Tensor], origin: String = "tensors in memory") {
        self.init(tensors.mapValues { $0.tensorData() }, origin: origin)
    }

    public var keys: [String] { tensors.keys.sorted() }
    public func info(_ key: String) -> (dtype: DType, shape: [Int])? { tensors[key].map { ($0.dtype, $0.shape) } }
    public func tensor(_ key: String) throws -> Tensor {
        guard let data = tensors[key] else { throw WeightLoadingError.missingKey(key, origin: origin) }
        return try Tensor(data)
    }
}

/// Several sources seen as one (sharded checkpoints); a key found in two of them is an error.
public struct CombinedWeights: WeightSource {
    let sources: [any WeightSource]
    let owner: [String: Int]

    public init(_ sources: [any WeightSource]) throws {
        var owner: [String: Int] = [:]
        for (i, source) in sources.enumerated() {
            for key in source.keys {
                if let first = owner[key] {
                    throw WeightLoadingError.duplicateKey(key, first: sources[first].origin, second: source.origin)
                }
                owner[key] = i
            }
        }
        self.sources = sources
        self.owner = owner
    }

    public var origin: String { sources.map(\.origin).joined(separator: ", ") }
    public var keys: [String] { owner.keys.sorted() }
    public func info(_ key: String) -> (dtype: DType, shape: [Int])? { owner[key].flatMap { sources[$0].info(key) } }
    public func tensor(_ key: String) throws -> Tensor {
        guard let i = owner[key] else { throw WeightLoadingError.missingKey(key, origin: origin) }
        return try sources[i].tensor(key)
    }
}

public enum Weights {
    /// Extensions read as PyTorch zip checkpoints.
    static let torchExtensions: Set<String> = ["bin", "pt", "pth", "ckpt"]

    /// Opens a weights file by its extension (`.safetensors`; `.bin`/`.pt`/`.pth`/`.ckpt` as `torch.save` zip
    /// files, taking the `state_dict` entry when there is one), or every `*.safetensors` in a folder.
    public static func open(_ url: URL) throws -> any WeightSource {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else {
            throw WeightLoadingError.noSuchFile(url.path)
        }
        if isFolder.boolValue {
            let files = try FileManager.default.contentsOfDirectory(at: url, includingPropertiesForKeys: nil)
                .filter { $0.pathExtension == "safetensors" }.sorted { $0.path < $1.path }
            guard !files.isEmpty else { throw WeightLoadingError.noWeightsInFolder(url.path) }
            return files.count == 1 ? try SafeTensorsFile(url: files[0]) : try CombinedWeights(files.map { try SafeTensorsFile(url: $0) })
        }
        if url.pathExtension == "safetensors" { return try SafeTensorsFile(url: url) }
        if torchExtensions.contains(url.pathExtension) {
            return TensorDictionary(try TorchCheckpoint.loadStateDict(url: url), origin: url.path)
        }
        throw WeightLoadingError.unknownFormat(url.path)
    }
}

/// How a tensor is reshaped on its way from one layout to another (`RenamedWeights`).
public enum WeightTransform: Sendable, Equatable {
    case none
    /// Part `index` of `count` equal parts along dim 0 (one of a fused q/k/v projection's).
    case chunk(index: Int, count: Int)
    /// A 2-D tensor transposed (a projection stored as `x @ W` rather than as a linear layer's `W x`).
    case transpose
    /// Trailing 1-sized dims dropped: a 1x1 convolution's [O, I, 1, 1] as a linear layer's [O, I].
    case squeeze

    /// The shape after the transform, nil when it does not apply to `shape`.
    public func shape(_ shape: [Int]) -> [Int]? {
        switch self {
        case .none: return shape
        case .chunk(let index, let count):
            guard let first = shape.first, count > 0, first % count == 0, index < count else { return nil }
            return [first / count] + shape.dropFirst()
        case .transpose: return shape.count == 2 ? [shape[1], shape[0]] : nil
        case .squeeze:
            var out = shape
            while out.count > 2, out.last == 1 { out.removeLast() }
            return out
        }
    }

    public func apply(_ tensor: Tensor) -> Tensor {
        switch self {
        case .none: return tensor
        case .chunk(let index, let count):
            let part = tensor.size(0) / count
            return tensor.narrow(dim: 0, start: index * part, length: part).contiguous()
        case .transpose: return tensor.transpose(0, 1).contiguous()
        case .squeeze: return tensor.reshape(shape(tensor.shape) ?? tensor.shape)
        }
    }
}

/// Another source's tensors under other names (`names[new] = old`), read from it on demand, each through its
/// transform: a checkpoint in one layout seen in another without copying the file. Keys of `base` not named are
/// not seen.
public struct RenamedWeights: WeightSource {
    public let base: any WeightSource
    let names: [String: (key: String, transform: WeightTransform)]

    public init(_ base: any WeightSource, names: [String: String]) {
        self.init(base, entries: names.mapValues { ($0, .none) })
    }

    public init(_ base: any WeightSource, entries: [String: (key: String, transform: WeightTransform)]) {
        self.base = base
        self.names = entries
    }

    public var origin: String { base.origin }
    public var keys: [String] { names.keys.sorted() }
    /// The base's key a name is read from, and how.
    public func entry(_ name: String) -> (key: String, transform: WeightTransform)? { names[name] }
    public func info(_ key: String) -> (dtype: DType, shape: [Int])? {
        guard let entry = names[key], let info = base.info(entry.key), let shape = entry.transform.shape(info.shape) else { return nil }
        return (info.dtype, shape)
    }
    public func tensor(_ key: String) throws -> Tensor {
        guard let entry = names[key] else { throw WeightLoadingError.missingKey(key, origin: origin) }
        return entry.transform.apply(try base.tensor(entry.key))
    }
}

/// Tensors made on demand, each announced by its dtype and shape: a model in another layout computed one tensor at
/// a time as a writer reaches it (`SafeTensors.write(entries:produce:)`), never all at once.
public struct LazyWeights: WeightSource {
    public struct Entry {
        public let dtype: DType
        public let shape: [Int]
        public let make: () throws -> Tensor
        public init(dtype: DType, shape: [Int], make: @escaping () throws -> Tensor) {
            (self.dtype, self.shape, self.make) = (dtype, shape, make)
        }
    }

    public let origin: String
    public var entries: [String: Entry]

    public init(_ entries: [String: Entry] = [:], origin: String) {
        self.entries = entries
        self.origin = origin
    }

    public var keys: [String] { entries.keys.sorted() }
    public func info(_ key: String) -> (dtype: DType, shape: [Int])? { entries[key].map { ($0.dtype, $0.shape) } }
    public func tensor(_ key: String) throws -> Tensor {
        guard let entry = entries[key] else { throw WeightLoadingError.missingKey(key, origin: origin) }
        return try entry.make()
    }
}
