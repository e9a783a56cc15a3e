import Foundation

// TensorBoard's event files, written and read without TensorFlow or a protobuf library: a file is a sequence of
// TFRecords (the length as a little-endian UInt64, its masked CRC-32C, the bytes, their masked CRC-32C), each record
// an `Event` protocol buffer (tensorflow/core/util/event.proto). Only the fields the trainer writes are encoded:
//
//   Event         { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary       { repeated Value value = 1; }
//   Summary.Value { string tag = 1; float simple_value = 2; Image image = 4; }
//   Summary.Image { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
//
// The reader skips any other field, so it also reads files TensorFlow or PyTorch wrote (their other summaries are
// left out of `TensorBoardEvent.values`).

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of TFRecords.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { n in
        (0..<8).reduce(UInt32(n)) { c, _ in c & 1 == 1 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
    }

    public static func checksum(_ data: Data) -> UInt32 {
        data.withUnsafeBytes { bytes in
            var crc = ~UInt32(0)
            table.withUnsafeBufferPointer { table in
                for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            }
            return ~crc
        }
    }

    /// The checksum as TFRecords store it: rotated right by 15 bits plus a constant, so that a CRC of data that holds
    /// CRCs stays well distributed.
    public static func masked(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }
}

/// TFRecord framing: `uint64 length, uint32 masked_crc32c(length), data, uint32 masked_crc32c(data)`, little-endian.
public enum TFRecord {
    public static func frame(_ record: Data) -> Data {
        var out = Data(capacity: record.count + 16)
        let length = littleEndian(UInt64(record.count))
        out.append(length)
        out.append(littleEndian(CRC32C.masked(CRC32C.checksum(length))))
        out.append(record)
        out.append(littleEndian(CRC32C.masked(CRC32C.checksum(record))))
        return out
    }

    /// The records of a file's bytes, both checksums of each verified. `truncatedTail`: what to do with an incomplete
    /// last record (a writer killed mid-write): `.fail`, or `.drop` it (the records before it are returned, and
    /// `validLength` says where it began). A checksum that does not match is always an error naming `source` and the
    /// byte offset.
    public static func records(in data: Data, source: String, truncatedTail: TruncatedTail = .fail) throws -> (records: [Data], validLength: Int) {
        let bytes = [UInt8](data)
        var records: [Data] = []
        var offset = 0
        func word<T: FixedWidthInteger>(_ type: T.Type, at position: Int) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[position + $1]) << (8 * $1) }
        }
        while offset < bytes.count {
            func incomplete() throws -> (records: [Data], validLength: Int) {
                if truncatedTail == .drop { return (records, offset) }
                throw TextCraftorError.invalidArgument("\(source): the record at byte \(offset) is cut short (\(bytes.count - offset) bytes left)")
            }
            guard bytes.count - offset >= 12 else { return try incomplete() }
            let length = word(UInt64.self, at: offset)
            guard CRC32C.masked(CRC32C.checksum(Data(bytes[offset..<offset + 8]))) == word(UInt32.self, at: offset + 8) else {
                throw TextCraftorError.invalidArgument("\(source): the length of the record at byte \(offset) fails its CRC-32C")
            }
            guard bytes.count - offset >= 16, length <= UInt64(bytes.count - offset - 16) else { return try incomplete() }
            let start = offset + 12, end = start + Int(length)
            let record = Data(bytes[start..<end])
            guard CRC32C.masked(CRC32C.checksum(record)) == word(UInt32.self, at: end) else {
                throw TextCraftorError.invalidArgument("\(source): the data of the record at byte \(offset) fails its CRC-32C")
            }
            records.append(record)
            offset = end + 4
        }
        return (records, offset)
    }

    public enum TruncatedTail: Sendable { case fail, drop }

    static func littleEndian<T: FixedWidthInteger>(_ value: T) -> Data {
        Data((0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) })
    }
}

/// An image summary: encoded image bytes (PNG here) and their size; colorspace 3 is RGB.
public struct TensorBoardImage: Equatable, Sendable {
    public var height: Int
    public var width: Int
    public var colorspace: Int
    public var encoded: Data

    public init(height: Int, width: Int, colorspace: Int = 3, encoded: Data) {
        self.height = height
        self.width = width
        self.colorspace = colorspace
        self.encoded = encoded
    }
}

/// One `Summary.Value`: a tag and a scalar (`simple_value`, a float32) or an image.
public struct TensorBoardValue: Equatable, Sendable {
    public enum Content: Equatable, Sendable {
        case scalar(Float)
        case image(TensorBoardImage)
    }

    public var tag: String
    public var content: Content

    public init(tag: String, scalar: Double) {
        self.tag = tag
        content = .scalar(Float(scalar))
    }

    public init(tag: String, image: TensorBoardImage) {
        self.tag = tag
        content = .image(image)
    }

    public var scalar: Float? { if case .scalar(let value) = content { value } else { nil } }
    public var image: TensorBoardImage? { if case .image(let image) = content { image } else { nil } }
}

/// One `Event`: the file's version (its first event) or a step's summary values.
public struct TensorBoardEvent: Equatable, Sendable {
    public var wallTime: Double
    public var step: Int64
    /// "brain.Event:2" in a file's first event; nil in the others.
    public var fileVersion: String?
    /// The summary's scalar and image values (other kinds of values are skipped when read).
    public var values: [TensorBoardValue]

    public init(wallTime: Double, step: Int64 = 0, fileVersion: String? = nil, values: [TensorBoardValue] = []) {
        self.wallTime = wallTime
        self.step = step
        self.fileVersion = fileVersion
        self.values = values
    }

    /// The protobuf bytes (proto3: a step of 0 is left out, as protobuf writes it).
    public func encoded() -> Data {
        var event = ProtobufWriter()
        event.double(1, wallTime)
        if step != 0 { event.varint(2, UInt64(bitPattern: step)) }
        if let fileVersion { event.bytes(3, Data(fileVersion.utf8)) }
        if !values.isEmpty {
            var summary = ProtobufWriter()
            for value in values {
                var entry = ProtobufWriter()
                entry.bytes(1, Data(value.tag.utf8))
                switch value.content {
                case .scalar(let number): entry.float(2, number)
                case .image(let image):
                    var body = ProtobufWriter()
                    body.varint(1, UInt64(image.height))
                    body.varint(2, UInt64(image.width))
                    body.varint(3, UInt64(image.colorspace))
                    body.bytes(4, image.encoded)
                    entry.bytes(4, body.data)
                }
                summary.bytes(1, entry.data)
            }
            event.bytes(5, summary.data)
        }
        return event.data
    }

    /// Decodes an `Event`; throws on bytes that are not a well-formed protobuf message.
    public init(decoding data: Data) throws {
        self.init(wallTime: 0)
        for field in try ProtobufReader.fields(data) {
            switch (field.number, field.value) {
            case (1, .fixed64(let bits)): wallTime = Double(bitPattern: bits)
            case (2, .varint(let raw)): step = Int64(bitPattern: raw)
            case (3, .bytes(let text)): fileVersion = String(decoding: text, as: UTF8.self)
            case (5, .bytes(let summary)):
                for value in try ProtobufReader.fields(summary) {
                    guard value.number == 1, case .bytes(let entry) = value.value else { continue }
                    var tag = "", content: TensorBoardValue.Content?
                    for part in try ProtobufReader.fields(entry) {
                        switch (part.number, part.value) {
                        case (1, .bytes(let text)): tag = String(decoding: text, as: UTF8.self)
                        case (2, .fixed32(let bits)): content = .scalar(Float(bitPattern: bits))
                        case (4, .bytes(let body)):
                            var image = TensorBoardImage(height: 0, width: 0, colorspace: 0, encoded: Data())
                            for item in try ProtobufReader.fields(body) {
                                switch (item.number, item.value) {
                                case (1, .varint(let v)): image.height = Int(truncatingIfNeeded: v)
                                case (2, .varint(let v)): image.width = Int(truncatingIfNeeded: v)
                                case (3, .varint(let v)): image.colorspace = Int(truncatingIfNeeded: v)
                                case (4, .bytes(let bytes)): image.encoded = bytes
                                default: break
                                }
                            }
                            content = .image(image)
                        default: break
                        }
                    }
                    if let content { values.append(TensorBoardValue(tag: tag, content: content)) }
                }
            default: break
            }
        }
    }
}

extension TensorBoardValue {
    init(tag: String, content: Content) {
        self.tag = tag
        self.content = content
    }
}

/// The protobuf wire format, as far as events need it.
struct ProtobufWriter {
    var data = Data()

    mutating func rawVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            data.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        data.append(UInt8(value))
    }

    mutating func key(_ field: Int, _ wireType: UInt64) { rawVarint(UInt64(field) << 3 | wireType) }
    mutating func varint(_ field: Int, _ value: UInt64) { key(field, 0); rawVarint(value) }
    mutating func double(_ field: Int, _ value: Double) { key(field, 1); data.append(TFRecord.littleEndian(value.bitPattern)) }
    mutating func float(_ field: Int, _ value: Float) { key(field, 5); data.append(TFRecord.littleEndian(value.bitPattern)) }
    mutating func bytes(_ field: Int, _ value: Data) { key(field, 2); rawVarint(UInt64(value.count)); data.append(value) }
}

enum ProtobufReader {
    enum Value {
        case varint(UInt64), fixed64(UInt64), bytes(Data), fixed32(UInt32)
    }

    static func fields(_ data: Data) throws -> [(number: Int, value: Value)] {
        let bytes = [UInt8](data)
        var offset = 0, fields: [(number: Int, value: Value)] = []
        func malformed() -> Error { TextCraftorError.invalidArgument("not a protobuf message (byte \(offset) of \(bytes.count))") }
        func varint() throws -> UInt64 {
            var value: UInt64 = 0, shift: UInt64 = 0
            while true {
                guard offset < bytes.count, shift < 64 else { throw malformed() }
                let byte = bytes[offset]
                offset += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
        }
        func fixed(_ size: Int) throws -> UInt64 {
            guard bytes.count - offset >= size else { throw malformed() }
            defer { offset += size }
            return (0..<size).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
        }
        while offset < bytes.count {
            let key = try varint()
            let number = Int(key >> 3)
            guard number > 0 else { throw malformed() }
            switch key & 7 {
            case 0: fields.append((number, .varint(try varint())))
            case 1: fields.append((number, .fixed64(try fixed(8))))
            case 5: fields.append((number, .fixed32(UInt32(try fixed(4)))))
            case 2:
                let length = try varint()
                guard length <= UInt64(bytes.count - offset) else { throw malformed() }
                fields.append((number, .bytes(Data(bytes[offset..<offset + Int(length)]))))
                offset += Int(length)
            default: throw malformed()
            }
        }
        return fields
    }
}

/// Reads and writes the event files of one TensorBoard log folder (a run, as `tensorboard --logdir` lists it).
public enum TensorBoardLog {
    /// The version string of a file's first event, which tells TensorBoard how to read the rest.
    public static let fileVersion = "brain.Event:2"

    /// The event files of a folder, in the order TensorBoard reads them (by name: the creation time comes first).
    public static func eventFiles(in folder: URL) -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter { $0.hasPrefix("events.out.tfevents.") }.sorted().map { folder.appendingPathComponent($0) }
    }

    /// Every event of an event file, each record's checksums verified; an error names the file and the record.
    public static func read(_ url: URL) throws -> [TensorBoardEvent] {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw TextCraftorError.invalidArgument("\(url.path): no such file")
        }
        return try TFRecord.records(in: data, source: url.path).records.enumerated().map { index, record in
            do { return try TensorBoardEvent(decoding: record) } catch {
                throw TextCraftorError.invalidArgument("\(url.path): record \(index) is not an Event (\(error))")
            }
        }
    }

    /// The events of every file of a folder, in TensorBoard's order.
    public static func readFolder(_ folder: URL) throws -> [TensorBoardEvent] {
        try eventFiles(in: folder).flatMap(read)
    }

    /// For a resumed run: drops from every event file of `folder` the events of steps after `step` (they will be
    /// written again, into the new file) and an incomplete last record, each changed file rewritten under a
    /// temporary name and renamed. A record that cannot be read as an event is kept as it is.
    public static func truncate(_ folder: URL, after step: Int) throws {
        for url in eventFiles(in: folder) {
            guard let data = FileManager.default.contents(atPath: url.path) else { continue }
            let (records, validLength) = try TFRecord.records(in: data, source: url.path, truncatedTail: .drop)
            let kept = records.filter { record in
                guard let event = try? TensorBoardEvent(decoding: record) else { return true }
                return event.fileVersion != nil || event.step <= Int64(step)
            }
            guard kept.count != records.count || validLength != data.count else { continue }
            try writeSynced(kept.reduce(into: Data()) { $0.append(TFRecord.frame($1)) }, to: url)
        }
    }
}

/// Appends events to a new event file, `events.out.tfevents.<unix seconds>.<hostname>` in a folder (`.N` added when
/// that name is taken). Each event goes to the file in one write, so a crash loses at most the event being written
/// (which the reader of a resumed run drops).
public final class TensorBoardWriter {
    public let url: URL
    private let handle: FileHandle

    public init(folder: URL, now: Date = Date()) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var name = [CChar](repeating: 0, count: 256)  // gethostname: ProcessInfo.hostName may wait on a DNS lookup
        let host = gethostname(&name, name.count - 1) == 0 ? String(cString: name).replacingOccurrences(of: "/", with: "_") : ""
        let base = "events.out.tfevents.\(Int(now.timeIntervalSince1970)).\(host.isEmpty ? "localhost" : host)"
        var url = folder.appendingPathComponent(base), index = 0
        while FileManager.default.fileExists(atPath: url.path) {
            index += 1
            url = folder.appendingPathComponent("\(base).\(index)")
        }
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
            throw TextCraftorError.invalidArgument("\(url.path): cannot create the event file")
        }
        self.url = url
        handle = try FileHandle(forWritingTo: url)
        try write(TensorBoardEvent(wallTime: now.timeIntervalSince1970, fileVersion: TensorBoardLog.fileVersion))
    }

    deinit { try? handle.close() }

    public func write(_ event: TensorBoardEvent) throws {
        try handle.write(contentsOf: TFRecord.frame(event.encoded()))
    }

    /// One step's values in one event.
    public func write(step: Int, values: [TensorBoardValue], now: Date = Date()) throws {
        try write(TensorBoardEvent(wallTime: now.timeIntervalSince1970, step: Int64(step), values: values))
    }
}
