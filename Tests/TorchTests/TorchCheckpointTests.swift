import Foundation
import Testing
import Torch

@Suite struct TorchCheckpointTests {
    /// `torch.save(model.state_dict())`, plus its re-zipped variants, which must all read the same.
    @Test(arguments: ["state_dict.pt", "nested.pt", "protocol4.pt", "deflated.pt", "zip64.pt"])
    func readsStateDict(_ name: String) throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url(name))
        SerializationFixtures.check(tensors, matches: try SerializationFixtures.expected(name))
    }

    @Test func tiedWeightsShareOneMappedStorage() throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url("state_dict.pt"))
        let embedding = try #require(tensors["emb.weight"])
        let head = try #require(tensors["head.weight"])
        #expect(embedding.isMemoryMapped && head.isMemoryMapped)
        let embeddingAddress = embedding.withUnsafeBytes { $0.baseAddress }
        let headAddress = head.withUnsafeBytes { $0.baseAddress }
        #expect(embeddingAddress != nil && embeddingAddress == headAddress)
    }

    /// `base.t()` (stride (1, 4)) is materialised contiguously; `base[1:3]` (storage offset 4) stays a view.
    @Test func stridedAndOffsetViewsOfOneStorage() throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url("state_dict.pt"))
        let transposed = try #require(tensors["transposed"])
        #expect(transposed.shape == [4, 3] && !transposed.isMemoryMapped)
        #expect(transposed.elements(as: Float.self) == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
        let rows = try #require(tensors["rows"])
        #expect(rows.shape == [2, 4] && rows.isMemoryMapped)
        #expect(rows.elements(as: Float.self) == [4, 5, 6, 7, 8, 9, 10, 11])
        #expect(tensors["steps"]?.elements(as: Int64.self) == [1, -2, 205_891_132_094_649])
    }

    @Test func deflatedEntriesAreCopiesNotViews() throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url("deflated.pt"))
        #expect(tensors.values.allSatisfy { !$0.isMemoryMapped })
    }

    @Test func readsEveryDType() throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url("dtypes.pt"))
        SerializationFixtures.check(tensors, matches: try SerializationFixtures.expected("dtypes.pt"))
        #expect(tensors["scalar"]?.shape == [])
        #expect(tensors["empty"]?.shape == [0, 3])
    }

    /// 41 views of one storage: a memo past 255 entries (LONG_BINPUT), every view zero-copy.
    @Test func readsManyViewsOfOneStorage() throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url("many_views.pt"))
        SerializationFixtures.check(tensors, matches: try SerializationFixtures.expected("many_views.pt"))
        #expect(tensors.count == 41 && tensors.values.allSatisfy(\.isMemoryMapped))
        #expect(tensors["view.39"]?.elements(as: Int16.self) == [273, 280, 287, 294, 301])
    }

    @Test func readsParameterSavedDirectly() throws {
        let tensors = try TorchCheckpoint.loadStateDict(url: SerializationFixtures.url("parameter.pt"))
        SerializationFixtures.check(tensors, matches: try SerializationFixtures.expected("parameter.pt"))
    }

    @Test func decodesPlainPythonValues() throws {
        let root = try TorchCheckpoint.load(url: SerializationFixtures.url("model_epoch.pt"))
        #expect(root["epoch"] == .int(3))
        #expect(root["lr"] == .float(0.5))
        #expect(root["name"] == .string("tiny"))
        #expect(root["flags"] == .list([.bool(true), .bool(false), .none]))
        #expect(root["big"] == .int(1 << 40))
        #expect(root["negative"] == .int(-70000))
        #expect(root["medium"] == .int(300))
        #expect(root["pair"] == .tuple([.int(1), .int(2)]))
        guard case .dict(let entries) = root else {
            Issue.record("top level is \(root.kindName)")
            return
        }
        let keys = ["model", "epoch", "lr", "name", "flags", "big", "negative", "medium", "pair"]
        #expect(entries.map(\.key) == keys.map { .string($0) })
    }

    @Test func tensorsAtAPath() throws {
        let url = SerializationFixtures.url("model_epoch.pt")
        let tensors = try TorchCheckpoint.loadTensors(url: url, at: ["model"])
        SerializationFixtures.check(tensors, matches: try SerializationFixtures.expected("model_epoch.pt"))

        expectSerializationError(
            "invalid torch checkpoint \(url.path): the top-level object maps 'model' to type dict, not a tensor"
        ) { _ = try TorchCheckpoint.loadStateDict(url: url) }
        expectSerializationError(
            "invalid torch checkpoint \(url.path): the top-level object has no entry 'optimizer'"
        ) { _ = try TorchCheckpoint.loadTensors(url: url, at: ["optimizer"]) }
        expectSerializationError(
            "invalid torch checkpoint \(url.path): the value at ['epoch'] is of type int, not a dict of tensors"
        ) { _ = try TorchCheckpoint.loadTensors(url: url, at: ["epoch"]) }
        expectSerializationError("invalid torch checkpoint \(url.path): the value at ['model'] has no entry 'x'") {
            _ = try TorchCheckpoint.loadTensors(url: url, at: ["model", "x", "y"])
        }
    }

    @Test func nestedStateDictKeepsOtherEntries() throws {
        let root = try TorchCheckpoint.load(url: SerializationFixtures.url("nested.pt"))
        #expect(root["epoch"] == .int(3))
        #expect(root["state_dict"]?["emb.weight"]?.tensor?.shape == [4, 3])
    }
}

/// Broken or hostile archives, each with the exact message it must produce.
@Suite struct TorchCheckpointValidationTests {
    private func expectFailure(_ fixture: String, _ message: (String) -> String) {
        let url = SerializationFixtures.url(fixture)
        expectSerializationError(message(url.path)) { _ = try TorchCheckpoint.load(url: url) }
    }

    @Test func missingStorageRecord() {
        expectFailure("bad_missing_record.pt") {
            "invalid torch checkpoint \($0): storage '0' has no record 'archive/data/0' in the archive"
        }
    }

    @Test func unknownOpcode() {
        expectFailure("bad_unknown_opcode.pt") {
            "invalid torch checkpoint \($0): unsupported pickle opcode 0x96 at offset 17 of data.pkl"
        }
    }

    /// `os.system("true")`: the reader looks names up in a closed table, so it stops at GLOBAL; there is no code path
    /// that could import or call it.
    @Test func unknownGlobalIsReportedNotExecuted() {
        expectFailure("bad_unknown_global.pt") {
            "refusing to load torch checkpoint \($0): data.pkl refers to 'os.system', which is not an allowed global"
        }
        expectFailure("bad_unknown_stack_global.pt") {
            "refusing to load torch checkpoint \($0): data.pkl refers to 'builtins.eval', "
                + "which is not an allowed global"
        }
    }

    /// Structures pickle can express but a weight file never needs: a list containing itself, and lists sharing one
    /// list so often that expanding them into values would take 2^40 nodes. Both must fail fast, not hang.
    @Test func cyclicAndExplodingStructures() {
        expectFailure("bad_cyclic.pt") {
            "invalid torch checkpoint \($0): data.pkl nests values more than 256 deep (or is cyclic)"
        }
        expectFailure("bad_expansion.pt") {
            "invalid torch checkpoint \($0): data.pkl expands to too many values (containers shared many times)"
        }
    }

    @Test func bigEndian() {
        expectFailure("bad_big_endian.pt") {
            "invalid torch checkpoint \($0): byte order is 'big'; only little-endian checkpoints are supported"
        }
    }

    @Test func legacyFormat() {
        expectFailure("bad_legacy.pt") {
            "invalid torch checkpoint \($0): legacy (pre-1.6) torch.save format is not supported; "
                + "re-save it with a newer PyTorch"
        }
    }

    @Test func notAZipFile() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let url = directory.file("model.pt")
        try Data("definitely not a zip archive, just some text that is long enough".utf8).write(to: url)
        expectSerializationError("invalid torch checkpoint \(url.path): not a zip archive") {
            _ = try TorchCheckpoint.load(url: url)
        }
    }

    @Test func safetensorsFileIsNotACheckpoint() {
        expectFailure("dtypes.safetensors") { "invalid torch checkpoint \($0): not a zip archive" }
    }

    @Test func missingFile() {
        let url = SerializationFixtures.url("absent.pt")
        expectSerializationError("cannot access \(url.path): No such file or directory") {
            _ = try TorchCheckpoint.loadStateDict(url: url)
        }
    }
}

/// Pickles nested far deeper than any weight file, as a fuzzer writes them. They used to be built whole and then
/// freed recursively, which ran out of stack at 100,000 levels (SIGSEGV); now the nesting is refused while it is
/// being built.
@Suite struct DeepPickleTests {
    /// A zip archive of stored entries, as torch.save writes them (CRCs are left zero: the reader does not check
    /// stored entries' CRCs).
    static func storedZip(_ entries: [(name: String, bytes: [UInt8])]) -> [UInt8] {
        func u16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
        func u32(_ v: Int) -> [UInt8] { u16(v & 0xFFFF) + u16(v >> 16 & 0xFFFF) }
        var archive: [UInt8] = []
        var directory: [UInt8] = []
        for (name, bytes) in entries {
            let nameBytes = Array(name.utf8)
            let offset = archive.count
            archive += u32(0x0403_4b50) + u16(20) + u16(0) + u16(0) + u16(0) + u16(0) + u32(0)
            archive += u32(bytes.count) + u32(bytes.count) + u16(nameBytes.count) + u16(0) + nameBytes + bytes
            directory += u32(0x0201_4b50) + u16(20) + u16(20) + u16(0) + u16(0) + u16(0) + u16(0) + u32(0)
            directory += u32(bytes.count) + u32(bytes.count) + u16(nameBytes.count) + u16(0) + u16(0) + u16(0)
            directory += u16(0) + u32(0) + u32(offset) + nameBytes
        }
        let directoryOffset = archive.count
        archive += directory
        archive += u32(0x0605_4b50) + u16(0) + u16(0) + u16(entries.count) + u16(entries.count)
        archive += u32(directory.count) + u32(directoryOffset) + u16(0)
        return archive
    }

    /// A list nested `depth` deep, built from the inside out as pickle does: EMPTY_LIST, then `depth` times
    /// (MARK, EMPTY_LIST), then `depth` APPENDS, each putting the innermost list into the one below it.
    static func nestedLists(_ depth: Int) -> [UInt8] {
        let mark = UInt8(ascii: "("), emptyList = UInt8(ascii: "]"), appends = UInt8(ascii: "e")
        var stream: [UInt8] = [0x80, 2, emptyList]
        for _ in 0..<depth { stream += [mark, emptyList] }
        stream += [UInt8](repeating: appends, count: depth)
        return stream + [UInt8(ascii: ".")]
    }

    static func load(_ pickle: [UInt8], in directory: ScratchDirectory) throws -> (URL, () throws -> PickleValue) {
        let url = directory.file("deep.pt")
        try Data(storedZip([("archive/data.pkl", pickle)])).write(to: url)
        return (url, { try TorchCheckpoint.load(url: url) })
    }

    @Test func hundredThousandDeepFailsCleanly() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let (url, load) = try Self.load(Self.nestedLists(100_000), in: directory)
        expectSerializationError("invalid torch checkpoint \(url.path): data.pkl nests values more than 256 deep") {
            _ = try load()
        }
    }

    /// The limit is where it was: 255 levels below the top load (and convert, depth for depth), 256 do not.
    @Test func limitIsExact() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        var value = try Self.load(Self.nestedLists(255), in: directory).1()
        var depth = 0
        while case .list(let items) = value, let first = items.first {
            #expect(items.count == 1)
            value = first
            depth += 1
        }
        #expect(depth == 255 && value == .list([]))
        let (url, load) = try Self.load(Self.nestedLists(256), in: directory)
        expectSerializationError("invalid torch checkpoint \(url.path): data.pkl nests values more than 256 deep") {
            _ = try load()
        }
    }

    /// The same depth built from the outside in, through the memo: each new list goes into the previous one after
    /// that one is already inside its parent. Heights could not follow that, so it is refused at the second step.
    @Test func outsideInNestingIsRefused() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let emptyList = UInt8(ascii: "]"), binPut = UInt8(ascii: "q"), binGet = UInt8(ascii: "h")
        let append = UInt8(ascii: "a"), pop = UInt8(ascii: "0")
        var stream: [UInt8] = [0x80, 2, emptyList, binPut, 0]
        for _ in 0..<100_000 { stream += [binGet, 0, emptyList, binPut, 0, append, pop] }
        stream += [UInt8(ascii: ".")]
        let (url, load) = try Self.load(stream, in: directory)
        expectSerializationError(
            "invalid torch checkpoint \(url.path): data.pkl adds to a list or dict after putting it inside another "
                + "value (a cyclic structure)"
        ) { _ = try load() }
    }
}
