import Foundation

/// BERT's uncased WordPiece tokenizer as transformers' `BertTokenizer` runs it for `bert-base-uncased` (ImageReward's
/// BLIP text encoder), with BLIP's two added tokens: `[DEC]` (BLIP's `bos_token`) and `[ENC]`, given the ids after the
/// vocabulary (30522 and 30523 with BERT's) when the vocabulary lacks them.
///
/// The steps, in transformers' order:
/// 1. Special tokens written in the text (`[CLS]`, `[SEP]`, `[PAD]`, `[UNK]`, `[MASK]`, `[DEC]`, `[ENC]`, matched
///    exactly, case included) are cut out first and kept whole.
/// 2. Each other piece is cleaned (code point 0, U+FFFD and control characters dropped, whitespace made a space),
///    CJK ideographs get spaces around them, the text is NFC-normalised and split on whitespace.
/// 3. Each word is lowercased, NFD-decomposed with its non-spacing marks (Mn) dropped (accents), and split before
///    and after every punctuation character (ASCII symbols and Unicode P*).
/// 4. Each resulting word becomes WordPiece pieces: greedy longest match from the left, continuations looked up with
///    `##`; a word with no match at some point, or longer than 100 characters, becomes `[UNK]`.
/// 5. `[CLS] … [SEP]`, truncated to `maxLength` (35 for ImageReward) and padded with `[PAD]` to it.
public struct BertTokenizer: Sendable {
    public static let specialTokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    /// BLIP's `init_tokenizer` adds these after the vocabulary.
    public static let blipAddedTokens = ["[DEC]", "[ENC]"]

    let vocabulary: [String: Int]
    /// Tokens matched whole in the text before anything else, with their ids.
    let addedTokens: [(text: [Unicode.Scalar], id: Int)]
    public let clsTokenId: Int
    public let sepTokenId: Int
    public let padTokenId: Int
    public let unknownTokenId: Int
    /// Tokens per prompt, `[CLS]` and `[SEP]` included.
    public let maxLength: Int
    /// Words longer than this (in code points) become `[UNK]` (transformers' `max_input_chars_per_word`).
    public static let maxCharactersPerWord = 100

    /// The vocabulary size with the added tokens.
    public var vocabularySize: Int { vocabulary.count + addedTokens.filter { $0.id >= vocabulary.count }.count }

    /// Reads `vocab.txt`: one token per line, the line number being its id. It must be a WordPiece vocabulary: with
    /// `[CLS]`, `[SEP]`, `[UNK]` and `[PAD]`; otherwise the error names the file and what is missing.
    public init(vocabularyFile url: URL, maxLength: Int = 35) throws {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw RewardError.invalidModel(file: url.path, message: "cannot read the WordPiece vocabulary")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw RewardError.invalidModel(file: url.path, message: "not a UTF-8 text file (a WordPiece vocab.txt is expected)")
        }
        var lines = text.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        try self.init(tokens: lines.map { $0.hasSuffix("\r") ? String($0.dropLast()) : $0 }, origin: url.path, maxLength: maxLength)
    }

    /// `tokens[i]` has id i.
    public init(tokens: [String], origin: String = "vocabulary", maxLength: Int = 35) throws {
        guard maxLength >= 2 else { throw RewardError.invalidArgument("BertTokenizer: maxLength \(maxLength) leaves no room for [CLS] and [SEP]") }
        var vocabulary: [String: Int] = [:]
        for (i, token) in tokens.enumerated() where vocabulary[token] == nil { vocabulary[token] = i }  // the first wins, as transformers' dict
        let missing = ["[CLS]", "[SEP]", "[UNK]", "[PAD]"].filter { vocabulary[$0] == nil }
        guard missing.isEmpty else {
            throw RewardError.invalidModel(
                file: origin,
                message: "not a WordPiece vocabulary (a BERT vocab.txt, one token per line): no \(missing.joined(separator: ", "))")
        }
        self.vocabulary = vocabulary
        var added: [(text: [Unicode.Scalar], id: Int)] = []
        var next = tokens.count
        for token in Self.specialTokens + Self.blipAddedTokens {
            let id: Int
            if let known = vocabulary[token] {
                id = known
            } else if Self.blipAddedTokens.contains(token) {
                id = next
                next += 1
            } else {
                continue  // [MASK] absent: not special, tokenized as text
            }
            added.append((Array(token.unicodeScalars), id))
        }
        addedTokens = added
        clsTokenId = vocabulary["[CLS]"]!
        sepTokenId = vocabulary["[SEP]"]!
        padTokenId = vocabulary["[PAD]"]!
        unknownTokenId = vocabulary["[UNK]"]!
        self.maxLength = maxLength
    }

    /// The ids of `text` without `[CLS]`, `[SEP]`, truncation or padding.
    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        let scalars = Array(text.unicodeScalars)
        var start = 0, i = 0
        while i < scalars.count {
            if let match = addedTokens.first(where: { Self.matches($0.text, scalars, at: i) }) {
                ids += encodeText(Array(scalars[start..<i]))
                ids.append(match.id)
                i += match.text.count
                start = i
            } else {
                i += 1
            }
        }
        ids += encodeText(Array(scalars[start..<scalars.count]))
        return ids
    }

    /// `[CLS] ids [SEP]` truncated to `maxLength` and padded to it with `[PAD]`, and the attention mask (1 for every
    /// token but the padding): transformers' `padding="max_length", truncation=True`.
    public func tokenize(_ prompts: [String]) -> (ids: [[Int]], mask: [[Int]]) {
        var ids: [[Int]] = [], mask: [[Int]] = []
        for prompt in prompts {
            let row = [clsTokenId] + encode(prompt).prefix(maxLength - 2) + [sepTokenId]
            ids.append(row + Array(repeating: padTokenId, count: maxLength - row.count))
            mask.append(Array(repeating: 1, count: row.count) + Array(repeating: 0, count: maxLength - row.count))
        }
        return (ids, mask)
    }

    /// The WordPiece tokens of `text` (no special tokens), for inspection.
    public func tokens(_ text: String) -> [String] {
        let names = Dictionary(vocabulary.map { ($0.value, $0.key) }, uniquingKeysWith: min)
        let added = Dictionary(addedTokens.map { ($0.id, String(String.UnicodeScalarView($0.text))) }, uniquingKeysWith: { a, _ in a })
        return encode(text).map { names[$0] ?? added[$0] ?? "[UNK]" }
    }

    static func matches(_ token: [Unicode.Scalar], _ text: [Unicode.Scalar], at i: Int) -> Bool {
        guard i + token.count <= text.count else { return false }
        for j in 0..<token.count where text[i + j] != token[j] { return false }
        return true
    }

    // MARK: - Basic tokenization

    func encodeText(_ scalars: [Unicode.Scalar]) -> [Int] {
        guard !scalars.isEmpty else { return [] }
        // Clean, and space out CJK ideographs.
        var cleaned = String.UnicodeScalarView()
        for s in scalars {
            if s.value == 0 || s.value == 0xFFFD || Self.isControl(s) { continue }
            if Self.isBertWhitespace(s) {
                cleaned.append(" ")
            } else if Self.isCJK(s.value) {
                cleaned.append(" ")
                cleaned.append(s)
                cleaned.append(" ")
            } else {
                cleaned.append(s)
            }
        }
        let normalised = String(cleaned).precomposedStringWithCanonicalMapping
        var ids: [Int] = []
        for word in Self.splitOnWhitespace(Array(normalised.unicodeScalars)) {
            let lowered = Self.lowercased(word)
            let stripped = String(String.UnicodeScalarView(lowered)).decomposedStringWithCanonicalMapping.unicodeScalars
                .filter { $0.properties.generalCategory != .nonspacingMark }
            for piece in Self.splitOnPunctuation(Array(stripped)) {
                ids += wordPiece(piece)
            }
        }
        return ids
    }

    /// Greedy longest-match-first WordPiece of one word.
    func wordPiece(_ word: [Unicode.Scalar]) -> [Int] {
        guard word.count <= Self.maxCharactersPerWord else { return [unknownTokenId] }
        var ids: [Int] = []
        var start = 0
        while start < word.count {
            var end = word.count
            var found: Int?
            while start < end {
                var piece = String(String.UnicodeScalarView(word[start..<end]))
                if start > 0 { piece = "##" + piece }
                if let id = vocabulary[piece] {
                    found = id
                    break
                }
                end -= 1
            }
            guard let id = found else { return [unknownTokenId] }
            ids.append(id)
            start = end
        }
        return ids
    }

    /// Each code point's full lowercase mapping. transformers lowercases the text one character at a time before it
    /// splits it (its regex keeps special tokens as written), so Python's Final_Sigma rule never applies: Σ is σ.
    static func lowercased(_ word: [Unicode.Scalar]) -> [Unicode.Scalar] {
        word.flatMap { Array($0.properties.lowercaseMapping.unicodeScalars) }
    }

    /// Splits before and after each punctuation character.
    static func splitOnPunctuation(_ word: [Unicode.Scalar]) -> [[Unicode.Scalar]] {
        var out: [[Unicode.Scalar]] = []
        var startNew = true
        for s in word {
            if isPunctuation(s) {
                out.append([s])
                startNew = true
            } else {
                if startNew { out.append([]) }
                startNew = false
                out[out.count - 1].append(s)
            }
        }
        return out
    }

    /// Python's `str.split()`: on its whitespace (`str.isspace`), empty words dropped.
    static func splitOnWhitespace(_ scalars: [Unicode.Scalar]) -> [[Unicode.Scalar]] {
        var words: [[Unicode.Scalar]] = []
        var current: [Unicode.Scalar] = []
        for s in scalars {
            if isPythonSpace(s) {
                if !current.isEmpty { words.append(current) }
                current = []
            } else {
                current.append(s)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    static func isPythonSpace(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85: return true
        default:
            switch s.properties.generalCategory {
            case .spaceSeparator, .lineSeparator, .paragraphSeparator: return true
            default: return false
            }
        }
    }

    /// transformers' `_is_whitespace`: space, tab, newline, carriage return, or category Zs.
    static func isBertWhitespace(_ s: Unicode.Scalar) -> Bool {
        s == " " || s == "\t" || s == "\n" || s == "\r" || s.properties.generalCategory == .spaceSeparator
    }

    /// transformers' `_is_control`: categories C* except tab, newline and carriage return.
    static func isControl(_ s: Unicode.Scalar) -> Bool {
        if s == "\t" || s == "\n" || s == "\r" { return false }
        switch s.properties.generalCategory {
        case .control, .format, .unassigned, .privateUse, .surrogate: return true
        default: return false
        }
    }

    /// transformers' `_is_punctuation`: the ASCII symbols (33–47, 58–64, 91–96, 123–126) and categories P*.
    static func isPunctuation(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) { return true }
        switch s.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
            .finalPunctuation, .otherPunctuation:
            return true
        default: return false
        }
    }

    /// transformers' `_is_chinese_char`: the CJK Unified Ideographs blocks and their extensions and compatibility blocks.
    static func isCJK(_ v: UInt32) -> Bool {
        (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v) || (0x20000...0x2A6DF).contains(v)
            || (0x2A700...0x2B73F).contains(v) || (0x2B740...0x2B81F).contains(v) || (0x2B820...0x2CEAF).contains(v)
            || (0xF900...0xFAFF).contains(v) || (0x2F800...0x2FA1F).contains(v)
    }
}
