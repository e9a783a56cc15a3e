/// What an error message may quote of something a user gave (a key, a header line, a shape): at most `limit`
/// characters, control characters and non-printing bytes escaped (no terminal escape codes, no raw binary), and the
/// length of what was left out. Errors stay one short, safe line whatever the input.
public func excerpt(_ text: String, limit: Int = 60) -> String {
    var out = ""
    var shown = 0
    for scalar in text.unicodeScalars {
        if shown == limit { break }
        switch scalar {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0xFFFD:
            out += "\\u{\(String(scalar.value, radix: 16))}"
        default: out.unicodeScalars.append(scalar)
        }
        shown += 1
    }
    let rest = text.unicodeScalars.count - shown
    return rest > 0 ? out + "…(\(rest) more characters)" : out
}

/// A shape for a message: all of it when short, else its first dimensions and how many there are.
public func excerpt(shape: [Int], limit: Int = 8) -> String {
    shape.count <= limit ? "\(shape)" : "[" + shape.prefix(limit).map(String.init).joined(separator: ", ") + ", …] (\(shape.count) dimensions)"
}
