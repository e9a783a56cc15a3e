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
