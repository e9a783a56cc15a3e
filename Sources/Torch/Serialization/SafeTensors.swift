import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// The safetensors format (https://github.com/huggingface/safetensors):
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   a UTF-8 JSON object: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//             plus an optional "__metadata__": {string: string}; writers pad it with trailing spaces
//   rest      the data section; offsets are relative to its start
// Following the spec ("the byte buffer needs to be entirely indexed, and cannot contain holes") and the reference
// implementation, the tensors must tile the data section exactly: no overlaps, no gaps, no trailing bytes.

/// A safetensors file, memory-mapped and validated on open. Tensors are views of the mapping, read lazily.
public final class SafeTensorsFile: Sendable {
    public let url: URL
    /// Tensor names, sorted.
    public let names: [String]
    /// The string-to-string `__metadata__` map; empty when the file has none.
    public let metadata: [String: String]

    private struct Entry: Sendable {
        let dtype: DType
        let shape: [Int]
        /// Byte range within the file (not within the data section).
        let range: Range<Int>
    }

    private let file: MappedFile
    private let entries: [String: Entry]

    /// How many entries (tensors, plus `__metadata__`) a header may have. Parsing costs memory and time per entry
    /// (`inspect` took 4.1 GB and 17 s on a fuzzer's 68 MB header of a million tiny tensors; 100,000 take about
    /// 0.5 GB), so a header with more is refused before it is parsed, by a count that builds nothing. Real files
    /// hold a few thousand tensors; even a whole 671B mixture-of-experts checkpoint in one file would hold ~91,000.
    public static let maximumEntryCount = 100_000
    /// The largest header accepted, as in the reference implementation (100 MB).
    public static let maximumHeaderLength = 100_000_000

    public convenience init(url: URL) throws {
        try self.init(url: url, maximumEntryCount: Self.maximumEntryCount)
    }

    /// `maximumEntryCount` lowers the limit on a header's entries (tests use it to check the limit cheaply).
    public init(url: URL, maximumEntryCount: Int) throws {
        let path = url.path
        let file = try MappedFile(path: path)
        let header = try HeaderParser(path: path, bytes: file.bytes, maximumEntryCount: maximumEntryCount)
        self.url = url
        self.file = file
        self.metadata = header.metadata
        var entries: [String: Entry] = [:]
        for entry in header.tensors {
            entries[entry.name] = Entry(
                dtype: entry.dtype, shape: entry.shape,
                range: (header.dataStart + entry.begin)..<(header.dataStart + entry.end))
        }
        self.entries = entries
        self.names = entries.keys.sorted()
    }

    public func info(_ name: String) -> (dtype: DType, shape: [Int])? {
        entries[name].map { ($0.dtype, $0.shape) }
    }

    /// The tensor's bytes, as a zero-copy view of the mapping.
    public func tensorData(_ name: String) throws -> TensorData {
        guard let entry = entries[name] else { throw SerializationError.tensorNotFound(name: name, path: url.path) }
        return TensorData(dtype: entry.dtype, shape: entry.shape, storage: .mapped(file, entry.range))
    }

    /// Every tensor, keyed by name (all zero-copy views).
    public func allTensors() -> [String: TensorData] {
        entries.mapValues { TensorData(dtype: $0.dtype, shape: $0.shape, storage: .mapped(file, $0.range)) }
    }
}

/// Writing safetensors files.
public enum SafeTensors {
    /// Writes `tensors` (and `metadata`, as `__metadata__`) to `url`.
    ///
    /// The header's keys are sorted, it is padded with spaces to a multiple of 8 bytes (as the reference writer
    /// does), and tensors are laid out in sorted name order. The file is written next to `url` under a temporary
    /// name and renamed into place, so `url` never holds a half-written file.
    public static func write(
        _ tensors: [(name: String, data: TensorData)], metadata: [String: String]? = nil, to url: URL
    ) throws {
        let data = Dictionary(tensors.map { ($0.name, $0.data) }, uniquingKeysWith: { first, _ in first })
        try write(entries: tensors.map { (name: $0.name, dtype: $0.data.dtype, shape: $0.data.shape) }, metadata: metadata,
                  to: url) { data[$0]! }
    }

    /// Writes tensors given by name, dtype and shape, whose bytes `produce` makes one at a time when the file
    /// reaches them (so a model larger than memory can be written from lazily read or converted sources); each must
    /// have the dtype and shape announced. Laid out and written as `write(_:metadata:to:)` writes.
    public static func write(
        entries: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String]? = nil, to url: URL,
        produce: (String) throws -> TensorData
    ) throws {
        let path = url.path
        let sorted = entries.sorted { $0.name < $1.name }
        for (previous, next) in zip(sorted, sorted.dropFirst()) where previous.name == next.name {
            throw SerializationError.invalidSafeTensors(
                path: path, reason: "duplicate tensor name '\(excerpt(next.name, limit: 200))'")
        }
        if sorted.contains(where: { $0.name == metadataKey }) {
            throw SerializationError.invalidSafeTensors(path: path, reason: "'\(metadataKey)' is not a tensor name")
        }

        var header: [String: Any] = [:]
        if let metadata { header[metadataKey] = metadata }
        var offset = 0
        var sizes: [Int] = []
        for entry in sorted {
            let size = entry.shape.reduce(1, *) * entry.dtype.itemSize
            header[entry.name] = [
                "dtype": entry.dtype.safeTensorsName, "shape": entry.shape, "data_offsets": [offset, offset + size],
            ] as [String: Any]
            offset += size
            sizes.append(size)
        }
        var headerBytes = try JSONSerialization.data(
            withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes])
        headerBytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - headerBytes.count % 8) % 8))

        try AtomicFileWriter.replaceFile(at: url) { sink in
            try sink.append(littleEndian: UInt64(headerBytes.count))
            try headerBytes.withUnsafeBytes { try sink.append($0) }
            for (entry, size) in zip(sorted, sizes) {
                let data = try produce(entry.name)
                guard data.dtype == entry.dtype, data.shape == entry.shape, data.byteCount == size else {
                    throw SerializationError.invalidSafeTensors(
                        path: path,
                        reason: "'\(excerpt(entry.name, limit: 200))' was announced as \(entry.dtype) \(entry.shape) and came as \(data.dtype) \(data.shape)")
                }
                try data.withUnsafeBytes { try sink.append($0) }
            }
        }
    }
}

private let metadataKey = "__metadata__"

extension DType {
    /// The dtype's name in a safetensors header.
    var safeTensorsName: String {
        switch self {
        case .float64: "F64"
        case .float32: "F32"
        case .float16: "F16"
        case .bfloat16: "BF16"
        case .int64: "I64"
        case .int32: "I32"
        case .int16: "I16"
        case .int8: "I8"
        case .uint8: "U8"
        case .bool: "BOOL"
        }
    }

    init?(safeTensorsName: String) {
        guard let match = DType.allCases.first(where: { $0.safeTensorsName == safeTensorsName }) else { return nil }
        self = match
    }
}

/// Parses and validates the length prefix and JSON header against the file size.
private struct HeaderParser {
    struct Tensor {
        let name: String
        let dtype: DType
        let shape: [Int]
        /// Offsets within the data section.
        let begin: Int
        let end: Int
    }

    let path: String
    let dataStart: Int
    let metadata: [String: String]
    let tensors: [Tensor]

    init(path: String, bytes: UnsafeRawBufferPointer, maximumEntryCount: Int) throws {
        self.path = path
        func fail(_ reason: String) -> SerializationError { .invalidSafeTensors(path: path, reason: reason) }

        guard bytes.count >= 8 else {
            throw fail("truncated: \(bytes.count) bytes, too short for the 8-byte header length")
        }
        let headerLength = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        let available = bytes.count - 8
        guard headerLength <= UInt64(available) else {
            throw fail("header length \(headerLength) exceeds the \(available) bytes that follow it")
        }
        guard headerLength <= UInt64(SafeTensorsFile.maximumHeaderLength) else {
            throw fail(
                "header length \(headerLength) is over the limit of \(SafeTensorsFile.maximumHeaderLength) bytes")
        }
        dataStart = 8 + Int(headerLength)
        let dataLength = bytes.count - dataStart

        let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[8..<dataStart])
        let entryCount = Self.topLevelEntryCount(headerBytes, stopAfter: maximumEntryCount)
        guard entryCount <= maximumEntryCount else {
            throw fail(
                "header has more than \(maximumEntryCount) entries (tensors and __metadata__), the most accepted")
        }
        let json = Data(headerBytes)
        guard let parsed = try? JSONSerialization.jsonObject(with: json, options: [.fragmentsAllowed]) else {
            throw fail("header is not valid JSON")
        }
        guard let object = parsed as? [String: Any] else { throw fail("header is not a JSON object") }

        var metadata: [String: String] = [:]
        if let rawMetadata = object[metadataKey] {
            guard let strings = rawMetadata as? [String: String] else {
                throw fail("'\(metadataKey)' is not an object of strings")
            }
            metadata = strings
        }
        self.metadata = metadata

        // Sorted, so that a file with several problems always reports the same one.
        var tensors: [Tensor] = []
        for name in object.keys.sorted() where name != metadataKey {
            tensors.append(try Self.parseEntry(name: name, value: object[name], dataLength: dataLength, path: path))
        }
        try Self.checkTiling(tensors, dataLength: dataLength, fail: fail)
        self.tensors = tensors
    }

    private static func parseEntry(name: String, value: Any?, dataLength: Int, path: String) throws -> Tensor {
        func fail(_ reason: String) -> SerializationError {
            .invalidTensorEntry(path: path, name: name, reason: reason)
        }
        guard let fields = value as? [String: Any] else { throw fail("entry is not a JSON object") }
        for key in ["dtype", "shape", "data_offsets"] where fields[key] == nil {
            throw fail("missing '\(key)'")
        }
        guard let dtypeName = fields["dtype"] as? String else { throw fail("'dtype' is not a string") }
        guard let dtype = DType(safeTensorsName: dtypeName) else { throw fail("unknown dtype '\(excerpt(dtypeName))'") }
        guard let shape = integers(fields["shape"]) else { throw fail("'shape' is not a list of integers") }
        guard shape.allSatisfy({ $0 >= 0 }) else {
            throw fail("shape \(excerpt(shape: shape)) has a negative dimension")
        }
        guard let offsets = integers(fields["data_offsets"]), offsets.count == 2 else {
            throw fail("'data_offsets' is not a list of two integers")
        }
        let (begin, end) = (offsets[0], offsets[1])
        guard begin >= 0, begin <= end else { throw fail("data_offsets \(offsets) do not form a range") }
        guard end <= dataLength else {
            throw fail("data_offsets \(offsets) extend beyond the \(dataLength)-byte data section")
        }
        guard let expected = checkedByteCount(shape, dtype: dtype) else {
            throw fail("shape \(excerpt(shape: shape)) is too large")
        }
        guard end - begin == expected else {
            throw fail(
                "\(dtypeName) shape \(excerpt(shape: shape)) needs \(expected) bytes but data_offsets \(offsets) "
                    + "span \(end - begin)")
        }
        return Tensor(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }

    /// The number of keys of the top-level JSON object (its colons outside strings and nested values), counted
    /// without building anything; the count stops at `stopAfter + 1`. Malformed JSON gives some count and is
    /// reported by the parser afterwards.
    private static func topLevelEntryCount(_ json: UnsafeRawBufferPointer, stopAfter limit: Int) -> Int {
        var count = 0
        var depth = 0
        var inString = false
        var escaped = false
        for byte in json {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            case UInt8(ascii: ":") where depth == 1:
                count += 1
                if count > limit { return count }
            default: break
            }
        }
        return count
    }

    /// The tensors must cover the data section exactly once: sorted by offset, each begins where the previous ended.
    private static func checkTiling(
        _ tensors: [Tensor], dataLength: Int, fail: (String) -> SerializationError
    ) throws {
        var covered = 0
        var previous: Tensor?
        for tensor in tensors.sorted(by: { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }) {
            if tensor.begin < covered, let previous {
                throw fail(
                    "tensors '\(excerpt(previous.name, limit: 200))' [\(previous.begin), \(previous.end)) and "
                        + "'\(excerpt(tensor.name, limit: 200))' [\(tensor.begin), \(tensor.end)) overlap")
            }
            if tensor.begin > covered {
                throw fail("bytes [\(covered), \(tensor.begin)) of the data section belong to no tensor")
            }
            covered = tensor.end
            previous = tensor
        }
        if covered < dataLength {
            throw fail("bytes [\(covered), \(dataLength)) of the data section belong to no tensor")
        }
    }

    /// A JSON array of integers, or nil. (JSONSerialization hands numbers back as NSNumber; `as? Int` accepts only
    /// those that are exactly integers.)
    private static func integers(_ value: Any?) -> [Int]? {
        guard let array = value as? [Any] else { return nil }
        var result: [Int] = []
        for element in array {
            guard let integer = element as? Int else { return nil }
            result.append(integer)
        }
        return result
    }
}

/// Writes a file under a temporary name in the destination's directory and renames it into place on success, so
/// that readers see either the old file or the complete new one. On failure the temporary file is removed.
struct AtomicFileWriter {
    private let descriptor: Int32
    private let path: String

    static func replaceFile(at url: URL, _ body: (AtomicFileWriter) throws -> Void) throws {
        let path = url.path
        let directory = url.deletingLastPathComponent().path
        let temporary = directory + "/." + url.lastPathComponent + "." + UUID().uuidString + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw SerializationError.io(path: path, reason: lastErrorMessage()) }
        var closed = false
        do {
            try body(AtomicFileWriter(descriptor: descriptor, path: path))
            // fsync before rename: otherwise a crash can leave the new name pointing at a not-yet-written file.
            guard fsync(descriptor) == 0 else { throw SerializationError.io(path: path, reason: lastErrorMessage()) }
            closed = true
            guard close(descriptor) == 0 else { throw SerializationError.io(path: path, reason: lastErrorMessage()) }
        } catch {
            if !closed { close(descriptor) }
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let reason = lastErrorMessage()
            unlink(temporary)
            throw SerializationError.io(path: path, reason: reason)
        }
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var remaining = bytes
        while let base = remaining.baseAddress, !remaining.isEmpty {
            let written = write(descriptor, base, remaining.count)
            if written < 0 {
                if errno == EINTR { continue }
                throw SerializationError.io(path: path, reason: lastErrorMessage())
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }

    func append(littleEndian value: UInt64) throws {
        try withUnsafeBytes(of: value.littleEndian) { try append($0) }
    }
}
