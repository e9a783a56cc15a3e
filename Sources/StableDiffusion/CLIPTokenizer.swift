// CLIP's byte-level BPE tokenizer, exact to the one Stable Diffusion was trained and is run with: OpenAI CLIP's
// `SimpleTokenizer` as transformers 4.x's slow `CLIPTokenizer` implements it with ftfy installed (diffusers loads
// that class from a model folder's `tokenizer/`). Parity with it is tested on the prompts of
// scripts/parity/make_tokenizer_fixtures.py, for both pad conventions.
//
// The steps, as in transformers:
// 1. The text is split at the special tokens (bos, eos, unk, pad) written literally in it, before any cleaning; each
//    becomes its own id. With SD2's pad token "!" this makes every "!" of a prompt the token "!" (id 0) instead of
//    "!</w>" or a run like "!!!</w>", as transformers does for SD2 folders.
// 2. Each piece between them is cleaned (TextCleaning.swift: ftfy.fix_text, whitespace collapsed, lower-cased; what
//    of ftfy is left out is listed there; transformers 5 dropped the ftfy cleaning, this follows the tokenizer of
//    training time) and split by CLIP's pattern
//    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`.
// 3. Each piece's UTF-8 bytes become the printable characters of GPT-2's byte table, "</w>" is put on the last one,
//    and the pair with the lowest merge rank is merged (every occurrence, left to right) until none is left.
//    Results are cached per word.
// 4. Model input: `<|startoftext|>`, at most maxLength - 2 ids, `<|endoftext|>`, then the pad id up to maxLength
//    (transformers' `truncation=True, padding="max_length"`).
//
// Where the vocabulary comes from:
// - a tokenizer folder (`vocab.json`, `merges.txt`, optionally `special_tokens_map.json` and `tokenizer_config.json`,
//   the first winning for special tokens as in transformers; defaults are CLIP's: bos `<|startoftext|>`, eos/unk/pad
//   `<|endoftext|>`, and a model_max_length of 77 where the config has none). As transformers does, only the first
//   48894 merges after the header line are used. Unlike transformers, which would add them as new tokens, special
//   tokens missing from vocab.json are an error.
// - open_clip's merges file `bpe_simple_vocab_16e6.txt.gz` (shipped as a resource), from which the 49408-token
//   vocabulary is derived as OpenAI CLIP does: the 256 byte characters, the same with "</w>", the first 48894 merges
//   joined, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407). It is read with zlib (the SystemZlib target;
//   ZIPFoundation already needs zlib on Linux, so the build needs nothing new).
import Foundation
import SystemZlib
import Torch

public struct CLIPTokenizer: Sendable {
    public static let startOfText = "<|startoftext|>"
    public static let endOfText = "<|endoftext|>"
    /// How many merges CLIP uses: 49152 - 256 - 2 (the vocabulary less the byte characters and the two specials).
    public static let mergeCount = 49152 - 256 - 2

    public let bosTokenId: Int32
    public let eosTokenId: Int32
    public let padTokenId: Int32
    public let unknownTokenId: Int32
    /// transformers' `model_max_length`: the length of the model input, special tokens included (77).
    public let maxLength: Int
    /// The number of tokens in the vocabulary (transformers' `vocab_size`): 49408 for CLIP.
    public var vocabularySize: Int { vocabulary.count }

    private var vocabulary: [String: Int32]
    private var tokenStrings: [Int32: String]
    let bpe: BytePairEncoding
    /// The merges in rank order, kept to write the tokenizer back out (`write(to:)`).
    private let merges: [(String, String)]
    private let specialTokens: (bos: String, eos: String, unknown: String, pad: String)
    /// The special tokens, and the tokens `adding(token:vectors:)` added, that the text is split at before cleaning,
    /// longest first, each with the ids it stands for (an added token of several vectors stands for all of them).
    private var addedTokens: [(scalars: [Unicode.Scalar], ids: [Int32])]

    // MARK: - Loading

    /// Loads a tokenizer folder, e.g. a diffusers model folder's `tokenizer/`.
    public init(directory: URL) throws {
        guard FileManager.default.fileExists(atPath: directory.path) else {
            throw StableDiffusionError.missingFile(directory.path)
        }
        let vocabURL = directory.appendingPathComponent("vocab.json")
        let mergesURL = directory.appendingPathComponent("merges.txt")
        let vocabulary = try Self.readVocabulary(vocabURL)
        let merges = try Self.readMerges(mergesURL)
        let config = try Self.readOptionalJSON(directory.appendingPathComponent("tokenizer_config.json"))
        let specialMap = try Self.readOptionalJSON(directory.appendingPathComponent("special_tokens_map.json"))
        func special(_ key: String, _ fallback: String) throws -> String {
            for (object, url) in [(specialMap, "special_tokens_map.json"), (config, "tokenizer_config.json")] {
                guard let value = object?[key], !(value is NSNull) else { continue }
                if let text = value as? String { return text }
                if let text = (value as? [String: Any])?["content"] as? String { return text }
                throw StableDiffusionError.invalidTokenizer(
                    file: directory.appendingPathComponent(url).path,
                    message: "key \"\(key)\" is neither a string nor an object with \"content\"")
            }
            return fallback
        }
        var maxLength = 77
        if let value = config?["model_max_length"] {
            // transformers writes a huge number (VERY_LARGE_INTEGER) for "no limit"; CLIP's is 77 then.
            guard let number = value as? NSNumber, number.doubleValue == number.doubleValue.rounded(),
                number.doubleValue >= 2
            else {
                throw StableDiffusionError.invalidTokenizer(
                    file: directory.appendingPathComponent("tokenizer_config.json").path,
                    message: "model_max_length \(value) is not a whole number of at least 2")
            }
            if number.doubleValue < 1e9 { maxLength = number.intValue }
        }
        try self.init(
            vocabulary: vocabulary, vocabularyFile: vocabURL.path, merges: merges,
            bos: special("bos_token", Self.startOfText), eos: special("eos_token", Self.endOfText),
            unknown: special("unk_token", Self.endOfText), pad: special("pad_token", Self.endOfText),
            maxLength: maxLength)
    }

    /// Builds the tokenizer from open_clip's gzip merges file, deriving the vocabulary as OpenAI CLIP does. SD1.x
    /// pads with `<|endoftext|>`, SD2 with `"!"`.
    public init(openCLIPMerges url: URL, padToken: String = Self.endOfText, maxLength: Int = 77) throws {
        guard let compressed = FileManager.default.contents(atPath: url.path) else {
            throw StableDiffusionError.missingFile(url.path)
        }
        let data = try gunzip(compressed, file: url.path)
        // OpenAI: merges = text.split('\n')[1:49152-256-2+1], each `tuple(merge.split())`.
        var lines = data.split(separator: UInt8(ascii: "\n"), maxSplits: Self.mergeCount + 1, omittingEmptySubsequences: false)
        lines = Array(lines.dropFirst().prefix(Self.mergeCount))
        var merges: [(String, String)] = []
        merges.reserveCapacity(lines.count)
        for (index, line) in lines.enumerated() {
            merges.append(try Self.parseMerge(String(decoding: line, as: UTF8.self), line: index + 2, file: url.path))
        }
        var tokens = ByteTable.characters.map { String($0) }
        tokens += ByteTable.characters.map { String($0) + "</w>" }
        tokens += merges.map { $0.0 + $0.1 }
        tokens += [Self.startOfText, Self.endOfText]
        var vocabulary: [String: Int32] = [:]
        vocabulary.reserveCapacity(tokens.count)
        for (id, token) in tokens.enumerated() { vocabulary[token] = Int32(id) }  // a repeated token keeps its last id
        try self.init(
            vocabulary: vocabulary, vocabularyFile: url.path, merges: merges, bos: Self.startOfText,
            eos: Self.endOfText, unknown: Self.endOfText, pad: padToken, maxLength: maxLength)
    }

    /// The tokenizer from the merges file this library ships (`Resources/bpe_simple_vocab_16e6.txt.gz`).
    public static func bundled(padToken: String = Self.endOfText, maxLength: Int = 77) throws -> CLIPTokenizer {
        guard let url = bundledMergesURL else {
            throw StableDiffusionError.missingFile("StableDiffusion resource Resources/bpe_simple_vocab_16e6.txt.gz")
        }
        return try CLIPTokenizer(openCLIPMerges: url, padToken: padToken, maxLength: maxLength)
    }

    static var bundledMergesURL: URL? {
        Bundle.module.url(forResource: "bpe_simple_vocab_16e6.txt", withExtension: "gz", subdirectory: "Resources")
    }

    private init(
        vocabulary: [String: Int32], vocabularyFile: String, merges: [(String, String)], bos: String, eos: String,
        unknown: String, pad: String, maxLength: Int
    ) throws {
        func id(_ token: String, _ role: String) throws -> Int32 {
            guard let id = vocabulary[token] else {
                throw StableDiffusionError.invalidTokenizer(
                    file: vocabularyFile, message: "has no token \"\(token)\" (the \(role) token)")
            }
            return id
        }
        guard maxLength >= 2 else {
            throw StableDiffusionError.invalidArgument("maxLength \(maxLength): must leave room for the start and end tokens")
        }
        bosTokenId = try id(bos, "bos")
        eosTokenId = try id(eos, "eos")
        unknownTokenId = try id(unknown, "unk")
        padTokenId = try id(pad, "pad")
        self.maxLength = maxLength
        self.vocabulary = vocabulary
        tokenStrings = Dictionary(vocabulary.map { ($0.value, $0.key) }, uniquingKeysWith: { first, _ in first })
        bpe = BytePairEncoding(vocabulary: vocabulary, merges: merges, unknownId: unknownTokenId)
        self.merges = merges
        specialTokens = (bos, eos, unknown, pad)
        var added: [(scalars: [Unicode.Scalar], ids: [Int32])] = []
        for (token, id) in [(bos, bosTokenId), (eos, eosTokenId), (unknown, unknownTokenId), (pad, padTokenId)]
        where !token.isEmpty && !added.contains(where: { $0.ids == [id] }) {
            added.append((Array(token.unicodeScalars), [id]))
        }
        addedTokens = added.sorted { $0.scalars.count > $1.scalars.count }
    }

    /// Writes the tokenizer as a transformers tokenizer folder (`vocab.json` in id order, `merges.txt` with its
    /// `#version` header, `tokenizer_config.json`, `special_tokens_map.json`): what diffusers keeps in a model's
    /// `tokenizer/`, and what `init(directory:)` reads back to the same tokenizer. Each file is written atomically.
    public func write(to directory: URL) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func quoted(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
                }
            }
            return out + "\""
        }
        let entries = vocabulary.sorted { $0.value < $1.value }.map { "\(quoted($0.key)): \($0.value)" }
        let vocab = "{" + entries.joined(separator: ", ") + "}"
        try Data(vocab.utf8).write(to: directory.appendingPathComponent("vocab.json"), options: .atomic)
        let mergeLines = ["#version: 0.2"] + merges.map { "\($0.0) \($0.1)" }
        try Data((mergeLines.joined(separator: "\n") + "\n").utf8)
            .write(to: directory.appendingPathComponent("merges.txt"), options: .atomic)
        let special: [String: Any] = [
            "bos_token": specialTokens.bos, "eos_token": specialTokens.eos, "unk_token": specialTokens.unknown,
            "pad_token": specialTokens.pad,
        ]
        var config = special
        config["model_max_length"] = maxLength
        config["tokenizer_class"] = "CLIPTokenizer"
        config["do_lower_case"] = true
        config["errors"] = "replace"
        for (object, name) in [(special, "special_tokens_map.json"), (config, "tokenizer_config.json")] {
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: directory.appendingPathComponent(name), options: .atomic)
        }
    }

    // MARK: - Added tokens (textual inversion)

    /// The names of a token of `vectors` vectors, as diffusers' `load_textual_inversion` adds them: `token`,
    /// `token_1`, ..., `token_{N-1}`.
    public static func vectorNames(_ token: String, vectors: Int) -> [String] {
        [token] + (1..<max(vectors, 1)).map { "\(token)_\($0)" }
    }

    /// Whether `word` is already a token: in the vocabulary (as itself or as a whole word, `word</w>`), or added.
    public func hasToken(_ word: String) -> Bool {
        vocabulary[word] != nil || vocabulary[word + "</w>"] != nil
            || addedTokens.contains { $0.scalars.elementsEqual(word.unicodeScalars) }
    }

    /// A copy with `token` added as transformers' `add_tokens` adds one: its vectors get the ids after the vocabulary
    /// (`vocabularySize`, ..., in the order of `vectorNames`), and it is matched whole in the raw text before any
    /// cleaning or BPE, like the special tokens. `token` itself stands for all its vectors' ids in order (diffusers
    /// rewrites a prompt's `token` to `token token_1 ...`); each `token_k` also stands for its own. Returns the copy
    /// and the ids. A token that is empty, holds whitespace, or is already a token (`hasToken`) is an error.
    public func adding(token: String, vectors: Int) throws -> (tokenizer: CLIPTokenizer, ids: [Int32]) {
        guard vectors >= 1 else { throw StableDiffusionError.invalidArgument("token \(token): needs at least one vector, found \(vectors)") }
        guard !token.isEmpty, !token.unicodeScalars.contains(where: \.properties.isWhitespace) else {
            throw StableDiffusionError.invalidArgument("token \"\(token)\": must be one word without whitespace")
        }
        let names = Self.vectorNames(token, vectors: vectors)
        if let taken = names.first(where: hasToken) {
            throw StableDiffusionError.invalidArgument(
                "token \"\(taken)\" is already in the tokenizer's vocabulary: choose another, e.g. <\(token.trimmingCharacters(in: CharacterSet(charactersIn: "<>")))>")
        }
        var copy = self
        let ids = (0..<names.count).map { Int32(vocabularySize + $0) }
        for (name, id) in zip(names, ids) {
            copy.vocabulary[name] = id
            copy.tokenStrings[id] = name
            copy.addedTokens.append((Array(name.unicodeScalars), [id]))
        }
        copy.addedTokens[copy.addedTokens.count - names.count].ids = ids
        copy.addedTokens.sort { $0.scalars.count > $1.scalars.count }
        return (copy, ids)
    }

    // MARK: - Encoding

    /// The ids of `text`, without start, end or padding tokens and without truncation.
    public func encode(_ text: String) -> [Int32] {
        let scalars = Array(text.unicodeScalars)
        var ids: [Int32] = []
        var pieceStart = 0
        var i = 0
        while i < scalars.count {
            if let (length, tokenIds) = addedToken(in: scalars, at: i) {
                encodePiece(scalars[pieceStart..<i], into: &ids)
                ids += tokenIds
                i += length
                pieceStart = i
            } else {
                i += 1
            }
        }
        encodePiece(scalars[pieceStart...], into: &ids)
        return ids
    }

    /// Model inputs for a batch of prompts: `<|startoftext|>`, the prompt's ids truncated to `maxLength - 2`,
    /// `<|endoftext|>`, padded to `maxLength` with the pad token when `padding`. `truncated[i]` is the text of what
    /// truncation dropped from prompt i (decoded like `decode`, for the warning diffusers also gives), nil when nothing
    /// was dropped.
    public func tokenize(
        _ prompts: [String], maxLength: Int? = nil, padding: Bool = true
    ) -> (ids: [[Int32]], truncated: [String?]) {
        let length = maxLength ?? self.maxLength
        precondition(length >= 2, "maxLength \(length) leaves no room for the start and end tokens")
        var batch: [[Int32]] = []
        var truncated: [String?] = []
        for prompt in prompts {
            let content = encode(prompt)
            let kept = min(content.count, length - 2)
            var ids = [bosTokenId] + content[..<kept] + [eosTokenId]
            if padding { ids += Array(repeating: padTokenId, count: length - ids.count) }
            batch.append(ids)
            truncated.append(kept < content.count ? decode(Array(content[kept...])) : nil)
        }
        return (batch, truncated)
    }

    public func callAsFunction(
        _ prompts: [String], maxLength: Int? = nil, padding: Bool = true
    ) -> (ids: [[Int32]], truncated: [String?]) {
        tokenize(prompts, maxLength: maxLength, padding: padding)
    }

    private func addedToken(in scalars: [Unicode.Scalar], at index: Int) -> (length: Int, ids: [Int32])? {
        for token in addedTokens where index + token.scalars.count <= scalars.count {
            if scalars[index..<index + token.scalars.count].elementsEqual(token.scalars) {
                return (token.scalars.count, token.ids)
            }
        }
        return nil
    }

    private func encodePiece(_ piece: ArraySlice<Unicode.Scalar>, into ids: inout [Int32]) {
        guard !piece.isEmpty else { return }
        let text = TextCleaning.clean(Array(piece))
        for range in Self.splitWords(text) {
            ids += bpe.encode(word: Array(TextCleaning.string(text[range]).utf8))
        }
    }

    /// The matches of CLIP's pattern, in order (the regex module's `findall`: at each position the first alternative
    /// that matches, greedy; `\s` is White_Space). The pattern is compiled with IGNORECASE, which still matters on
    /// lower-cased text: simple case folding makes "ſ" (U+017F) match "s", so "'ſ" is a contraction like "'s".
    static func splitWords(_ text: [Unicode.Scalar]) -> [Range<Int>] {
        let specials = [Array(startOfText.unicodeScalars), Array(endOfText.unicodeScalars)]
        let contractions: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }
        func hasPrefix(_ prefix: [Unicode.Scalar], at index: Int) -> Bool {
            index + prefix.count <= text.count && text[index..<index + prefix.count].elementsEqual(prefix) {
                foldsTo($0, $1)
            }
        }
        var words: [Range<Int>] = []
        var i = 0
        while i < text.count {
            let c = text[i]
            if c == "<", let special = specials.first(where: { hasPrefix($0, at: i) }) {
                words.append(i..<i + special.count)
                i += special.count
            } else if c == "'", let contraction = contractions.first(where: { hasPrefix($0, at: i + 1) }) {
                words.append(i..<i + 1 + contraction.count)
                i += 1 + contraction.count
            } else if isLetter(c) {
                var j = i + 1
                while j < text.count && isLetter(text[j]) { j += 1 }
                words.append(i..<j)
                i = j
            } else if isNumber(c) {
                words.append(i..<i + 1)
                i += 1
            } else if isOther(c) {
                var j = i + 1
                while j < text.count && isOther(text[j]) { j += 1 }
                words.append(i..<j)
                i = j
            } else {
                i += 1  // white space, or U+0345 (see isOther): no alternative matches, findall moves on
            }
        }
        return words
    }

    /// Whether text scalar `c` matches pattern scalar `p` (ASCII) under simple case folding: the ASCII letters either
    /// way, and the two non-ASCII scalars that fold to ASCII letters, "ſ" → "s" and the Kelvin sign → "k".
    private static func foldsTo(_ c: Unicode.Scalar, _ p: Unicode.Scalar) -> Bool {
        if c == p { return true }
        let lower = p.value | 0x20
        guard ("a"..."z").contains(Unicode.Scalar(lower)!) else { return false }
        return (c.isASCII && c.value | 0x20 == lower) || (c == "\u{017F}" && lower == 0x73)
            || (c == "\u{212A}" && lower == 0x6B)
    }

    /// `[^\s\p{L}\p{N}]` under IGNORECASE. The regex module excludes a character when any of its case variants is in
    /// the class; the one character this changes is U+0345 COMBINING GREEK YPOGEGRAMMENI (its case fold is ι), which
    /// therefore matches no alternative and is dropped, as in transformers.
    private static func isOther(_ c: Unicode.Scalar) -> Bool {
        !c.properties.isWhitespace && !isLetter(c) && !isNumber(c) && c != "\u{0345}"
    }

    private static func isLetter(_ c: Unicode.Scalar) -> Bool {
        if c.isASCII { return ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    private static func isNumber(_ c: Unicode.Scalar) -> Bool {
        if c.isASCII { return ("0"..."9").contains(c) }
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    // MARK: - Decoding

    /// The vocabulary strings of `ids` (byte characters, "</w>" ending a word); "<unknown id N>" for ids outside it.
    public func tokens(_ ids: [Int32]) -> [String] {
        ids.map { tokenStrings[$0] ?? "<unknown id \($0)>" }
    }

    /// Text of `ids` as transformers' `convert_tokens_to_string`: bytes decoded as UTF-8 (invalid sequences become
    /// U+FFFD), "</w>" becomes a space, ends stripped. `skipSpecialTokens` drops bos, eos, unk and pad ids (with
    /// SD2's pad "!" that is every "!" token, as in transformers). Ids outside the vocabulary are skipped.
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) -> String {
        let special: Set<Int32> = [bosTokenId, eosTokenId, unknownTokenId, padTokenId]
        var bytes: [UInt8] = []
        for id in ids where !(skipSpecialTokens && special.contains(id)) {
            guard let token = tokenStrings[id] else { continue }
            for scalar in token.unicodeScalars {
                if let byte = ByteTable.byte(for: scalar) { bytes.append(byte) } else { bytes += Array(String(scalar).utf8) }
            }
        }
        let text = Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)
        let endOfWord = Array("</w>".unicodeScalars)
        var spaced: [Unicode.Scalar] = []
        spaced.reserveCapacity(text.count)
        var i = 0
        while i < text.count {
            if text[i] == "<" && i + 4 <= text.count && text[i..<i + 4].elementsEqual(endOfWord) {
                spaced.append(" ")
                i += 4
            } else {
                spaced.append(text[i])
                i += 1
            }
        }
        return TextCleaning.string(TextCleaning.stripPythonSpace(spaced[...]))
    }

    /// The cleaning applied to the text between special tokens before it is split into words.
    public static func cleanText(_ text: String) -> String { TextCleaning.clean(text) }

    // MARK: - Files

    private static func readVocabulary(_ url: URL) throws -> [String: Int32] {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw StableDiffusionError.missingFile(url.path)
        }
        let vocabulary: [String: Int32]
        do {
            vocabulary = try JSONDecoder().decode([String: Int32].self, from: data)
        } catch {
            throw StableDiffusionError.invalidTokenizer(file: url.path, message: "not a JSON object of tokens to ids")
        }
        var seen: [Int32: String] = [:]
        for (token, id) in vocabulary {
            guard id >= 0 else {
                throw StableDiffusionError.invalidTokenizer(file: url.path, message: "token \"\(token)\" has a negative id \(id)")
            }
            if let other = seen.updateValue(token, forKey: id) {
                let pair = [other, token].sorted()
                throw StableDiffusionError.invalidTokenizer(
                    file: url.path, message: "id \(id) is given to both \"\(pair[0])\" and \"\(pair[1])\"")
            }
        }
        return vocabulary
    }

    /// transformers: `read().strip().split("\n")[1 : 48895]`, each `tuple(line.split())`; a line that is not two
    /// symbols is an error here.
    private static func readMerges(_ url: URL) throws -> [(String, String)] {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw StableDiffusionError.missingFile(url.path)
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw StableDiffusionError.invalidTokenizer(file: url.path, message: "not UTF-8 text")
        }
        // Python reads with universal newlines; leading blank lines vanish with strip() before the header is skipped.
        var scalars = Array(text.unicodeScalars)
        scalars = TextCleaning.stripPythonSpace(scalars[...])
        let normalized = TextCleaning.string(scalars).replacingOccurrences(of: "\r\n", with: "\n")
            .replacingOccurrences(of: "\r", with: "\n")
        var merges: [(String, String)] = []
        for (index, line) in normalized.split(separator: "\n", omittingEmptySubsequences: false).enumerated().dropFirst()
            .prefix(mergeCount)
        {
            merges.append(try parseMerge(String(line), line: index + 1 + leadingLines(text), file: url.path))
        }
        return merges
    }

    /// How many lines strip() removed from the start of the file, so that errors give the file's own line numbers.
    private static func leadingLines(_ text: String) -> Int {
        var count = 0
        for scalar in text.unicodeScalars {
            guard TextCleaning.isPythonSpace(scalar) else { break }
            if scalar == "\n" { count += 1 }
        }
        return count
    }

    private static func parseMerge(_ line: String, line number: Int, file: String) throws -> (String, String) {
        let parts = line.unicodeScalars.split(whereSeparator: { TextCleaning.isPythonSpace($0) })
        guard parts.count == 2 else {
            throw StableDiffusionError.invalidTokenizer(
                file: file, message: "line \(number): expected two symbols separated by a space, found \"\(excerpt(line))\"")
        }
        return (String(parts[0]), String(parts[1]))
    }

    private static func readOptionalJSON(_ url: URL) throws -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw StableDiffusionError.invalidTokenizer(file: url.path, message: "not a JSON object")
        }
        return object
    }
}

// MARK: - Byte-level BPE

/// GPT-2's table from bytes to printable characters: the printable Latin-1 bytes stand for themselves, the other 68
/// (controls, space, DEL, NBSP, soft hyphen) for U+0100 onwards in byte order.
enum ByteTable {
    private static let printable = Array(33...126) + Array(161...172) + Array(174...255)
    /// Byte values in vocabulary order: the printable ones, then the rest ascending (`bytes_to_unicode()`'s order).
    private static let order = printable + (0...255).filter { !printable.contains($0) }

    /// The characters in vocabulary order (ids 0...255 of CLIP's vocabulary).
    static let characters: [Unicode.Scalar] = order.enumerated().map { index, byte in
        Unicode.Scalar(index < printable.count ? UInt32(byte) : UInt32(256 + index - printable.count))!
    }

    /// The character each byte value stands for.
    static let forByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        for (byte, scalar) in zip(order, characters) { table[byte] = scalar }
        return table
    }()

    private static let byteOf: [UInt32: UInt8] = Dictionary(
        uniqueKeysWithValues: forByte.enumerated().map { ($0.element.value, UInt8($0.offset)) })

    static func byte(for scalar: Unicode.Scalar) -> UInt8? { byteOf[scalar.value] }
}

/// Merge ranks over interned symbols. Symbols are the vocabulary's strings plus any merge part or result missing from
/// it (those come out as the unknown token, as transformers' `encoder.get(token, unk)`).
struct BytePairEncoding: Sendable {
    private let byteSymbols: [Int32]
    private let finalByteSymbols: [Int32]
    /// (left symbol << 32 | right symbol) → rank; a pair listed twice keeps its last rank, as Python's dict does.
    private let ranks: [UInt64: Int32]
    private let mergedSymbol: [Int32]
    private let symbolIds: [Int32]
    private let literalSpecials: [[UInt8]: Int32]
    let cache = WordCache()

    init(vocabulary: [String: Int32], merges: [(String, String)], unknownId: Int32) {
        var symbols: [String: Int32] = [:]
        var ids: [Int32] = []
        func intern(_ token: String) -> Int32 {
            if let symbol = symbols[token] { return symbol }
            let symbol = Int32(ids.count)
            symbols[token] = symbol
            ids.append(vocabulary[token] ?? unknownId)
            return symbol
        }
        byteSymbols = ByteTable.forByte.map { intern(String($0)) }
        finalByteSymbols = ByteTable.forByte.map { intern(String($0) + "</w>") }
        var ranks: [UInt64: Int32] = [:]
        ranks.reserveCapacity(merges.count)
        var merged: [Int32] = []
        merged.reserveCapacity(merges.count)
        for (rank, (left, right)) in merges.enumerated() {
            let key = UInt64(UInt32(intern(left))) << 32 | UInt64(UInt32(intern(right)))
            ranks[key] = Int32(rank)
            merged.append(intern(left + right))
        }
        self.ranks = ranks
        mergedSymbol = merged
        symbolIds = ids
        // transformers' cache starts with these two, so they come out whole (and in the vocabulary) when the
        // lower-cased text spells them.
        literalSpecials = Dictionary(
            uniqueKeysWithValues: [CLIPTokenizer.startOfText, CLIPTokenizer.endOfText].map {
                (Array($0.utf8), vocabulary[$0] ?? unknownId)
            })
    }

    /// The ids of one pre-tokenized word, given as its UTF-8 bytes.
    func encode(word: [UInt8]) -> [Int32] {
        if let special = literalSpecials[word] { return [special] }
        if let cached = cache[word] { return cached }
        let ids = merge(initialSymbols(word)).map { symbolIds[Int($0)] }
        // Long words are rare and cheap enough to merge again; cached, 200,000 of them could fill any memory.
        if word.count <= WordCache.longestWord { cache[word] = ids }
        return ids
    }

    func initialSymbols(_ word: [UInt8]) -> [Int32] {
        var symbols = word.dropLast().map { byteSymbols[Int($0)] }
        symbols.append(finalByteSymbols[Int(word.last!)])
        return symbols
    }

    private func rankOf(_ left: Int32, _ right: Int32) -> Int32? {
        ranks[UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))]
    }

    /// transformers' BPE loop in O(n log n) rather than O(n²) (a 120,000-character word took 10 s): the symbols are a
    /// linked list and every adjacent pair sits in a heap ordered by (rank, position). Each round takes all the
    /// entries of the lowest rank, as transformers merges every occurrence of the best pair in one pass, and merges
    /// those still current left to right without overlaps; the pairs a merge makes join the heap for later rounds.
    /// Same result as `referenceMerge`, the loop it replaces.
    func merge(_ initial: [Int32]) -> [Int32] {
        var symbols = initial
        let count = symbols.count
        guard count > 1 else { return symbols }
        var next = Array(1...count)  // count: none
        var previous = Array(-1..<count - 1)
        var alive = [Bool](repeating: true, count: count)
        var heap = PairHeap()
        for i in 0..<count - 1 {
            if let rank = rankOf(symbols[i], symbols[i + 1]) { heap.push(rank: rank, position: i) }
        }
        var round: [Int] = []
        while let (best, first) = heap.pop() {
            round.removeAll(keepingCapacity: true)
            round.append(first)
            while let (rank, position) = heap.peek(), rank == best {
                _ = heap.pop()
                round.append(position)
            }
            round.sort()
            let joined = mergedSymbol[Int(best)]
            var pending: [Int] = []
            for i in round {
                let j = next[i]
                // Stale entries (a side already merged into something else) and repeats are skipped.
                guard alive[i], j < count, rankOf(symbols[i], symbols[j]) == best else { continue }
                symbols[i] = joined
                alive[j] = false
                next[i] = next[j]
                if next[j] < count { previous[next[j]] = i }
                pending.append(i)
            }
            // The pairs around each merged symbol, pushed after the round so that none of them joins it.
            for i in pending where alive[i] {
                if previous[i] >= 0, let rank = rankOf(symbols[previous[i]], symbols[i]) {
                    heap.push(rank: rank, position: previous[i])
                }
                if next[i] < count, let rank = rankOf(symbols[i], symbols[next[i]]) { heap.push(rank: rank, position: i) }
            }
        }
        var result: [Int32] = []
        var i = 0
        while i < count {
            result.append(symbols[i])
            i = next[i]
        }
        return result
    }

    /// The ids by the quadratic loop `merge` replaced, for tests to compare against.
    func referenceEncode(word: [UInt8]) -> [Int32] {
        if let special = literalSpecials[word] { return [special] }
        return referenceMerge(initialSymbols(word)).map { symbolIds[Int($0)] }
    }

    /// transformers' loop as written: find the lowest-ranked pair, merge every occurrence left to right, repeat.
    func referenceMerge(_ initial: [Int32]) -> [Int32] {
        var symbols = initial
        while symbols.count > 1 {
            var best = Int32.max
            var bestIndex = -1
            for i in 0..<symbols.count - 1 {
                if let rank = rankOf(symbols[i], symbols[i + 1]), rank < best {
                    best = rank
                    bestIndex = i
                }
            }
            guard bestIndex >= 0 else { break }
            // Every occurrence of the pair, left to right, without overlaps (transformers' `word.index` loop).
            let (left, right, joined) = (symbols[bestIndex], symbols[bestIndex + 1], mergedSymbol[Int(best)])
            var next: [Int32] = []
            next.reserveCapacity(symbols.count - 1)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == left && symbols[i + 1] == right {
                    next.append(joined)
                    i += 2
                } else {
                    next.append(symbols[i])
                    i += 1
                }
            }
            symbols = next
        }
        return symbols
    }
}

/// A binary min-heap of (rank, position) pairs packed in a UInt64, so that ties in rank go left to right.
struct PairHeap {
    private var items: [UInt64] = []

    mutating func push(rank: Int32, position: Int) {
        items.append(UInt64(UInt32(rank)) << 32 | UInt64(UInt32(position)))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child] < items[parent] else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    func peek() -> (rank: Int32, position: Int)? {
        items.first.map { (Int32(truncatingIfNeeded: $0 >> 32), Int(UInt32(truncatingIfNeeded: $0))) }
    }

    mutating func pop() -> (rank: Int32, position: Int)? {
        guard let top = peek() else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < items.count && items[left] < items[smallest] { smallest = left }
                if right < items.count && items[right] < items[smallest] { smallest = right }
                guard smallest != parent else { break }
                items.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }
}

/// Per-word BPE results, shared by copies of a tokenizer and safe across threads.
final class WordCache: @unchecked Sendable {
    private let lock = NSLock()
    private var words: [[UInt8]: [Int32]] = [:]
    /// OpenAI's cache is unbounded; this one starts over past this many words.
    private let capacity = 200_000
    /// Words longer than this many bytes are not cached, so the cache holds at most about 200,000 × 256 bytes.
    static let longestWord = 256

    var count: Int { lock.withLock { words.count } }

    subscript(word: [UInt8]) -> [Int32]? {
        get { lock.withLock { words[word] } }
        set {
            lock.withLock {
                if words.count >= capacity { words.removeAll(keepingCapacity: true) }
                words[word] = newValue
            }
        }
    }
}

// MARK: - gzip

/// Inflates a gzip file (one member) with zlib, which also checks the CRC and the length in the trailer. At most
/// `limit` bytes come out (open_clip's merges file is 1.4 MB): a small file that inflates to gigabytes is refused.
func gunzip(_ data: Data, file: String, limit: Int = 64 << 20) throws -> Data {
    guard data.count >= 18, data[data.startIndex] == 0x1F, data[data.startIndex + 1] == 0x8B else {
        throw StableDiffusionError.invalidTokenizer(file: file, message: "not a gzip file")
    }
    var stream = z_stream()
    guard inflateInit2_(&stream, MAX_WBITS + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
        throw StableDiffusionError.invalidTokenizer(file: file, message: "zlib could not start inflating")
    }
    defer { inflateEnd(&stream) }
    var output = Data()
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    let status: Int32 = data.withUnsafeBytes { input in
        stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
        stream.avail_in = uInt(input.count)
        while true {
            let status = buffer.withUnsafeMutableBufferPointer { out in
                stream.next_out = out.baseAddress
                stream.avail_out = uInt(out.count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            guard status == Z_OK || status == Z_STREAM_END else { return status }
            output.append(contentsOf: buffer[..<(buffer.count - Int(stream.avail_out))])
            if output.count > limit { return Z_MEM_ERROR }
            if status == Z_STREAM_END { return status }
        }
    }
    if output.count > limit {
        throw StableDiffusionError.invalidTokenizer(file: file, message: "inflates to more than \(limit) bytes")
    }
    guard status == Z_STREAM_END else {
        throw StableDiffusionError.invalidTokenizer(file: file, message: "corrupt or truncated gzip data")
    }
    return output
}
