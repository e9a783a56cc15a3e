// The text cleaning of CLIP's tokenizer, as transformers 4.x's slow `CLIPTokenizer` does it when ftfy is installed
// (the tokenizer Stable Diffusion was trained and is run with): `whitespace_clean(ftfy.fix_text(text)).lower()`.
// transformers 5 dropped the ftfy step (its CLIP tokenizer is the fast one, which only normalizes NFC and
// collapses whitespace); this file follows the training-time tokenizer. OpenAI CLIP's and open_clip's `basic_clean`
// add `html.unescape(html.unescape(text))` after ftfy; transformers does not. ftfy already unescapes until nothing
// changes, so the two differ only for text with a literal "<" (where ftfy leaves entities alone) and for entities
// without their ";" (`&amp`, which `html.unescape` decodes and ftfy does not).
//
// Everything works on Unicode scalars (Python's code points), never on Swift's grapheme clusters, and never with
// Swift's `==` on strings (canonical equivalence): Python compares code points.
//
// ftfy 6 `fix_text` with its default configuration, what is implemented here:
// - text is fixed in segments that end after each "\n"; once a segment contains "<", HTML entities are left alone in
//   it and in every later segment (ftfy's `unescape_html="auto"`);
// - each segment runs through the fixes below, in ftfy's order, again and again until nothing changes:
//   `unescape_html` (the HTML5 named entities that end in ";", plus the all-caps forms ftfy accepts such as
//   `&EACUTE;`, read from Resources/html_entities.tsv, which scripts/parity/make_tokenizer_fixtures.py writes from
//   ftfy's own table; numeric references `&#39;` / `&#x27;` as Python's `html.unescape` decodes them, left alone when
//   the result would contain ";"), `fix_c1_controls` (U+0080–U+009F read as Windows-1252), `fix_latin_ligatures`,
//   `fix_character_width` (full-width and half-width forms to their NFKC form, U+3000 to a space), `uncurl_quotes`,
//   `fix_line_breaks`, `remove_terminal_escapes` (ANSI `ESC [ ... letter`), `remove_control_chars`, then NFC.
// Not implemented:
// - `fix_encoding` (mojibake repair, e.g. "cafÃ©" → "café", with `restore_byte_a0`, `replace_lossy_sequences` and
//   `decode_inconsistent_utf8`): it rests on ftfy's statistical "badness" heuristic over hand-tuned character classes;
//   text that is not mojibake, which is what prompts are, goes through it unchanged. Mojibake prompts tokenize
//   differently from transformers.
// - `fix_surrogates`: a Swift `String` cannot hold unpaired surrogates.
// Unicode data comes from Swift's standard library and Foundation (NFC, NFKC), not from Python 3.11's Unicode 14:
// characters assigned after Unicode 14 may be classified differently.
import Foundation

enum TextCleaning {
    /// transformers' CLIP cleaning: ftfy's `fix_text`, whitespace runs to one space, stripped, lower-cased.
    static func clean(_ text: String) -> String {
        string(clean(Array(text.unicodeScalars)))
    }

    static func clean(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        pythonLowercased(collapseWhitespace(fixText(text)))
    }

    // MARK: - ftfy.fix_text

    static func fixText(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.count)
        var unescapeHTML = true
        var start = 0
        while start < text.count {
            var end = start
            while end < text.count && text[end] != "\n" { end += 1 }
            end = min(end + 1, text.count)
            let segment = Array(text[start..<end])
            if unescapeHTML && segment.contains("<") { unescapeHTML = false }
            out += fixSegment(segment, unescapeHTML: unescapeHTML)
            start = end
        }
        return out
    }

    private static func fixSegment(_ segment: [Unicode.Scalar], unescapeHTML: Bool) -> [Unicode.Scalar] {
        var text = segment
        while true {
            let original = text
            if unescapeHTML { text = unescapeEntities(text) }
            text = mapScalars(text) { c1Controls($0) }
            text = mapScalars(text) { latinLigature($0) }
            text = mapScalars(text) { characterWidth($0) }
            text = mapScalars(text) { uncurledQuote($0) }
            text = fixLineBreaks(text)
            text = removeTerminalEscapes(text)
            text.removeAll { isRemovedControl($0.value) }
            text = nfc(text)
            if text == original { return text }
        }
    }

    /// Applies a scalar-to-replacement map, copying only when some scalar changes.
    private static func mapScalars(
        _ text: [Unicode.Scalar], _ replacement: (Unicode.Scalar) -> String?
    ) -> [Unicode.Scalar] {
        guard let first = text.firstIndex(where: { replacement($0) != nil }) else { return text }
        var out = Array(text[..<first])
        for scalar in text[first...] {
            if let replaced = replacement(scalar) { out += replaced.unicodeScalars } else { out.append(scalar) }
        }
        return out
    }

    // MARK: HTML entities

    /// ftfy's `unescape_html`: every match of `&#?[0-9A-Za-z]{1,24};` that names an entity or is a numeric reference.
    static func unescapeEntities(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard text.contains("&") else { return text }
        var out: [Unicode.Scalar] = []
        var i = 0
        while i < text.count {
            guard text[i] == "&" else {
                out.append(text[i])
                i += 1
                continue
            }
            var j = i + 1
            let numeric = j < text.count && text[j] == "#"
            if numeric { j += 1 }
            var end = j
            while end < text.count && text[end].isASCII && isASCIIAlphanumeric(text[end]) { end += 1 }
            let length = end - j
            guard length >= 1 && length <= 24 && end < text.count && text[end] == ";" else {
                out.append(text[i])
                i += 1
                continue
            }
            let reference = string(text[i...end])
            if let named = htmlEntities[reference] {
                out += named
            } else if numeric, let decoded = numericReference(text[j..<end]), !decoded.contains(";") {
                out += decoded
            } else {
                out += text[i...end]
            }
            i = end + 1
        }
        return out
    }

    private static func isASCIIAlphanumeric(_ c: Unicode.Scalar) -> Bool {
        ("0"..."9").contains(c) || ("a"..."z").contains(c) || ("A"..."Z").contains(c)
    }

    /// Python's `html.unescape` on `&#digits;` / `&#xhex;`; nil where it would not consume the whole reference.
    private static func numericReference(_ body: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar]? {
        var digits = body
        var radix: UInt32 = 10
        if let first = digits.first, first == "x" || first == "X" {
            radix = 16
            digits = digits.dropFirst()
        }
        guard !digits.isEmpty else { return nil }
        var value: UInt32 = 0
        var overflow = false
        for c in digits {
            guard let digit = hexDigitValue(c), digit < radix else { return nil }
            if !overflow {
                value = value * radix + digit
                overflow = value > 0x10FFFF
            }
        }
        if overflow { return ["\u{FFFD}"] }
        switch value {
        case 0x00: return ["\u{FFFD}"]
        case 0x0D: return ["\r"]
        case 0x80...0x9F: return [windows1252(value)]
        case 0xD800...0xDFFF: return ["\u{FFFD}"]
        case 0x01...0x08, 0x0B, 0x0E...0x1F, 0x7F, 0xFDD0...0xFDEF: return []
        case _ where value & 0xFFFE == 0xFFFE: return []
        default: return [Unicode.Scalar(value)!]
        }
    }

    private static func hexDigitValue(_ c: Unicode.Scalar) -> UInt32? {
        switch c {
        case "0"..."9": c.value - 0x30
        case "a"..."f": c.value - 0x61 + 10
        case "A"..."F": c.value - 0x41 + 10
        default: nil
        }
    }

    /// ftfy's entity table (name with "&" and ";" → replacement), from Resources/html_entities.tsv.
    static let htmlEntities: [String: [Unicode.Scalar]] = {
        guard let url = Bundle.module.url(forResource: "html_entities", withExtension: "tsv", subdirectory: "Resources"),
            let text = try? String(contentsOf: url, encoding: .utf8)
        else { fatalError("StableDiffusion resource Resources/html_entities.tsv is missing from the bundle") }
        var table: [String: [Unicode.Scalar]] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 2 else { continue }
            table[String(fields[0])] = fields[1].split(separator: " ").compactMap {
                UInt32($0, radix: 16).flatMap(Unicode.Scalar.init)
            }
        }
        return table
    }()

    // MARK: Character fixes

    /// Windows-1252 for 0x80–0x9F, bytes it leaves undefined read as Latin-1 (Python's "sloppy-windows-1252").
    private static func windows1252(_ value: UInt32) -> Unicode.Scalar {
        let table: [UInt32] = [
            0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,
            0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
            0x0153, 0x9D, 0x017E, 0x0178,
        ]
        return Unicode.Scalar(table[Int(value - 0x80)])!
    }

    private static func c1Controls(_ c: Unicode.Scalar) -> String? {
        guard (0x80...0x9F).contains(c.value) else { return nil }
        let fixed = windows1252(c.value)
        return fixed == c ? nil : String(fixed)
    }

    /// The Latin ligatures ftfy takes apart (their compatibility decompositions); other scripts' ligatures stay.
    private static func latinLigature(_ c: Unicode.Scalar) -> String? {
        switch c.value {
        case 0x0132: "IJ"
        case 0x0133: "ij"
        case 0x0149: "\u{02BC}n"
        case 0x01C4: "D\u{017D}"
        case 0x01C5: "D\u{017E}"
        case 0x01C6: "d\u{017E}"
        case 0x01C7: "LJ"
        case 0x01C8: "Lj"
        case 0x01C9: "lj"
        case 0x01CA: "NJ"
        case 0x01CB: "Nj"
        case 0x01CC: "nj"
        case 0x01F1: "DZ"
        case 0x01F2: "Dz"
        case 0x01F3: "dz"
        case 0xFB00: "ff"
        case 0xFB01: "fi"
        case 0xFB02: "fl"
        case 0xFB03: "ffi"
        case 0xFB04: "ffl"
        case 0xFB05: "\u{017F}t"
        case 0xFB06: "st"
        default: nil
        }
    }

    /// Full-width and half-width forms (U+FF01–U+FFEF) to their NFKC form, the ideographic space to a space.
    private static func characterWidth(_ c: Unicode.Scalar) -> String? {
        if c.value == 0x3000 { return " " }
        guard (0xFF01...0xFFEF).contains(c.value) else { return nil }
        return widthForms[Int(c.value - 0xFF01)]
    }

    private static let widthForms: [String?] = (UInt32(0xFF01)...0xFFEF).map { value in
        let form = String(Unicode.Scalar(value)!)
        let normal = form.precomposedStringWithCompatibilityMapping
        return Array(normal.unicodeScalars) == Array(form.unicodeScalars) ? nil : normal
    }

    private static func uncurledQuote(_ c: Unicode.Scalar) -> String? {
        switch c.value {
        case 0x02BC, 0x2018...0x201B: "'"
        case 0x201C...0x201F: "\""
        default: nil
        }
    }

    private static func fixLineBreaks(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard text.contains(where: { ["\r", "\u{2028}", "\u{2029}", "\u{85}"].contains($0) }) else { return text }
        var out: [Unicode.Scalar] = []
        var i = 0
        while i < text.count {
            switch text[i] {
            case "\r":
                out.append("\n")
                if i + 1 < text.count && text[i + 1] == "\n" { i += 1 }
            case "\u{2028}", "\u{2029}", "\u{85}": out.append("\n")
            default: out.append(text[i])
            }
            i += 1
        }
        return out
    }

    /// Removes `ESC [ (digit | ;)* letter` (Python's `\d`: any decimal digit, `[a-zA-Z]`: ASCII letters).
    private static func removeTerminalEscapes(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard text.contains("\u{1B}") else { return text }
        var out: [Unicode.Scalar] = []
        var i = 0
        while i < text.count {
            if text[i] == "\u{1B}" && i + 1 < text.count && text[i + 1] == "[" {
                var j = i + 2
                while j < text.count && (text[j] == ";" || text[j].properties.generalCategory == .decimalNumber) {
                    j += 1
                }
                if j < text.count && text[j].isASCII && (("a"..."z").contains(text[j]) || ("A"..."Z").contains(text[j])) {
                    i = j + 1
                    continue
                }
            }
            out.append(text[i])
            i += 1
        }
        return out
    }

    /// ftfy's `remove_control_chars`: C0 controls but tab, line feed, form feed and carriage return; DEL; deprecated
    /// Arabic format characters; the byte order mark; interlinear annotation and object replacement characters.
    private static func isRemovedControl(_ v: UInt32) -> Bool {
        (0x00...0x08).contains(v) || v == 0x0B || (0x0E...0x1F).contains(v) || v == 0x7F || (0x206A...0x206F).contains(v)
            || v == 0xFEFF || (0xFFF9...0xFFFC).contains(v)
    }

    private static func nfc(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        // Below U+0300 nothing composes or decomposes.
        guard text.contains(where: { $0.value >= 0x300 }) else { return text }
        return Array(string(text).precomposedStringWithCanonicalMapping.unicodeScalars)
    }

    // MARK: - whitespace_clean and lower

    /// Python's `str.isspace()`: Unicode White_Space plus the four information separators U+001C–U+001F.
    static func isPythonSpace(_ c: Unicode.Scalar) -> Bool {
        c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
    }

    /// `regex.sub(r"\s+", " ", text).strip()`; the `regex` module's `\s` is Unicode White_Space.
    static func collapseWhitespace(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.count)
        var inSpace = false
        for scalar in text {
            if scalar.properties.isWhitespace {
                if !inSpace { out.append(" ") }
                inSpace = true
            } else {
                out.append(scalar)
                inSpace = false
            }
        }
        return stripPythonSpace(out[...])
    }

    static func stripPythonSpace(_ text: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar] {
        guard let first = text.firstIndex(where: { !isPythonSpace($0) }),
            let last = text.lastIndex(where: { !isPythonSpace($0) })
        else { return [] }
        return Array(text[first...last])
    }

    /// Python's `str.lower()`: full lower-case mappings (İ → i̇) and the Final_Sigma rule for Σ.
    static func pythonLowercased(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.count)
        for (i, scalar) in text.enumerated() {
            if scalar.isASCII {
                out.append(("A"..."Z").contains(scalar) ? Unicode.Scalar(scalar.value + 32)! : scalar)
            } else if scalar == "\u{03A3}" {
                out.append(isFinalSigma(text, at: i) ? "\u{03C2}" : "\u{03C3}")
            } else {
                out += scalar.properties.lowercaseMapping.unicodeScalars
            }
        }
        return out
    }

    /// Σ is final when a cased letter comes before it and none after it (case-ignorable characters skipped).
    private static func isFinalSigma(_ text: [Unicode.Scalar], at index: Int) -> Bool {
        var j = index - 1
        while j >= 0 && text[j].properties.isCaseIgnorable { j -= 1 }
        guard j >= 0 && text[j].properties.isCased else { return false }
        j = index + 1
        while j < text.count && text[j].properties.isCaseIgnorable { j += 1 }
        return j == text.count || !text[j].properties.isCased
    }

    static func string<S: Sequence>(_ scalars: S) -> String where S.Element == Unicode.Scalar {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }
}
