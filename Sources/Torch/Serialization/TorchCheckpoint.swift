import Foundation

/// Reading files written by `torch.save` (the zip format PyTorch has used since 1.6):
///
///     <archive>/data.pkl      the pickled object; tensors refer to storages by persistent id
///     <archive>/data/<key>    one record per storage: raw little-endian elements
///     <archive>/byteorder     "little" (absent in old files, which were little-endian)
///     <archive>/version, ...  ignored
///
/// `<archive>` is the file's stem at save time (`archive`, `model`, ...), so it is found, not assumed. The pickle is
/// decoded by `PickleMachine`, which only knows the handful of globals state dicts use and never executes anything.
/// Tensors whose layout is contiguous are zero-copy views of the memory-mapped file.
public enum TorchCheckpoint {
    /// The whole pickled object.
    public static func load(url: URL) throws -> PickleValue {
        let path = url.path
        let file = try MappedFile(path: path)
        try rejectLegacyFormat(file)
        let archive = try ZipArchive(file: file)
        let prefix = try archivePrefix(archive, path: path)
        try checkByteOrder(archive, prefix: prefix, path: path)

        guard let pickle = try archive.contents(of: prefix + "data.pkl") else {
            throw SerializationError.invalidCheckpoint(path: path, reason: "no \(prefix)data.pkl record")
        }
        var machine = PickleMachine(bytes: pickle.withUnsafeBytes { Array($0) }, path: path) { key, dtype, count in
            let record = prefix + "data/" + key
            guard let bytes = try archive.contents(of: record) else {
                throw SerializationError.missingStorageRecord(path: path, key: key, record: record)
            }
            // Floor division: a storage's byte size need not be a multiple of the element size (torch rounds down).
            guard bytes.count / dtype.itemSize == count else {
                throw SerializationError.invalidCheckpoint(
                    path: path,
                    reason: "storage record '\(excerpt(record, limit: 200))' has \(bytes.count) bytes, "
                        + "not \(count) \(dtype) elements")
            }
            return bytes
        }
        return try machine.run()
    }

    /// The flat name-to-tensor map of a state dict: the top-level dict, or its `state_dict` entry when it has one
    /// (as in `torch.save({"state_dict": model.state_dict(), ...})`).
    public static func loadStateDict(url: URL) throws -> [String: TensorData] {
        let root = try load(url: url)
        if let nested = root["state_dict"], case .dict = nested {
            return try tensorDictionary(nested, at: ["state_dict"], path: url.path)
        }
        return try tensorDictionary(root, at: [], path: url.path)
    }

    /// The name-to-tensor map found by following `keys` from the top-level dict, e.g. `["model"]` for
    /// `torch.save({"model": model.state_dict(), "epoch": 3})`.
    public static func loadTensors(url: URL, at keys: [String]) throws -> [String: TensorData] {
        var value = try load(url: url)
        for (depth, key) in keys.enumerated() {
            guard let next = value[key] else {
                throw SerializationError.invalidCheckpoint(
                    path: url.path, reason: "\(describe(Array(keys[..<depth]))) has no entry '\(excerpt(key))'")
            }
            value = next
        }
        return try tensorDictionary(value, at: keys, path: url.path)
    }

    /// Every entry of the dict `value` must map a string to a tensor.
    private static func tensorDictionary(_ value: PickleValue, at keys: [String], path: String) throws
        -> [String: TensorData]
    {
        guard case .dict(let entries) = value else {
            throw SerializationError.invalidCheckpoint(
                path: path, reason: "\(describe(keys)) is of type \(value.kindName), not a dict of tensors")
        }
        var tensors: [String: TensorData] = [:]
        for (key, entry) in entries {
            guard case .string(let name) = key else {
                throw SerializationError.invalidCheckpoint(
                    path: path, reason: "\(describe(keys)) has a key of type \(key.kindName), not a string")
            }
            guard case .tensor(let tensor) = entry else {
                throw SerializationError.invalidCheckpoint(
                    path: path,
                    reason: "\(describe(keys)) maps '\(excerpt(name, limit: 200))' to type \(entry.kindName), "
                        + "not a tensor")
            }
            tensors[name] = tensor
        }
        return tensors
    }

    /// "the top-level object" or "the value at ['model']['state_dict']", for messages.
    private static func describe(_ keys: [String]) -> String {
        keys.isEmpty ? "the top-level object" : "the value at " + keys.map { "['\($0)']" }.joined()
    }

    /// Before 1.6, torch.save wrote a bare pickle stream (it starts with the PROTO opcode, not a zip signature).
    private static func rejectLegacyFormat(_ file: MappedFile) throws {
        if file.bytes.first == 0x80 {
            throw SerializationError.invalidCheckpoint(
                path: file.path,
                reason: "legacy (pre-1.6) torch.save format is not supported; re-save it with a newer PyTorch")
        }
    }

    /// The `<archive>/` folder that holds `data.pkl`.
    private static func archivePrefix(_ archive: ZipArchive, path: String) throws -> String {
        let candidates = archive.names.filter { name in
            name.hasSuffix("/data.pkl") && !name.dropLast("/data.pkl".count).contains("/")
        }
        guard candidates.count == 1, let pickle = candidates.first else {
            let reason =
                candidates.isEmpty
                ? "no <archive>/data.pkl record" : "several data.pkl records: \(candidates.joined(separator: ", "))"
            throw SerializationError.invalidCheckpoint(path: path, reason: reason)
        }
        return String(pickle.dropLast("data.pkl".count))
    }

    /// Storage records hold raw elements in the byte order of the machine that saved them.
    private static func checkByteOrder(_ archive: ZipArchive, prefix: String, path: String) throws {
        guard let record = try archive.contents(of: prefix + "byteorder") else { return }
        let order = record.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard order == "little" else {
            throw SerializationError.invalidCheckpoint(
                path: path, reason: "byte order is '\(order)'; only little-endian checkpoints are supported")
        }
    }
}
