import Foundation
import Testing
import Torch

@Suite struct SafeTensorsReadingTests {
    /// Making a tensor from mapped bytes gives the file's pages back to the kernel (so a checkpoint does not stay
    /// resident beside its converted copy); reading the same bytes again faults them in from the file unchanged.
    @Test func mappedPagesGivenBackReadAgainUnchanged() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("pages-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        // Unaligned sizes, so that the tensors share pages at their ends.
        let written = ["a": Tensor.arange(0, 300_001, dtype: .float32), "b": Tensor.arange(0, 123_457, dtype: .float32) * -1]
        try Tensor.save(written, to: url)
        let file = try SafeTensorsFile(url: url)
        for name in ["a", "b", "a"] {
            let data = try file.tensorData(name)
            #expect(data.isMemoryMapped)
            let first = try Tensor(data), second = try Tensor(data)
            #expect((first - written[name]!).abs().max().item() == 0 && (second - written[name]!).abs().max().item() == 0)
        }
    }

    @Test func readsEveryDTypeWrittenByPython() throws {
        let url = SerializationFixtures.url("dtypes.safetensors")
        let expected = try SerializationFixtures.expected("dtypes.safetensors")
        let file = try SafeTensorsFile(url: url)

        #expect(file.names == expected.tensors.keys.sorted())
        #expect(file.metadata == expected.metadata)
        for name in file.names {
            let tensor = try file.tensorData(name)
            #expect(tensor.isMemoryMapped)
            let info = try #require(file.info(name))
            #expect(info.dtype == tensor.dtype && info.shape == tensor.shape)
        }
        SerializationFixtures.check(file.allTensors(), matches: expected)
    }

    @Test func scalarAndEmptyTensors() throws {
        let file = try SafeTensorsFile(url: SerializationFixtures.url("dtypes.safetensors"))
        let scalar = try file.tensorData("scalar")
        #expect(scalar.shape == [] && scalar.elementCount == 1 && scalar.elements(as: Float.self) == [2.75])
        let empty = try file.tensorData("empty")
        #expect(empty.shape == [0, 3] && empty.elementCount == 0 && empty.byteCount == 0)
    }

    @Test func unknownNameNamesKeyAndFile() throws {
        let url = SerializationFixtures.url("dtypes.safetensors")
        let file = try SafeTensorsFile(url: url)
        #expect(file.info("nope") == nil)
        expectSerializationError("no tensor named 'nope' in \(url.path)") { _ = try file.tensorData("nope") }
    }

    @Test func missingFile() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("absent.safetensors")
        expectSerializationError("cannot access \(url.path): No such file or directory") {
            _ = try SafeTensorsFile(url: url)
        }
    }
}

@Suite struct SafeTensorsWritingTests {
    @Test func roundTripsEveryDType() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let original = try SafeTensorsFile(url: SerializationFixtures.url("dtypes.safetensors")).allTensors()
        let url = directory.file("copy.safetensors")

        // Unsorted input: the writer sorts.
        try SafeTensors.write(original.map { ($0.key, $0.value) }, metadata: ["k": "v", "path": "a/b"], to: url)

        let copy = try SafeTensorsFile(url: url)
        #expect(copy.names == original.keys.sorted())
        #expect(copy.metadata == ["k": "v", "path": "a/b"])
        #expect(copy.allTensors() == original)
        // The header is padded so the data section starts 8-byte aligned.
        let bytes = try Data(contentsOf: url)
        let headerLength = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        #expect(headerLength % 8 == 0)
    }

    /// The fixture script builds these bytes by hand from the same tensors and checks that Python's
    /// `safetensors.torch.load_file` reads them, so byte equality means Python can read what Swift writes.
    @Test func writesTheBytesPythonReads() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let expected = try SerializationFixtures.expected("writer_expected.safetensors")
        let tensors = try expected.tensors.map {
            (name: $0.key, data: try SerializationFixtures.tensorData(from: $0.value))
        }
        let url = directory.file("written.safetensors")

        try SafeTensors.write(tensors, metadata: expected.metadata, to: url)

        let reference = try Data(contentsOf: SerializationFixtures.url("writer_expected.safetensors"))
        let written = try Data(contentsOf: url)
        #expect(written == reference)
    }

    @Test func withoutMetadataThereIsNoMetadataKey() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("plain.safetensors")
        try SafeTensors.write([("x", try TensorData(dtype: .uint8, shape: [3], bytes: [1, 2, 3]))], to: url)
        let header = String(decoding: try Data(contentsOf: url).dropFirst(8), as: UTF8.self)
        #expect(header.hasPrefix(#"{"x":{"data_offsets":[0,3],"dtype":"U8","shape":[3]}}"#))
        #expect(try SafeTensorsFile(url: url).metadata == [:])
    }

    @Test func replacesExistingFileAndLeavesNoTemporaryFiles() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("model.safetensors")
        try Data("old contents".utf8).write(to: url)

        let tensor = try TensorData(dtype: .int32, shape: [2], bytes: [1, 0, 0, 0, 2, 0, 0, 0])
        try SafeTensors.write([("t", tensor)], to: url)

        #expect(try SafeTensorsFile(url: url).tensorData("t") == tensor)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.path) == ["model.safetensors"])
    }

    @Test func failedWriteLeavesNothingBehind() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("dup.safetensors")
        let tensor = try TensorData(dtype: .uint8, shape: [1], bytes: [9])
        expectSerializationError("invalid safetensors file \(url.path): duplicate tensor name 'a'") {
            try SafeTensors.write([("a", tensor), ("b", tensor), ("a", tensor)], to: url)
        }
        expectSerializationError("invalid safetensors file \(url.path): '__metadata__' is not a tensor name") {
            try SafeTensors.write([("__metadata__", tensor)], to: url)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.path) == [])
    }

    @Test func writingIntoAMissingDirectoryFails() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("missing/model.safetensors")
        let tensor = try TensorData(dtype: .uint8, shape: [1], bytes: [9])
        expectSerializationError("cannot access \(url.path): No such file or directory") {
            try SafeTensors.write([("a", tensor)], to: url)
        }
    }
}

@Suite struct TensorDataTests {
    @Test func byteCountMustMatchShapeAndDType() {
        expectSerializationError("invalid tensor data: float32 tensor of shape [2, 3] needs 24 bytes, got 20") {
            _ = try TensorData(dtype: .float32, shape: [2, 3], bytes: [UInt8](repeating: 0, count: 20))
        }
        expectSerializationError("invalid tensor data: shape [-1] is negative or too large") {
            _ = try TensorData(dtype: .float32, shape: [-1], bytes: [])
        }
        expectSerializationError("invalid tensor data: shape [9223372036854775807, 4] is negative or too large") {
            _ = try TensorData(dtype: .uint8, shape: [Int.max, 4], bytes: [])
        }
    }

    @Test func decodesElements() throws {
        let minusOneAndSeven: [UInt8] = [255, 255, 255, 255, 255, 255, 255, 255, 7, 0, 0, 0, 0, 0, 0, 0]
        let tensor = try TensorData(dtype: .int64, shape: [2], bytes: minusOneAndSeven)
        #expect(tensor.elements(as: Int64.self) == [-1, 7])
        #expect(tensor.elementCount == 2 && tensor.byteCount == 16 && !tensor.isMemoryMapped)
    }
}

/// Malformed files, each with the exact message it must produce.
@Suite struct SafeTensorsValidationTests {
    struct BadFile: CustomStringConvertible, Sendable {
        let description: String
        let bytes: [UInt8]
        /// The message after "invalid safetensors file <path>: ".
        let reason: String

        init(_ description: String, header: String, data: [UInt8] = [], reason: String) {
            self.init(description, bytes: safeTensorsBytes(header: header, data: data), reason: reason)
        }

        init(_ description: String, bytes: [UInt8], reason: String) {
            self.description = description
            self.bytes = bytes
            self.reason = reason
        }
    }

    static let badFiles: [BadFile] = [
        BadFile("empty file", bytes: [], reason: "truncated: 0 bytes, too short for the 8-byte header length"),
        BadFile(
            "truncated", bytes: [1, 2, 3, 4, 5], reason: "truncated: 5 bytes, too short for the 8-byte header length"),
        BadFile(
            "header length beyond the file", bytes: [100, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8),
            reason: "header length 100 exceeds the 2 bytes that follow it"),
        BadFile(
            "huge header length", bytes: [UInt8](repeating: 255, count: 8) + Array("{}".utf8),
            reason: "header length 18446744073709551615 exceeds the 2 bytes that follow it"),
        BadFile("header not JSON", header: "{not json", reason: "header is not valid JSON"),
        BadFile("header a JSON list", header: "[1, 2]", reason: "header is not a JSON object"),
        BadFile(
            "metadata not strings", header: #"{"__metadata__": {"a": 1}}"#,
            reason: "'__metadata__' is not an object of strings"),
        BadFile("entry not an object", header: #"{"w": 3}"#, reason: "tensor 'w': entry is not a JSON object"),
        BadFile(
            "missing dtype", header: #"{"w": {"shape": [1], "data_offsets": [0, 4]}}"#, data: zeros(4),
            reason: "tensor 'w': missing 'dtype'"),
        BadFile(
            "missing shape", header: #"{"w": {"dtype": "F32", "data_offsets": [0, 4]}}"#, data: zeros(4),
            reason: "tensor 'w': missing 'shape'"),
        BadFile(
            "missing data_offsets", header: #"{"w": {"dtype": "F32", "shape": [1]}}"#,
            reason: "tensor 'w': missing 'data_offsets'"),
        BadFile(
            "unknown dtype", header: header(entry("w", "F8_E4M3", [1], [0, 1])), data: zeros(1),
            reason: "tensor 'w': unknown dtype 'F8_E4M3'"),
        BadFile(
            "negative dimension", header: header(entry("w", "F32", [2, -1], [0, 0])),
            reason: "tensor 'w': shape [2, -1] has a negative dimension"),
        BadFile(
            "fractional dimension", header: #"{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}}"#,
            reason: "tensor 'w': 'shape' is not a list of integers"),
        BadFile(
            "offsets beyond the data", header: header(entry("w", "F32", [2], [0, 8])), data: zeros(4),
            reason: "tensor 'w': data_offsets [0, 8] extend beyond the 4-byte data section"),
        BadFile(
            "begin after end", header: header(entry("w", "F32", [1], [8, 4])), data: zeros(8),
            reason: "tensor 'w': data_offsets [8, 4] do not form a range"),
        BadFile(
            "one offset", header: header(entry("w", "F32", [1], [4])), data: zeros(4),
            reason: "tensor 'w': 'data_offsets' is not a list of two integers"),
        BadFile(
            "shape times dtype differs from byte length", header: header(entry("w", "F32", [3], [0, 8])),
            data: zeros(8), reason: "tensor 'w': F32 shape [3] needs 12 bytes but data_offsets [0, 8] span 8"),
        BadFile(
            "overlapping tensors", header: header(entry("a", "F32", [2], [0, 8]), entry("b", "F32", [2], [4, 12])),
            data: zeros(12), reason: "tensors 'a' [0, 8) and 'b' [4, 12) overlap"),
        BadFile(
            "hole between tensors", header: header(entry("a", "F32", [1], [0, 4]), entry("b", "F32", [1], [8, 12])),
            data: zeros(12), reason: "bytes [4, 8) of the data section belong to no tensor"),
        BadFile(
            "trailing bytes", header: header(entry("a", "U8", [2], [0, 2])), data: [1, 2, 3],
            reason: "bytes [2, 3) of the data section belong to no tensor"),
    ]

    @Test(arguments: badFiles) func rejects(_ bad: BadFile) throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("bad.safetensors")
        try Data(bad.bytes).write(to: url)
        expectSerializationError("invalid safetensors file \(url.path): \(bad.reason)") {
            _ = try SafeTensorsFile(url: url)
        }
    }

    /// Zero-size tensors occupy no bytes, so several may sit at one offset, and the spec's tiling still holds.
    @Test func acceptsZeroSizeTensorsAndPaddedHeader() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let text = header(
            entry("a", "F32", [0], [0, 0]), entry("b", "U8", [2], [0, 2]), entry("c", "I64", [3, 0], [2, 2]))
        let url = directory.file("ok.safetensors")
        try Data(safeTensorsBytes(header: text + "   ", data: [7, 8])).write(to: url)
        let file = try SafeTensorsFile(url: url)
        #expect(file.names == ["a", "b", "c"])
        #expect(try file.tensorData("b").bytes == [7, 8])
        #expect(try file.tensorData("c").byteCount == 0)
    }
}

/// A safetensors file: the header's length (8 bytes, little-endian), the header text, and `data`.
private func safeTensorsBytes(header: String, data: [UInt8]) -> [UInt8] {
    let headerBytes = Array(header.utf8)
    let length = UInt64(headerBytes.count)
    return (0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) } + headerBytes + data
}

/// `"name": {"dtype": ..., "shape": [...], "data_offsets": [...]}`
private func entry(_ name: String, _ dtype: String, _ shape: [Int], _ offsets: [Int]) -> String {
    #""\#(name)": {"dtype": "\#(dtype)", "shape": \#(shape), "data_offsets": \#(offsets)}"#
}

private func header(_ entries: String...) -> String {
    "{" + entries.joined(separator: ", ") + "}"
}

private func zeros(_ count: Int) -> [UInt8] {
    [UInt8](repeating: 0, count: count)
}

/// Headers a fuzzer made: too many entries, too long, names and shapes that must not reach a terminal or a message
/// raw.
@Suite struct SafeTensorsHostileHeaderTests {
    /// `count` one-byte tensors, named so that their names hold what the entry count must skip over: colons,
    /// braces and escaped quotes inside strings; plus `__metadata__` with a colon in a value.
    static func manyTensors(_ count: Int) -> [UInt8] {
        let entries = (0..<count).map { entry(#"t\"{:[\#($0)"#, "U8", [1], [$0, $0 + 1]) }
        let text = "{" + (entries + [#""__metadata__": {"k": "a:b{"}"#]).joined(separator: ", ") + "}"
        return safeTensorsBytes(header: text, data: zeros(count))
    }

    @Test func tooManyEntriesAreRefusedBeforeParsing() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("many.safetensors")
        try Data(Self.manyTensors(10)).write(to: url)
        // 10 tensors and __metadata__: 11 entries.
        #expect(try SafeTensorsFile(url: url, maximumEntryCount: 11).names.count == 10)
        expectSerializationError(
            "invalid safetensors file \(url.path): header has more than 10 entries (tensors and __metadata__), "
                + "the most accepted"
        ) { _ = try SafeTensorsFile(url: url, maximumEntryCount: 10) }
    }

    /// The default limit leaves room for real files: 20,000 tensors open (the largest shards hold thousands).
    @Test func manyTensorsUnderTheDefaultLimitOpen() throws {
        #expect(SafeTensorsFile.maximumEntryCount >= 100_000)
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("many.safetensors")
        try Data(Self.manyTensors(20_000)).write(to: url)
        let file = try SafeTensorsFile(url: url)
        #expect(file.names.count == 20_000)
        #expect(try file.tensorData(#"t"{:[19999"#).byteCount == 1)
        #expect(file.metadata == ["k": "a:b{"])
    }

    /// A header length over 100 MB is refused before anything is read (a sparse file makes the bytes exist).
    @Test func headerOverTheReferenceLimitIsRefused() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("long.safetensors")
        let length = UInt64(SafeTensorsFile.maximumHeaderLength + 1)
        try Data((0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) }).write(to: url)
        let handle = try FileHandle(forWritingTo: url)
        try handle.truncate(atOffset: 8 + length)
        try handle.close()
        expectSerializationError(
            "invalid safetensors file \(url.path): header length 100000001 is over the limit of 100000000 bytes"
        ) { _ = try SafeTensorsFile(url: url) }
    }

    /// A tensor name with a terminal escape code, and a shape of 1000 dimensions: both quoted escaped and short.
    @Test func namesAndShapesInMessagesAreExcerpts() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("bad.safetensors")
        let shape = [Int](repeating: 1, count: 999) + [-1]
        try Data(safeTensorsBytes(header: header(entry(#"red\u001b[31m"#, "F32", shape, [0, 0])), data: []))
            .write(to: url)
        expectSerializationError(
            "invalid safetensors file \(url.path): tensor 'red\\u{1b}[31m': "
                + "shape [1, 1, 1, 1, 1, 1, 1, 1, …] (1000 dimensions) has a negative dimension"
        ) { _ = try SafeTensorsFile(url: url) }
    }
}
