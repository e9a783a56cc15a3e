/// Everything that can go wrong while reading or writing weight files (safetensors, `torch.save` archives).
///
/// Each case renders as one line that names the file (and the tensor or record where there is one), because these
/// messages end up in front of someone who has to find out which of several checkpoints is broken and why.
public enum SerializationError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened, mapped, or written.
    case io(path: String, reason: String)
    /// A safetensors file is malformed as a whole (length prefix, header JSON, data-section coverage).
    case invalidSafeTensors(path: String, reason: String)
    /// One tensor entry of a safetensors header is malformed.
    case invalidTensorEntry(path: String, name: String, reason: String)
    /// A file was asked for a tensor it does not contain.
    case tensorNotFound(name: String, path: String)
    /// Bytes handed to `TensorData` do not fit its dtype and shape.
    case invalidTensorData(reason: String)
    /// A `torch.save` archive is malformed: zip structure, byte order, pickle stream, tensor views.
    case invalidCheckpoint(path: String, reason: String)
    /// The pickle stream names a storage whose `data/<key>` record is absent from the archive.
    case missingStorageRecord(path: String, key: String, record: String)
    /// The pickle stream uses an opcode this reader does not implement.
    case unsupportedPickleOpcode(path: String, opcode: UInt8, offset: Int)
    /// The pickle stream names a global (a Python callable or class) outside the allow list. Globals are only ever
    /// looked up in a closed table, so this is reported, never imported or called.
    case disallowedGlobal(path: String, name: String)

    public var description: String {
        switch self {
        case .io(let path, let reason):
            "cannot access \(path): \(reason)"
        case .invalidSafeTensors(let path, let reason):
            "invalid safetensors file \(path): \(reason)"
        case .invalidTensorEntry(let path, let name, let reason):
            "invalid safetensors file \(path): tensor '\(excerpt(name, limit: 200))': \(reason)"
        case .tensorNotFound(let name, let path):
            "no tensor named '\(excerpt(name, limit: 200))' in \(path)"
        case .invalidTensorData(let reason):
            "invalid tensor data: \(reason)"
        case .invalidCheckpoint(let path, let reason):
            "invalid torch checkpoint \(path): \(reason)"
        case .missingStorageRecord(let path, let key, let record):
            "invalid torch checkpoint \(path): storage '\(excerpt(key))' has no record "
                + "'\(excerpt(record, limit: 200))' in the archive"
        case .unsupportedPickleOpcode(let path, let opcode, let offset):
            "invalid torch checkpoint \(path): unsupported pickle opcode 0x\(hex(opcode)) at offset \(offset) "
                + "of data.pkl"
        case .disallowedGlobal(let path, let name):
            "refusing to load torch checkpoint \(path): data.pkl refers to '\(excerpt(name, limit: 200))', "
                + "which is not an allowed global"
        }
    }
}

private func hex(_ byte: UInt8) -> String {
    let digits = String(byte, radix: 16)
    return digits.count == 1 ? "0" + digits : digits
}
