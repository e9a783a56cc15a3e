import Foundation
import Testing

@testable import StableDiffusion

/// Fixtures/tokenizer/ids.json, written by scripts/parity/make_tokenizer_fixtures.py with transformers 4.x's slow
/// CLIPTokenizer (ftfy active).
struct TokenizerFixture: Decodable {
    struct Convention: Decodable {
        let encoded: [Int32]
        let input_ids: [Int32]
        let decoded: String
        let dropped: String?
    }
    struct Prompt: Decodable {
        let text: String
        let cleaned: String
        let sd1: Convention
        let sd2: Convention
        func convention(_ name: String) -> Convention { name == "sd1" ? sd1 : sd2 }
    }
    let transformers: String
    let max_length: Int
    let pad_token_id: [String: Int32]
    let prompts: [Prompt]

    static let shared: TokenizerFixture = {
        let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
            .appendingPathComponent("tokenizer/ids.json")
        return try! JSONDecoder().decode(TokenizerFixture.self, from: Data(contentsOf: url))
    }()
}

/// Tokenizers shared by the tests (building one parses 48894 merges).
enum Tokenizers {
    static let bundledSD1 = try! CLIPTokenizer.bundled()
    static let bundledSD2 = try! CLIPTokenizer.bundled(padToken: "!")
    /// Tokenizer folders as diffusers ships them, written from the bundled merges file.
    static let folders: URL = {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("clip-tokenizer-\(UUID().uuidString)")
        let gz = try! Data(contentsOf: CLIPTokenizer.bundledMergesURL!)
        let lines = try! gunzip(gz, file: "gz").split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        let merges = "#version: 0.2\n" + lines[1...CLIPTokenizer.mergeCount].map { String(decoding: $0, as: UTF8.self) }
            .joined(separator: "\n") + "\n"
        let tokens = bundledSD1.tokens((0..<Int32(49408)).map { $0 })
        let vocab = try! JSONEncoder().encode(Dictionary(uniqueKeysWithValues: tokens.enumerated().map { ($1, $0) }))
        for (name, pad) in [("sd1", "<|endoftext|>"), ("sd2", "!")] {
            let folder = root.appendingPathComponent(name)
            try! FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try! vocab.write(to: folder.appendingPathComponent("vocab.json"))
            try! Data(merges.utf8).write(to: folder.appendingPathComponent("merges.txt"))
            let special = """
                {"bos_token": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, \
                "single_word": false}, "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "\(pad)"}
                """
            try! Data(special.utf8).write(to: folder.appendingPathComponent("special_tokens_map.json"))
            // The config's pad token loses to special_tokens_map.json, as in transformers.
            let config = #"{"model_max_length": 77, "pad_token": "<|startoftext|>", "tokenizer_class": "CLIPTokenizer"}"#
            try! Data(config.utf8).write(to: folder.appendingPathComponent("tokenizer_config.json"))
        }
        return root
    }()
    static let folderSD1 = try! CLIPTokenizer(directory: folders.appendingPathComponent("sd1"))
    static let folderSD2 = try! CLIPTokenizer(directory: folders.appendingPathComponent("sd2"))

    static func named(_ name: String) -> CLIPTokenizer {
        switch name {
        case "bundled sd1": bundledSD1
        case "bundled sd2": bundledSD2
        case "folder sd1": folderSD1
        default: folderSD2
        }
    }
}

@Suite struct CLIPTokenizerTests {
    let fixture = TokenizerFixture.shared

    @Test func vocabularyAndSpecialTokens() throws {
        for tokenizer in [Tokenizers.bundledSD1, Tokenizers.folderSD1] {
            #expect(tokenizer.vocabularySize == 49408)
            #expect(tokenizer.bosTokenId == 49406)
            #expect(tokenizer.eosTokenId == 49407)
            #expect(tokenizer.padTokenId == 49407)
            #expect(tokenizer.unknownTokenId == 49407)
            #expect(tokenizer.maxLength == 77)
            #expect(
                tokenizer.tokens([0, 93, 187, 188, 255, 256, 511, 512, 49405, 49406, 49407])
                    == ["!", "~", "ÿ", "Ā", "Ń", "!</w>", "Ń</w>", "in", "jekyll</w>", "<|startoftext|>", "<|endoftext|>"])
        }
        #expect(Tokenizers.bundledSD2.padTokenId == 0)
        #expect(Tokenizers.folderSD2.padTokenId == 0)
        #expect(fixture.pad_token_id == ["sd1": 49407, "sd2": 0])
        #expect(fixture.prompts.count >= 60)
    }

    /// `write(to:)` gives a folder diffusers would ship: the same merges.txt byte for byte and the same vocab.json
    /// mapping as the folders above, and it reads back to a tokenizer that encodes every fixture prompt alike.
    @Test func writtenFolderReadsBackTheSame() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("written-tokenizer-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        try Tokenizers.bundledSD2.write(to: folder)
        let reference = Tokenizers.folders.appendingPathComponent("sd2")
        #expect(try Data(contentsOf: folder.appendingPathComponent("merges.txt"))
            == Data(contentsOf: reference.appendingPathComponent("merges.txt")))
        let decode = { (url: URL) in try JSONDecoder().decode([String: Int].self, from: Data(contentsOf: url.appendingPathComponent("vocab.json"))) }
        #expect(try decode(folder) == decode(reference))
        let back = try CLIPTokenizer(directory: folder)
        #expect(back.padTokenId == 0 && back.maxLength == 77 && back.vocabularySize == 49408)
        let texts = fixture.prompts.map(\.text)
        #expect(back(texts).ids == Tokenizers.bundledSD2(texts).ids)
    }

    @Test func knownPrompt() {
        let (ids, truncated) = Tokenizers.bundledSD1(["a photo of an astronaut riding a horse"])
        #expect(Array(ids[0].prefix(10)) == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407])
        #expect(ids[0].count == 77 && ids[0][10...].allSatisfy { $0 == 49407 })
        #expect(truncated == [nil])
    }

    @Test(arguments: ["bundled sd1", "bundled sd2", "folder sd1", "folder sd2"])
    func idsMatchTransformers(_ name: String) {
        let tokenizer = Tokenizers.named(name)
        let convention = String(name.suffix(3))
        let pad = fixture.pad_token_id[convention]!
        let prompts = fixture.prompts
        let (batch, truncated) = tokenizer.tokenize(prompts.map(\.text))
        for (index, prompt) in prompts.enumerated() {
            let expected = prompt.convention(convention)
            let padded = expected.input_ids + Array(repeating: pad, count: fixture.max_length - expected.input_ids.count)
            #expect(batch[index] == padded, "\(name): \(prompt.text.debugDescription)")
            #expect(tokenizer.encode(prompt.text) == expected.encoded, "\(name): \(prompt.text.debugDescription)")
            #expect(truncated[index] == expected.dropped, "\(name): \(prompt.text.debugDescription)")
        }
    }

    @Test func cleaningMatchesFtfy() {
        for prompt in fixture.prompts {
            #expect(CLIPTokenizer.cleanText(prompt.text) == prompt.cleaned, "\(prompt.text.debugDescription)")
            // Python compares code points; so must this test (Swift's == is canonical equivalence).
            #expect(Array(CLIPTokenizer.cleanText(prompt.text).unicodeScalars) == Array(prompt.cleaned.unicodeScalars))
        }
    }

    @Test func decodeMatchesTransformers() {
        for prompt in fixture.prompts {
            for convention in ["sd1", "sd2"] {
                let tokenizer = Tokenizers.named("bundled " + convention)
                let expected = prompt.convention(convention)
                #expect(
                    Array(tokenizer.decode(expected.encoded).unicodeScalars) == Array(expected.decoded.unicodeScalars),
                    "\(convention): \(prompt.text.debugDescription)")
            }
        }
    }

    @Test func decodeRoundTrips() {
        let tokenizer = Tokenizers.bundledSD1
        let plain = "a photo of an astronaut riding a horse on mars"
        #expect(tokenizer.decode(tokenizer.encode(plain)) == plain)
        #expect(tokenizer.decode(tokenizer.encode("A  Photo\tOF a Cat")) == "a photo of a cat")
        // Punctuation and contractions come back as words of their own; encoding that text again gives the same ids.
        #expect(tokenizer.decode(tokenizer.encode("it's a cat, isn't it?")) == "it 's a cat , isn 't it ?")
        var checked = 0
        for prompt in fixture.prompts where prompt.text.unicodeScalars.allSatisfy(\.isASCII) {
            let ids = tokenizer.encode(prompt.text)
            #expect(tokenizer.encode(tokenizer.decode(ids)) == ids, "\(prompt.text.debugDescription)")
            checked += 1
        }
        #expect(checked >= 50)
        let padded = tokenizer(["A Cat!"], maxLength: 10).ids[0]
        #expect(padded == [49406, 320, 2368, 256, 49407, 49407, 49407, 49407, 49407, 49407])
        #expect(tokenizer.decode(padded) == "<|startoftext|>a cat ! <|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|><|endoftext|>")
        #expect(tokenizer.decode(padded, skipSpecialTokens: true) == "a cat !")
        #expect(tokenizer.tokens([2368, 99999]) == ["cat</w>", "<unknown id 99999>"])
    }

    @Test func truncationKeepsTheEndTokenAndReportsTheDroppedWords() {
        let tokenizer = Tokenizers.bundledSD1
        let prompt = "a " + Array(repeating: "word", count: 80).joined(separator: " ")  // 81 one-token words
        let (ids, truncated) = tokenizer([prompt, "a cat"])
        #expect(ids[0].count == 77 && ids[0].first == 49406 && ids[0].last == 49407)
        #expect(ids[0][75] == 2653)  // "word</w>", the 75th word
        #expect(truncated == ["word word word word word word", nil])
        // Shorter limit, no padding.
        let (short, dropped) = tokenizer(["a photo of an astronaut riding a horse"], maxLength: 6, padding: false)
        #expect(short == [[49406, 320, 1125, 539, 550, 49407]])
        #expect(dropped == ["astronaut riding a horse"])
        let (unpadded, none) = tokenizer(["a cat", ""], padding: false)
        #expect(unpadded == [[49406, 320, 2368, 49407], [49406, 49407]])
        #expect(none == [nil, nil])
    }

    @Test func sd2PadTokenSplitsExclamationMarks() {
        // transformers makes the pad token "!" an added token: every "!" is id 0, never "!</w>" (256) or "!!!</w>".
        #expect(Tokenizers.bundledSD1.encode("wow!!!") == [2781, 995])
        #expect(Tokenizers.bundledSD2.encode("wow!!!") == [2781, 0, 0, 0])
        #expect(Tokenizers.bundledSD1.encode("ＷＯＷ！") == [2781, 256])
        #expect(Tokenizers.bundledSD2.encode("ＷＯＷ！") == [2781, 256])  // the full-width "!" is split after cleaning
    }

    @Test func cachedAndConcurrentTokenizationAgree() async {
        let tokenizer = Tokenizers.bundledSD1
        let prompts = fixture.prompts.map(\.text)
        let first = tokenizer(prompts).ids
        let results = await withTaskGroup(of: [[Int32]].self) { group in
            for _ in 0..<4 { group.addTask { tokenizer(prompts).ids } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 4 && results.allSatisfy { $0 == first })
    }
}

@Suite struct CLIPTokenizerFileTests {
    /// A tiny tokenizer folder: byte characters for "l", "o", "w", two merges, the specials.
    func tinyFolder(
        vocab: String? = nil, merges: String? = "#version: 0.2\nl o\nlo w</w>\n", config: String? = nil,
        specialTokens: String? = nil
    ) throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tiny-tokenizer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let defaultVocab = #"""
            {"l": 0, "o": 1, "w": 2, "l</w>": 3, "o</w>": 4, "w</w>": 5, "lo": 6, "low</w>": 7, "!": 8,
             "<|startoftext|>": 9, "<|endoftext|>": 10}
            """#
        try Data((vocab ?? defaultVocab).utf8).write(to: folder.appendingPathComponent("vocab.json"))
        if let merges { try Data(merges.utf8).write(to: folder.appendingPathComponent("merges.txt")) }
        if let config { try Data(config.utf8).write(to: folder.appendingPathComponent("tokenizer_config.json")) }
        if let specialTokens {
            try Data(specialTokens.utf8).write(to: folder.appendingPathComponent("special_tokens_map.json"))
        }
        return folder
    }

    @Test func tinyVocabulary() throws {
        let tokenizer = try CLIPTokenizer(
            directory: tinyFolder(config: #"{"model_max_length": 6, "pad_token": "!"}"#))
        #expect(tokenizer.vocabularySize == 11)
        #expect([tokenizer.bosTokenId, tokenizer.eosTokenId, tokenizer.padTokenId, tokenizer.unknownTokenId] == [9, 10, 8, 10])
        #expect(tokenizer.maxLength == 6)
        // "low" merges to one token; "lol" to "lo" and "l</w>"; "wool" has "wo", which is no merge; "x" is unknown.
        #expect(tokenizer.encode("LOW lol wool x") == [7, 6, 3, 2, 1, 1, 3, 10])
        #expect(tokenizer.tokens(tokenizer.encode("lol")) == ["lo", "l</w>"])
        let (ids, truncated) = tokenizer(["low low low low low", "low"])
        #expect(ids == [[9, 7, 7, 7, 7, 10], [9, 7, 10, 8, 8, 8]])
        #expect(truncated == ["low", nil])
    }

    @Test func missingFiles() throws {
        let nowhere = FileManager.default.temporaryDirectory.appendingPathComponent("no-such-tokenizer-\(UUID().uuidString)")
        #expect(throws: StableDiffusionError.missingFile(nowhere.path)) { try CLIPTokenizer(directory: nowhere) }
        let noMerges = try tinyFolder(merges: nil)
        #expect(throws: StableDiffusionError.missingFile(noMerges.appendingPathComponent("merges.txt").path)) {
            try CLIPTokenizer(directory: noMerges)
        }
        #expect(
            StableDiffusionError.missingFile(noMerges.appendingPathComponent("merges.txt").path).description
                == "\(noMerges.path)/merges.txt: no such file or folder")
        let noVocab = try tinyFolder()
        try FileManager.default.removeItem(at: noVocab.appendingPathComponent("vocab.json"))
        #expect(throws: StableDiffusionError.missingFile(noVocab.appendingPathComponent("vocab.json").path)) {
            try CLIPTokenizer(directory: noVocab)
        }
        let noGz = nowhere.appendingPathComponent("bpe.txt.gz")
        #expect(throws: StableDiffusionError.missingFile(noGz.path)) { try CLIPTokenizer(openCLIPMerges: noGz) }
    }

    @Test func malformedFiles() throws {
        let badMerges = try tinyFolder(merges: "#version: 0.2\nl o\nl o w\n")
        let mergesPath = badMerges.appendingPathComponent("merges.txt").path
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: mergesPath, message: "line 3: expected two symbols separated by a space, found \"l o w\"")
        ) { try CLIPTokenizer(directory: badMerges) }
        // Line numbers are the file's own, blank lines before the header included.
        let late = try tinyFolder(merges: "\n\n#version: 0.2\nl o\nlo\n")
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: late.appendingPathComponent("merges.txt").path,
                message: "line 5: expected two symbols separated by a space, found \"lo\"")
        ) { try CLIPTokenizer(directory: late) }

        let notJSON = try tinyFolder(vocab: "{\"l\": 0,")
        let vocabPath = notJSON.appendingPathComponent("vocab.json").path
        #expect(throws: StableDiffusionError.invalidTokenizer(file: vocabPath, message: "not a JSON object of tokens to ids")) {
            try CLIPTokenizer(directory: notJSON)
        }
        #expect(
            StableDiffusionError.invalidTokenizer(file: vocabPath, message: "not a JSON object of tokens to ids")
                .description == "\(vocabPath): not a JSON object of tokens to ids")

        let noSpecials = try tinyFolder(vocab: #"{"l": 0, "o": 1, "<|endoftext|>": 2}"#)
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: noSpecials.appendingPathComponent("vocab.json").path,
                message: "has no token \"<|startoftext|>\" (the bos token)")
        ) { try CLIPTokenizer(directory: noSpecials) }

        let sharedId = try tinyFolder(vocab: #"{"l": 0, "o": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}"#)
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: sharedId.appendingPathComponent("vocab.json").path, message: "id 0 is given to both \"l\" and \"o\"")
        ) { try CLIPTokenizer(directory: sharedId) }

        let badPad = try tinyFolder(specialTokens: #"{"pad_token": "<pad>"}"#)
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: badPad.appendingPathComponent("vocab.json").path, message: "has no token \"<pad>\" (the pad token)")
        ) { try CLIPTokenizer(directory: badPad) }

        let badConfig = try tinyFolder(config: "model_max_length: 77")
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: badConfig.appendingPathComponent("tokenizer_config.json").path, message: "not a JSON object")
        ) { try CLIPTokenizer(directory: badConfig) }

        let shortLength = try tinyFolder(config: #"{"model_max_length": 1}"#)
        #expect(
            throws: StableDiffusionError.invalidTokenizer(
                file: shortLength.appendingPathComponent("tokenizer_config.json").path,
                message: "model_max_length 1 is not a whole number of at least 2")
        ) { try CLIPTokenizer(directory: shortLength) }
    }

    /// A gzip file of `content`, in one stored (uncompressed) deflate block.
    static func gzip(_ content: [UInt8]) -> Data {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in content {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        func littleEndian(_ value: UInt32) -> [UInt8] { [0, 8, 16, 24].map { UInt8((value >> $0) & 0xFF) } }
        let length = UInt16(content.count)
        let header: [UInt8] = [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF]
        let block: [UInt8] = [1, UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8(~length >> 8)]
        return Data(header + block + content + littleEndian(~crc) + littleEndian(UInt32(content.count)))
    }

    /// A gzip file whose merges are raw binary: the error quotes a short escaped excerpt, no control bytes.
    @Test func binaryMergesAreQuotedEscaped() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("binary-gz-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let url = folder.appendingPathComponent("bpe.txt.gz")
        let binary: [UInt8] = [0x1B, 0x5B, 0x32, 0x4A, 0x00, 0x07, 0xFF, 0xFE, 0x08, 0x20, 0x42, 0x20, 0x43, 0x20] + Array(repeating: 0x41, count: 500)
        try Self.gzip(Array("#version: 0.2\n".utf8) + binary).write(to: url)
        do {
            _ = try CLIPTokenizer(openCLIPMerges: url)
            Issue.record("binary merges were read")
        } catch {
            let text = "\(error)"
            #expect(text.hasSuffix("line 2: expected two symbols separated by a space, found "
                + "\"\\u{1b}[2J\\u{0}\\u{7}\\u{fffd}\\u{fffd}\\u{8} B C " + String(repeating: "A", count: 46) + "…(454 more characters)\""), "\(text)")
            #expect(!text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F || $0.value == 0xFFFD }, "\(text)")
            #expect(text.count < 200 + url.path.count, "\(text)")
        }
    }

    /// Inflating stops at the limit: a small file that would inflate to gigabytes is refused, not held in memory.
    @Test func gzipInflatesAtMostTheLimit() throws {
        let data = Self.gzip(Array(repeating: 0x61, count: 3000))
        #expect(throws: StableDiffusionError.invalidTokenizer(file: "big.gz", message: "inflates to more than 1000 bytes")) {
            try gunzip(data, file: "big.gz", limit: 1000)
        }
        #expect(try gunzip(data, file: "big.gz", limit: 3000).count == 3000)
    }

    @Test func badGzip() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bad-gz-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let plain = folder.appendingPathComponent("plain.txt.gz")
        try Data("#version: 0.2\ni n\n".utf8).write(to: plain)
        #expect(throws: StableDiffusionError.invalidTokenizer(file: plain.path, message: "not a gzip file")) {
            try CLIPTokenizer(openCLIPMerges: plain)
        }
        let truncated = folder.appendingPathComponent("truncated.txt.gz")
        try Data(contentsOf: CLIPTokenizer.bundledMergesURL!).prefix(5000).write(to: truncated)
        #expect(
            throws: StableDiffusionError.invalidTokenizer(file: truncated.path, message: "corrupt or truncated gzip data")
        ) { try CLIPTokenizer(openCLIPMerges: truncated) }
    }
}
