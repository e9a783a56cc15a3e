import Foundation

/// Writing files that `torch.load` (also with `weights_only=True`) and `TorchCheckpoint.load` read: the zip format of
/// `torch.save` since PyTorch 1.6, for the plain values a state dict or a small record holds.
///
///     archive/data.pkl    the value, pickled with protocol 2 (torch.save's default); each tensor is
///                         `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, its
///                         storage a persistent id `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`
///     archive/byteorder   "little"
///     archive/data/<key>  one record per tensor: its contiguous little-endian elements
///     archive/version     "3"
///
/// Records are stored (not compressed) with their data aligned to 64 bytes, as torch writes them, and carry their
/// CRC-32 (torch's reader checks it). Values: None, bool, int, float, str, tuple, list, dict and tensors of the dtypes
/// `torch` has a storage class for; bytes are refused (protocol 2 has no opcode for them). The file is written under
/// a temporary name and renamed into place.
public enum TorchSave {
    /// Writes `value` to `url`; `archiveName` is the folder inside the zip (torch uses the file's stem; any name reads).
    public static func save(_ value: PickleValue, to url: URL, archiveName: String = "archive") throws {
        var writer = PickleWriter(path: url.path)
        try writer.write(value)
        var zip = StoredZipWriter()
        zip.add(archiveName + "/data.pkl", writer.output)
        zip.add(archiveName + "/byteorder", Array("little".utf8))
        for (key, data) in writer.storages { zip.add(archiveName + "/data/" + key, data.bytes) }
        zip.add(archiveName + "/version", Array("3\n".utf8))
        let bytes = zip.finish()
        try AtomicFileWriter.replaceFile(at: url) { sink in try bytes.withUnsafeBytes { try sink.append($0) } }
    }
}

/// Pickle protocol 2 of the values `TorchSave` writes; tensors go to `storages`, in order, keyed "0", "1", ...
private struct PickleWriter {
    let path: String
    var output: [UInt8] = [0x80, 2]  // PROTO 2
    var storages: [(key: String, data: TensorData)] = []

    init(path: String) { self.path = path }

    static let storageClasses: [DType: String] = [
        .float32: "FloatStorage", .float16: "HalfStorage", .bfloat16: "BFloat16Storage", .float64: "DoubleStorage",
        .int64: "LongStorage", .int32: "IntStorage", .int16: "ShortStorage", .int8: "CharStorage", .uint8: "ByteStorage",
        .bool: "BoolStorage",
    ]

    mutating func write(_ value: PickleValue) throws {
        try put(value)
        output.append(UInt8(ascii: "."))  // STOP
    }

    private mutating func op(_ character: Character) { output.append(character.asciiValue!) }

    private mutating func littleEndian<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { output += $0 }
    }

    private mutating func put(_ value: PickleValue) throws {
        switch value {
        case .none: op("N")
        case .bool(let flag): output.append(flag ? 0x88 : 0x89)
        case .int(let number): integer(number)
        case .float(let number):
            op("G")
            withUnsafeBytes(of: number.bitPattern.bigEndian) { output += $0 }  // the one big-endian field
        case .string(let text): string(text)
        case .bytes:
            throw SerializationError.invalidCheckpoint(path: path, reason: "bytes values cannot be written with pickle protocol 2")
        case .tuple(let items):
            if items.isEmpty { op(")") } else {
                op("(")
                for item in items { try put(item) }
                op("t")
            }
        case .list(let items):
            op("]")
            if !items.isEmpty {
                op("(")
                for item in items { try put(item) }
                op("e")  // APPENDS
            }
        case .dict(let entries):
            op("}")
            if !entries.isEmpty {
                op("(")
                for (key, item) in entries {
                    try put(key)
                    try put(item)
                }
                op("u")  // SETITEMS
            }
        case .tensor(let data): try tensor(data)
        }
    }

    private mutating func integer(_ number: Int) {
        switch number {
        case 0...0xFF:
            op("K")
            output.append(UInt8(number))
        case 0...0xFFFF:
            op("M")
            littleEndian(UInt16(number))
        case Int(Int32.min)...Int(Int32.max):
            op("J")
            littleEndian(Int32(number))
        default:  // LONG1: the shortest two's-complement little-endian bytes
            var bytes = withUnsafeBytes(of: number.littleEndian) { Array($0) }
            while bytes.count > 1, (bytes[bytes.count - 1] == 0 && bytes[bytes.count - 2] & 0x80 == 0)
                || (bytes[bytes.count - 1] == 0xFF && bytes[bytes.count - 2] & 0x80 != 0) { bytes.removeLast() }
            output.append(0x8A)
            output.append(UInt8(bytes.count))
            output += bytes
        }
    }

    private mutating func string(_ text: String) {
        let utf8 = Array(text.utf8)
        op("X")  // BINUNICODE
        littleEndian(UInt32(utf8.count))
        output += utf8
    }

    private mutating func global(_ module: String, _ name: String) {
        op("c")
        output += Array("\(module)\n\(name)\n".utf8)
    }

    private mutating func tensor(_ data: TensorData) throws {
        guard let storageClass = Self.storageClasses[data.dtype] else {
            throw SerializationError.invalidCheckpoint(path: path, reason: "no torch storage class for \(data.dtype) tensors")
        }
        let key = String(storages.count)
        storages.append((key, data))
        global("torch._utils", "_rebuild_tensor_v2")
        op("(")
        // The persistent id of the storage.
        op("(")
        string("storage")
        global("torch", storageClass)
        string(key)
        string("cpu")
        integer(data.elementCount)
        op("t")
        op("Q")  // BINPERSID
        integer(0)  // storage offset
        try put(.tuple(data.shape.map(PickleValue.int)))
        var strides = [Int](repeating: 1, count: data.shape.count)
        for axis in strides.indices.dropLast().reversed() { strides[axis] = strides[axis + 1] * data.shape[axis + 1] }
        try put(.tuple(strides.map(PickleValue.int)))
        output.append(0x89)  // requires_grad False
        global("collections", "OrderedDict")
        op(")")
        op("R")  // backward hooks: OrderedDict()
        op("t")
        op("R")
    }
}

/// A zip archive of stored entries, built in memory (what `TorchSave` needs: small files).
private struct StoredZipWriter {
    private var bytes: [UInt8] = []
    private var directory: [UInt8] = []
    private var count = 0

    private static func append<T: FixedWidthInteger>(_ value: T, to buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { buffer += $0 }
    }

    mutating func add(_ name: String, _ data: [UInt8]) {
        let nameBytes = Array(name.utf8)
        let offset = bytes.count
        // torch pads the local header with an extra field (id "FB") so that the data starts at a multiple of 64.
        let unpadded = offset + 30 + nameBytes.count + 4
        let padding = (64 - unpadded % 64) % 64
        let crc = crc32(data)
        func header(_ buffer: inout [UInt8], central: Bool) {
            Self.append(UInt32(central ? 0x0201_4b50 : 0x0403_4b50), to: &buffer)
            if central { Self.append(UInt16(20), to: &buffer) }  // version made by
            Self.append(UInt16(20), to: &buffer)  // version needed
            Self.append(UInt16(0), to: &buffer)  // flags
            Self.append(UInt16(0), to: &buffer)  // method: stored
            Self.append(UInt16(0), to: &buffer)  // time
            Self.append(UInt16(0x21), to: &buffer)  // date: 1980-01-01
            Self.append(crc, to: &buffer)
            Self.append(UInt32(data.count), to: &buffer)
            Self.append(UInt32(data.count), to: &buffer)
            Self.append(UInt16(nameBytes.count), to: &buffer)
            Self.append(UInt16(central ? 0 : 4 + padding), to: &buffer)  // extra field length
            if central {
                Self.append(UInt16(0), to: &buffer)  // comment
                Self.append(UInt16(0), to: &buffer)  // disk
                Self.append(UInt16(0), to: &buffer)  // internal attributes
                Self.append(UInt32(0), to: &buffer)  // external attributes
                Self.append(UInt32(offset), to: &buffer)
            }
            buffer += nameBytes
        }
        header(&bytes, central: false)
        Self.append(UInt16(0x4246), to: &bytes)  // "FB"
        Self.append(UInt16(padding), to: &bytes)
        bytes += [UInt8](repeating: 0, count: padding)
        bytes += data
        header(&directory, central: true)
        count += 1
    }

    mutating func finish() -> [UInt8] {
        let start = bytes.count
        var out = bytes + directory
        Self.append(UInt32(0x0605_4b50), to: &out)
        Self.append(UInt16(0), to: &out)  // this disk
        Self.append(UInt16(0), to: &out)  // directory's disk
        Self.append(UInt16(count), to: &out)
        Self.append(UInt16(count), to: &out)
        Self.append(UInt32(directory.count), to: &out)
        Self.append(UInt32(start), to: &out)
        Self.append(UInt16(0), to: &out)  // comment
        return out
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zip uses it).
private func crc32(_ data: [UInt8]) -> UInt32 {
    var table = [UInt32](repeating: 0, count: 256)
    for i in 0..<256 {
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        table[i] = c
    }
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in data { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
    return crc ^ 0xFFFF_FFFF
}
