import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// Textual-inversion embeddings against diffusers' `load_textual_inversion` (scripts/parity/make_token_fixtures.py):
/// the files of Fixtures/token/ loaded into tiny-sd15 and tiny-sdxl give diffusers' prompt embeddings.
@Suite struct TokenEmbeddingTests {
    static let folder = fixturesURL.appendingPathComponent("token")
    static let promptsSD = ["a red circle, {t}", "{t} a blue square on {t}", "a photo"]
    static let promptsXL = ["a red circle, xl", "xl a blue square"]

    func expected(_ name: String) throws -> Tensor {
        try SafeTensorsFile(url: Self.folder.appendingPathComponent("expected.safetensors")).tensor(name)
    }

    /// max |a - b| / max |b|.
    func relative(_ a: Tensor, _ b: Tensor) -> Double { maxAbsDifference(a, b) / b.abs().max().item() }

    func sdEmbeds(_ file: URL, token: String? = nil) throws -> (Tensor, String) {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        let name = try pipeline.loadEmbedding(file, token: token)
        return (pipeline.encode(Self.promptsSD.map { $0.replacingOccurrences(of: "{t}", with: name) }), name)
    }

    @Test(arguments: [("learned_embeds.safetensors", "<shape>"), ("one.safetensors", "<one>"), ("tiny.pt", "tiny"),
                      ("emb.safetensors", "emb")])
    func sdFilesGiveDiffusersEmbeddings(file: String, token: String) throws {
        let (embeds, name) = try sdEmbeds(Self.folder.appendingPathComponent(file))
        #expect(name == token)
        let reference = try expected("sd_" + file.split(separator: ".")[0])
        #expect(embeds.shape == [3, 77, 32])
        #expect(relative(embeds, reference) < 1e-5, "\(file): \(relative(embeds, reference))")
    }

    @Test func sdxlFileGivesDiffusersEmbeddingsInBothEncoders() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySDXL.folder)
        #expect(try pipeline.loadEmbedding(Self.folder.appendingPathComponent("xl.safetensors")) == "xl")
        let out = pipeline.encode(pipeline.promptTokens(Self.promptsXL))
        let hidden = try expected("xl_prompt_embeds"), pooled = try expected("xl_pooled")
        #expect(relative(out.hiddenStates, hidden) < 1e-5, "\(relative(out.hiddenStates, hidden))")
        #expect(relative(out.textEmbeds!, pooled) < 1e-5, "\(relative(out.textEmbeds!, pooled))")
    }

    /// Without the embedding the prompts differ: the token's rows matter (not a vacuous comparison).
    @Test func theTokenChangesTheEmbeddings() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        let plain = pipeline.encode(Self.promptsSD.map { $0.replacingOccurrences(of: "{t}", with: "tiny") })
        #expect(maxAbsDifference(plain, try expected("sd_tiny")) > 1e-3)
    }

    /// A token initialised from a word (N = 1) conditions exactly as the word.
    @Test func freshTokenEqualsItsInitWord() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        let rows = try pipeline.tokenRows(of: "red")
        try pipeline.addToken("<r>", first: rows.first, second: rows.second)
        #expect(pipeline.tokenizer.encode("a <r> circle") == [320, 1000, 66, 582, 66, 579])
        let token = pipeline.encode(["a <r> circle", "<r>, big"]), word = pipeline.encode(["a red circle", "red, big"])
        #expect(maxAbsDifference(token, word) == 0)
        // Two vectors: the token stands for both ids, in order.
        let two = try pipeline.tokenizer.adding(token: "<two>", vectors: 2)
        #expect(two.ids == [1001, 1002])
        #expect(two.tokenizer.encode("x <two> y") == pipeline.tokenizer.encode("x") + [1001, 1002] + pipeline.tokenizer.encode("y"))
        #expect(two.tokenizer.encode("<two>_1") == [1002])
    }

    @Test func sdxlTokenRowsComeFromBothEncoders() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySDXL.folder)
        let rows = try pipeline.tokenRows(of: "red")
        #expect(rows.first.shape == [1, 32] && rows.second?.shape == [1, 48])
        try pipeline.addToken("<r>", first: rows.first, second: rows.second)
        let token = pipeline.encode(pipeline.promptTokens(["a <r> circle"])), word = pipeline.encode(pipeline.promptTokens(["a red circle"]))
        #expect(maxAbsDifference(token.hiddenStates, word.hiddenStates) == 0)
    }

    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return "\(error)" }
        return "no error"
    }

    @Test func badInputIsOneLineNamingTheFile() throws {
        let sd = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        let xl = try StableDiffusionPipeline.load(folder: TinySDXL.folder)
        let temporary = try temporaryFolder("token")
        defer { try? FileManager.default.removeItem(at: temporary) }
        let wide = temporary.appendingPathComponent("sd2.safetensors")
        try Tensor.save(["emb_params": Tensor.zeros([1, 1024])], to: wide)
        let learned = Self.folder.appendingPathComponent("learned_embeds.safetensors")
        let xlFile = Self.folder.appendingPathComponent("xl.safetensors")
        let cases: [(String, String)] = [
            (message { try sd.loadEmbedding(learned, token: "red") },
             "\(learned.path): token \"red\" is already in the tokenizer's vocabulary: choose another, e.g. <red>"),
            (message { try sd.loadEmbedding(wide) },
             "\(wide.path): the text_encoder embedding is 1024 wide (SD 2.x), but the model's text_encoder is 32 wide"),
            (message { try sd.loadEmbedding(temporary.appendingPathComponent("gone.pt")) },
             "\(temporary.path)/gone.pt: no such file or folder"),
            (message { try sd.loadEmbedding(xlFile) },
             "\(xlFile.path): an SDXL embedding (clip_l and clip_g) does not fit this SD 1.x/2.x model; use an embedding 32 wide"),
            (message { try xl.loadEmbedding(learned) },
             "\(learned.path): an embedding for one text encoder (32 wide) does not fit this SDXL model, which needs clip_l (32 wide) and clip_g (48 wide)"),
            (message { try sd.loadEmbedding(TinySD.sd15.folder.appendingPathComponent("text_encoder/model.safetensors")) },
             "\(TinySD.sd15.folder.path)/text_encoder/model.safetensors: expected a textual-inversion embedding (one token's tensor, emb_params, string_to_param, or clip_l and clip_g); found keys"),
            (message { _ = try sd.tokenRows(of: "redcircle") }, "init word \"redcircle\" is 6 tokens"),
        ]
        for (found, expected) in cases {
            #expect(found.hasPrefix(expected), "\(found)")
            #expect(!found.contains("\n"))
        }
        // Nothing was added by the failures: a good file still loads under its own token.
        #expect(try sd.loadEmbedding(learned) == "<shape>")
        #expect(message { try sd.loadEmbedding(learned) }.contains("\"<shape>\" is already in the tokenizer's vocabulary"))
    }

    /// Our writers' files read back to the same rows (and `torch.load` reads the .pt: make_token_fixtures.py
    /// --check-ours loads these into diffusers).
    @Test func writersRoundTrip() throws {
        let ours = FileManager.default.temporaryDirectory.appendingPathComponent("textcraftor-token-ours")
        try FileManager.default.createDirectory(at: ours, withIntermediateDirectories: true)
        func read(_ name: String) throws -> TokenEmbedding { try TokenEmbedding.read(Self.folder.appendingPathComponent(name)) }
        let shape = try read("learned_embeds.safetensors"), one = try read("one.safetensors"), tiny = try read("tiny.pt")
        let emb = try read("emb.safetensors"), xl = try read("xl.safetensors")
        #expect(one.first.shape == [1, 32] && tiny.format == .a1111 && xl.format == .sdxl && emb.format == .a1111SafeTensors)
        try TokenEmbedding.writeDiffusers(token: "<shape>", rows: shape.first, to: ours.appendingPathComponent("learned_embeds.safetensors"))
        try TokenEmbedding.writeDiffusers(token: "<one>", rows: one.first, to: ours.appendingPathComponent("one.safetensors"))
        try TokenEmbedding.writeA1111(name: "tiny", rows: tiny.first, step: 7, checkpointName: "tiny-sd15", to: ours.appendingPathComponent("tiny.pt"))
        try TokenEmbedding.writeSafeTensors(first: emb.first, second: nil, to: ours.appendingPathComponent("emb.safetensors"))
        try TokenEmbedding.writeSafeTensors(first: xl.first, second: xl.second, to: ours.appendingPathComponent("xl.safetensors"))
        for (name, original) in [("learned_embeds.safetensors", shape), ("one.safetensors", one), ("tiny.pt", tiny),
                                 ("emb.safetensors", emb), ("xl.safetensors", xl)] {
            let back = try TokenEmbedding.read(ours.appendingPathComponent(name))
            #expect(back.format == original.format && back.token == original.token, "\(name)")
            #expect(maxAbsDifference(back.first, original.first) == 0)
            #expect((back.second == nil) == (original.second == nil))
            if let second = back.second { #expect(maxAbsDifference(second, original.second!) == 0) }
        }
        let record = try TorchCheckpoint.load(url: ours.appendingPathComponent("tiny.pt"))
        #expect(record["name"] == .string("tiny") && record["step"] == .int(7) && record["sd_checkpoint"] == PickleValue.none)
        #expect(record["string_to_token"]?["*"] == .int(265))
        #expect(record["sd_checkpoint_name"] == .string("tiny-sd15"))
    }
}
