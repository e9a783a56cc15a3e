import Foundation
import ZIPFoundation

/// The reading side of the zip format, as much of it as `torch.save` archives need, over a memory-mapped file.
///
/// Why not only ZIPFoundation: it extracts entries by copying them, and it does not expose where an entry's bytes
/// start. PyTorch writes its records *stored* (uncompressed, 64-byte aligned), so reading the central directory
/// ourselves lets every tensor be a zero-copy view of the mapping, which matters for multi-gigabyte checkpoints.
/// ZIP64 (needed past 4 GiB or 65535 entries) is handled. A deflated entry, which PyTorch never writes but a
/// re-zipped file could contain, is extracted with ZIPFoundation. CRCs of stored entries are not checked: that
/// would mean reading every byte of the file up front, which is what mapping avoids.
struct ZipArchive {
    struct Entry {
        let name: String
        let flags: UInt16
        let method: UInt16
        let compressedSize: Int
        let uncompressedSize: Int
        let localHeaderOffset: Int
    }

    let file: MappedFile
    /// Entry names in central-directory order.
    let names: [String]
    private let entries: [String: Entry]

    init(file: MappedFile) throws {
        self.file = file
        let reader = LittleEndianReader(bytes: file.bytes, path: file.path)
        let directory = try Self.findCentralDirectory(reader)

        var names: [String] = []
        var entries: [String: Entry] = [:]
        var offset = directory.offset
        for _ in 0..<directory.entryCount {
            let (entry, next) = try Self.readDirectoryEntry(reader, at: offset)
            if entries[entry.name] == nil { names.append(entry.name) }
            entries[entry.name] = entry
            offset = next
        }
        self.names = names
        self.entries = entries
    }

    func contains(_ name: String) -> Bool { entries[name] != nil }

    /// The uncompressed bytes of the entry `name`: a view of the mapping when stored, a copy when deflated.
    /// Returns nil when there is no such entry.
    func contents(of name: String) throws -> ByteStorage? {
        guard let entry = entries[name] else { return nil }
        let path = file.path
        func fail(_ reason: String) -> SerializationError {
            .invalidCheckpoint(path: path, reason: "zip entry '\(excerpt(name, limit: 200))' \(reason)")
        }
        guard entry.flags & 1 == 0 else { throw fail("is encrypted") }

        let reader = LittleEndianReader(bytes: file.bytes, path: path)
        let header = entry.localHeaderOffset
        guard try reader.uint32(at: header) == 0x0403_4b50 else { throw fail("has no local file header") }
        let nameLength = Int(try reader.uint16(at: header + 26))
        let extraLength = Int(try reader.uint16(at: header + 28))
        let dataStart = header + 30 + nameLength + extraLength
        guard dataStart <= file.count, entry.compressedSize <= file.count - dataStart else {
            throw fail("extends beyond the end of the file")
        }

        switch entry.method {
        case 0:
            guard entry.compressedSize == entry.uncompressedSize else { throw fail("is stored but changes size") }
            return .mapped(file, dataStart..<(dataStart + entry.compressedSize))
        case 8:
            return .owned(try inflate(name, fail: fail))
        default:
            throw fail("uses compression method \(entry.method); only stored and deflated entries are supported")
        }
    }

    private func inflate(_ name: String, fail: (String) -> SerializationError) throws -> Data {
        do {
            let archive = try Archive(url: URL(fileURLWithPath: file.path), accessMode: .read)
            guard let entry = archive[name] else { throw fail("cannot be found by ZIPFoundation") }
            var data = Data()
            _ = try archive.extract(entry, skipCRC32: false) { data.append($0) }
            return data
        } catch let error as SerializationError {
            throw error
        } catch {
            throw fail("cannot be inflated: \(error)")
        }
    }

    // MARK: Central directory

    private struct CentralDirectory {
        let offset: Int
        let entryCount: Int
    }

    /// Finds the end-of-central-directory record (scanning back over a comment of up to 64 KiB) and, when its
    /// fields are saturated, the ZIP64 record it points to.
    private static func findCentralDirectory(_ reader: LittleEndianReader) throws -> CentralDirectory {
        let size = reader.bytes.count
        let notZip = SerializationError.invalidCheckpoint(path: reader.path, reason: "not a zip archive")
        guard size >= 22 else { throw notZip }
        var candidate = size - 22
        let lowest = max(0, size - 22 - 0xFFFF)
        while try reader.uint32(at: candidate) != 0x0605_4b50 {
            guard candidate > lowest else { throw notZip }
            candidate -= 1
        }
        let end = candidate
        var entryCount = UInt64(try reader.uint16(at: end + 10))
        var directoryOffset = UInt64(try reader.uint32(at: end + 16))

        if entryCount == 0xFFFF || directoryOffset == 0xFFFF_FFFF {
            let locator = end - 20
            guard locator >= 0, try reader.uint32(at: locator) == 0x0706_4b50 else {
                throw reader.fail("has a saturated end-of-central-directory record but no ZIP64 locator")
            }
            let record = try reader.offset(reader.uint64(at: locator + 8))
            guard try reader.uint32(at: record) == 0x0606_4b50 else {
                throw reader.fail("has a ZIP64 locator that points to no ZIP64 record")
            }
            entryCount = try reader.uint64(at: record + 32)
            directoryOffset = try reader.uint64(at: record + 48)
        }
        return CentralDirectory(offset: try reader.offset(directoryOffset), entryCount: try reader.offset(entryCount))
    }

    /// Reads the central-directory entry at `offset`; returns it and the offset of the next one.
    private static func readDirectoryEntry(_ reader: LittleEndianReader, at offset: Int) throws -> (Entry, Int) {
        guard try reader.uint32(at: offset) == 0x0201_4b50 else {
            throw reader.fail("has a damaged central directory at offset \(offset)")
        }
        let flags = try reader.uint16(at: offset + 8)
        let method = try reader.uint16(at: offset + 10)
        var compressedSize = UInt64(try reader.uint32(at: offset + 20))
        var uncompressedSize = UInt64(try reader.uint32(at: offset + 24))
        let nameLength = Int(try reader.uint16(at: offset + 28))
        let extraLength = Int(try reader.uint16(at: offset + 30))
        let commentLength = Int(try reader.uint16(at: offset + 32))
        var localHeaderOffset = UInt64(try reader.uint32(at: offset + 42))
        let nameStart = offset + 46
        let name = String(decoding: try reader.slice(nameStart, count: nameLength), as: UTF8.self)

        // The ZIP64 extra field (id 1) holds, in this order, exactly those of the three values that are saturated.
        var extra = nameStart + nameLength
        let extraEnd = extra + extraLength
        while extra + 4 <= extraEnd {
            let id = try reader.uint16(at: extra)
            let length = Int(try reader.uint16(at: extra + 2))
            if id == 1 {
                var field = extra + 4
                if uncompressedSize == 0xFFFF_FFFF {
                    uncompressedSize = try reader.uint64(at: field)
                    field += 8
                }
                if compressedSize == 0xFFFF_FFFF {
                    compressedSize = try reader.uint64(at: field)
                    field += 8
                }
                if localHeaderOffset == 0xFFFF_FFFF {
                    localHeaderOffset = try reader.uint64(at: field)
                }
            }
            extra += 4 + length
        }
        let entry = Entry(
            name: name, flags: flags, method: method, compressedSize: try reader.offset(compressedSize),
            uncompressedSize: try reader.offset(uncompressedSize),
            localHeaderOffset: try reader.offset(localHeaderOffset))
        return (entry, extraEnd + commentLength)
    }
}

/// Bounds-checked little-endian reads from the mapped file; reading past the end is an error, never a crash.
private struct LittleEndianReader {
    let bytes: UnsafeRawBufferPointer
    let path: String

    func fail(_ reason: String) -> SerializationError {
        .invalidCheckpoint(path: path, reason: "zip archive \(reason)")
    }

    func uint16(at offset: Int) throws -> UInt16 { UInt16(littleEndian: try load(at: offset)) }
    func uint32(at offset: Int) throws -> UInt32 { UInt32(littleEndian: try load(at: offset)) }
    func uint64(at offset: Int) throws -> UInt64 { UInt64(littleEndian: try load(at: offset)) }

    func slice(_ offset: Int, count: Int) throws -> UnsafeRawBufferPointer {
        guard offset >= 0, count >= 0, offset <= bytes.count, count <= bytes.count - offset else {
            throw fail("is truncated")
        }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    /// A 64-bit size or offset from the file as an `Int`, rejecting values no file of this size can hold.
    func offset(_ value: UInt64) throws -> Int {
        guard value <= UInt64(bytes.count) else { throw fail("has a size or offset beyond the end of the file") }
        return Int(value)
    }

    private func load<T: FixedWidthInteger>(at offset: Int) throws -> T {
        try slice(offset, count: MemoryLayout<T>.size).loadUnaligned(as: T.self)
    }
}
