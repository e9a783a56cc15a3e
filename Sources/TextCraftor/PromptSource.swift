import Foundation
import Torch
import StableDiffusion

/// The kinds of prompt file the trainer reads.
public enum PromptFileFormat: String, CaseIterable, Sendable, Codable {
    /// One prompt per line; blank lines skipped.
    case text
    /// Tab-separated values with a header (Parti-Prompts: Prompt, Category, Challenge, Note). No quoting (IANA TSV):
    /// a field holds any character but a tab or a newline, so a prompt may start with a quote.
    case tsv
    /// Comma-separated values with a header (RFC 4180: quoted fields may hold commas, doubled quotes and newlines).
    case csv
    /// A JSON list of strings, or of objects with a prompt key (the HPSv2 benchmark's files are lists of strings).
    case json

    /// The format a file's extension names (`.txt`, `.tsv`, `.csv`, `.json`, any case), or nil.
    public init?(pathExtension: String) {
        switch pathExtension.lowercased() {
        case "txt": self = .text
        case "tsv": self = .tsv
        case "csv": self = .csv
        case "json": self = .json
        default: return nil
        }
    }
}

/// The prompts of one file, in file order. Every format: trailing whitespace trimmed, blank prompts skipped.
public struct PromptSource: Sendable, Equatable {
    /// The path the prompts were read from, as given.
    public let file: String
    public let format: PromptFileFormat
    public let prompts: [String]
    /// Each prompt's value in the `labelColumn` asked for (e.g. Parti's Category), or nil when none was.
    public let labels: [String]?

    /// Prompts given directly (a `--prompt` flag, a test).
    public init(prompts: [String], file: String = "<prompts>", format: PromptFileFormat = .text, labels: [String]? = nil) {
        precondition(labels == nil || labels!.count == prompts.count, "PromptSource: one label per prompt")
        self.file = file
        self.format = format
        self.prompts = prompts
        self.labels = labels
    }

    /// Reads a prompt file.
    /// - Parameters:
    ///   - format: nil: by the extension.
    ///   - column: the column of a TSV or CSV file, or the key of a JSON list's objects, that holds the prompt.
    ///     Matched exactly, else case-insensitively when only one column matches (so `prompt` finds Parti's `Prompt`).
    ///   - category, challenge: keep only the rows whose `Category` / `Challenge` column has this value (any case);
    ///     for Parti-Prompts and other tables with those columns.
    ///   - labelColumn: a TSV or CSV column to keep beside each prompt as its label (`labels`), e.g. `Category`.
    public init(contentsOf url: URL, format: PromptFileFormat? = nil, column: String = "prompt",
                category: String? = nil, challenge: String? = nil, labelColumn: String? = nil) throws {
        let path = url.path
        func fail(_ message: String) -> TextCraftorError { .invalidPrompts(file: path, message: message) }
        let kind = try format ?? Self.format(of: url, fail: fail)
        let text = try readText(url, what: "a prompt file", fail: fail)
        let filters = [("Category", category), ("Challenge", challenge)].compactMap { name, value in value.map { (name, $0) } }

        var prompts: [String]
        var labels: [String]? = nil
        if labelColumn != nil, kind != .tsv, kind != .csv { throw fail("a label column needs a TSV or CSV file") }
        switch kind {
        case .text:
            guard filters.isEmpty else { throw fail("category and challenge filters need a TSV or CSV file with those columns") }
            prompts = text.split(whereSeparator: \.isNewline).map(String.init)
        case .tsv, .csv:
            let table = try DelimitedTable(text, kind == .tsv ? .tsv : .csv, fail: fail)
            guard !table.header.isEmpty else { throw fail("no prompts") }
            let promptColumn = try table.column(column, fail: fail)
            var rows = table.rows
            for (name, value) in filters {
                let index = try table.column(name, fail: fail, purpose: " to filter on")
                let values = Set(table.rows.map { $0.fields[index] })
                guard values.contains(where: { $0.caseInsensitiveCompare(value) == .orderedSame }) else {
                    throw fail("no prompts with \(excerpt(table.header[index])) \"\(excerpt(value))\" (its values: \(excerptList(values.sorted())))")
                }
                rows = rows.filter { $0.fields[index].caseInsensitiveCompare(value) == .orderedSame }
            }
            if rows.isEmpty, !table.rows.isEmpty {
                throw fail("no prompts with " + filters.map { "\($0.0) \"\($0.1)\"" }.joined(separator: " and "))
            }
            prompts = rows.map { $0.fields[promptColumn] }
            if let labelColumn {
                let index = try table.column(labelColumn, fail: fail, purpose: " for labels")
                labels = rows.map { $0.fields[index].trimmingCharacters(in: .whitespaces) }
            }
        case .json:
            guard filters.isEmpty else { throw fail("category and challenge filters need a TSV or CSV file with those columns") }
            prompts = try Self.jsonPrompts(text, key: column, fail: fail)
        }
        prompts = prompts.map { $0.trimmingTrailingWhitespace() }
        let kept = prompts.indices.filter { !prompts[$0].isEmpty }
        guard !kept.isEmpty else { throw fail("no prompts") }
        self.init(prompts: kept.map { prompts[$0] }, file: path, format: kind, labels: labels.map { l in kept.map { l[$0] } })
    }

    static func format(of url: URL, fail: (String) -> TextCraftorError) throws -> PromptFileFormat {
        let ext = url.pathExtension
        if let format = PromptFileFormat(pathExtension: ext) { return format }
        let known = "expected .txt, .tsv, .csv or .json, or an explicit format"
        throw fail(ext.isEmpty ? "no extension: \(known)" : "unknown extension \".\(ext)\": \(known)")
    }

    static func jsonPrompts(_ text: String, key: String, fail: (String) -> TextCraftorError) throws -> [String] {
        let value = try JSONValue.parse(text, fail: fail)
        let shape = "a string or an object with a \"\(key)\" key"
        guard case .array(let items) = value else {
            throw fail("expected a JSON list of strings or of objects with a \"\(key)\" key, found \(value.kind)")
        }
        return try items.enumerated().map { index, item in
            switch item {
            case .string(let prompt): return prompt
            case .object(let object):
                guard let name = matchName(key, in: Array(object.keys)) else {
                    throw fail("[\(index)]: no \"\(excerpt(key))\" key (its keys: \(excerptList(object.keys.sorted())))")
                }
                guard case .string(let prompt) = object[name]! else {
                    throw fail("[\(index)].\(name): expected a string, found \(object[name]!.kind)")
                }
                return prompt
            default: throw fail("[\(index)]: expected \(shape), found \(item.kind)")
            }
        }
    }
}

/// `name` among `names`: exactly, else case-insensitively when exactly one matches.
func matchName(_ name: String, in names: [String]) -> String? {
    if names.contains(name) { return name }
    let folded = names.filter { $0.caseInsensitiveCompare(name) == .orderedSame }
    return folded.count == 1 ? folded[0] : nil
}

/// Names from a file (a header's columns, a column's values) for an error: each an excerpt, the list cut after about
/// 100 characters with how many more there are, so that a 120 kB header line still gives one short line.
func excerptList(_ items: [String], limit: Int = 100) -> String {
    var shown: [String] = []
    var length = 0
    for item in items {
        let quoted = excerpt(item, limit: 40)
        if !shown.isEmpty, length + quoted.count > limit { break }
        shown.append(quoted)
        length += quoted.count + 2
    }
    return shown.joined(separator: ", ") + (shown.count < items.count ? ", … (\(items.count - shown.count) more)" : "")
}

/// A file's text: UTF-8, a byte-order mark dropped. `what` names the kind of file a folder was mistaken for.
func readText(_ url: URL, what: String, fail: (String) -> TextCraftorError) throws -> String {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else { throw fail("no such file") }
    guard !isFolder.boolValue else { throw fail("is a folder, not \(what)") }
    let data: Data
    do { data = try Data(contentsOf: url) } catch { throw fail("cannot be read") }
    guard var text = String(data: data, encoding: .utf8) else { throw fail("not UTF-8 text") }
    if text.unicodeScalars.first == "\u{FEFF}" { text.unicodeScalars.removeFirst() }
    return text
}

extension String {
    func trimmingTrailingWhitespace() -> String {
        var scalars = Substring(self).unicodeScalars
        while let last = scalars.last, last.properties.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}

// MARK: - Delimited text

/// A CSV or TSV file read whole: a header, then rows with as many fields as the header. Empty lines are skipped.
struct DelimitedTable {
    enum Dialect {
        /// RFC 4180: `"` quotes a field, which may then hold commas, newlines and doubled quotes (`""`).
        case csv
        /// IANA text/tab-separated-values: no quoting; tabs and newlines only ever separate.
        case tsv
    }

    struct Row {
        /// The line the row starts on (1 is the header's).
        let line: Int
        let fields: [String]
    }

    let header: [String]
    let rows: [Row]

    init(_ text: String, _ dialect: Dialect, fail: (String) -> TextCraftorError) throws {
        var records = try Self.records(text, dialect, fail: fail)
        guard !records.isEmpty else {
            header = []
            rows = []
            return
        }
        header = records.removeFirst().fields.map { $0.trimmingCharacters(in: .whitespaces) }
        for record in records where record.fields.count != header.count {
            throw fail("line \(record.line): \(record.fields.count) fields, but the header has \(header.count)")
        }
        rows = records
    }

    /// The index of a column, by `matchName`; the error lists the columns there are.
    func column(_ name: String, fail: (String) -> TextCraftorError, purpose: String = "") throws -> Int {
        guard let match = matchName(name, in: header), let index = header.firstIndex(of: match) else {
            throw fail("no column \"\(excerpt(name))\"\(purpose) (its columns: \(excerptList(header)))")
        }
        return index
    }

    /// Splits into records on LF, CRLF or CR, fields on the delimiter, honouring quotes in CSV. Works on UTF-8 bytes:
    /// every delimiter, quote and line break is ASCII, so it never splits a character.
    static func records(_ text: String, _ dialect: Dialect, fail: (String) -> TextCraftorError) throws -> [Row] {
        let delimiter: UInt8 = dialect == .csv ? UInt8(ascii: ",") : UInt8(ascii: "\t")
        let quote = UInt8(ascii: "\""), lf = UInt8(ascii: "\n"), cr = UInt8(ascii: "\r")
        let bytes = Array(text.utf8)
        var rows: [Row] = []
        var fields: [String] = []
        var field: [UInt8] = []
        var line = 1, recordLine = 1
        var recordIsEmpty = true  // nothing yet on this record: not a byte, not a delimiter, not a quoted ""
        var fieldStarted = false
        var i = 0

        func endField() {
            fields.append(String(decoding: field, as: UTF8.self))
            field.removeAll(keepingCapacity: true)
            fieldStarted = false
        }
        func endRecord() {
            endField()
            if !recordIsEmpty { rows.append(Row(line: recordLine, fields: fields)) }
            fields.removeAll(keepingCapacity: true)
            recordIsEmpty = true
        }

        while i < bytes.count {
            let byte = bytes[i]
            if dialect == .csv, byte == quote, !fieldStarted {
                // A quoted field; what follows its closing quote up to the delimiter is kept as is (as Python's csv).
                let start = line
                i += 1
                while true {
                    guard i < bytes.count else { throw fail("line \(start): a quoted field is not closed") }
                    let inner = bytes[i]
                    if inner == quote {
                        if i + 1 < bytes.count, bytes[i + 1] == quote {
                            field.append(quote)
                            i += 2
                            continue
                        }
                        i += 1
                        break
                    }
                    if inner == lf || (inner == cr && (i + 1 == bytes.count || bytes[i + 1] != lf)) { line += 1 }
                    field.append(inner)
                    i += 1
                }
                recordIsEmpty = false
                fieldStarted = true
                continue
            }
            switch byte {
            case delimiter:
                endField()
                recordIsEmpty = false
                i += 1
            case lf, cr:
                endRecord()
                i += (byte == cr && i + 1 < bytes.count && bytes[i + 1] == lf) ? 2 : 1
                line += 1
                recordLine = line
            default:
                field.append(byte)
                recordIsEmpty = false
                fieldStarted = true
                i += 1
            }
        }
        endRecord()
        return rows
    }
}

// MARK: - JSON

extension JSONValue {
    /// Parses `text`; `fail` gets "malformed JSON", with the platform JSON parser's reason when it gives one.
    static func parse(_ text: String, fail: (String) -> TextCraftorError) throws -> JSONValue {
        let data = Data(text.utf8)
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            // JSONDecoder's own message says nothing about where; JSONSerialization's often does.
            var reason: String?
            do { _ = try JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed) } catch {
                reason = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            }
            throw fail(reason.map { "malformed JSON (\($0))" } ?? "malformed JSON")
        }
    }

    /// "a string", "an object", ...: for "found ..." in messages.
    var kind: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "a list"
        case .object: "an object"
        }
    }
}

// MARK: - Sampling

/// Where a `BatchSampler` stands, saved with a checkpoint so that a resumed run draws exactly the batches an
/// uninterrupted one would.
public struct SamplerCursor: Sendable, Equatable, Codable {
    /// Completed passes over the items.
    public var epoch: Int
    /// The index, in this epoch's order, of the next item.
    public var position: Int
    /// The generator's state before it drew this epoch's order (the order is drawn again from it on resume).
    public var shuffleState: UInt64
    /// How many items the order runs over: a resume over a different number of items is refused.
    public var count: Int

    enum CodingKeys: String, CodingKey {
        case epoch, position, count
        case shuffleState = "shuffle_state"
    }
}

/// Batches of items, epoch after epoch: in the items' order, or shuffled afresh each epoch with a `SplitMix64` seeded
/// from the run seed. Batches run across epoch ends (items are one endless stream of epochs, cut into batches), so
/// every batch is full and every item comes up equally often.
public struct BatchSampler<Element: Sendable>: Sendable {
    public let items: [Element]
    public let batchSize: Int
    public let shuffle: Bool
    public private(set) var cursor: SamplerCursor
    /// This epoch's order (nil: the items' own order).
    private var order: [Int]?
    /// The generator after drawing this epoch's order: where the next epoch's draw starts.
    private var generator: SplitMix64

    public init(_ items: [Element], batchSize: Int, shuffle: Bool, seed: UInt64) throws {
        try self.init(items, batchSize: batchSize, shuffle: shuffle,
                      resumingFrom: SamplerCursor(epoch: 0, position: 0, shuffleState: seed, count: items.count))
    }

    /// A sampler that continues where `cursor` (a saved `cursor`) stood.
    public init(_ items: [Element], batchSize: Int, shuffle: Bool, resumingFrom cursor: SamplerCursor) throws {
        guard !items.isEmpty else { throw TextCraftorError.invalidArgument("nothing to sample from: no items") }
        guard batchSize >= 1 else { throw TextCraftorError.invalidArgument("batch size must be at least 1, got \(batchSize)") }
        guard cursor.count == items.count else {
            throw TextCraftorError.invalidArgument(
                "cannot resume: the saved order runs over \(cursor.count) items, there are now \(items.count)")
        }
        guard cursor.epoch >= 0, (0..<items.count).contains(cursor.position) else {
            throw TextCraftorError.invalidArgument(
                "cannot resume: the saved position (epoch \(cursor.epoch), item \(cursor.position)) is out of range")
        }
        self.items = items
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.cursor = cursor
        generator = SplitMix64(seed: cursor.shuffleState)
        order = shuffle ? generator.permutation(items.count) : nil
    }

    /// The next `batchSize` items.
    public mutating func next() -> [Element] {
        var batch: [Element] = []
        batch.reserveCapacity(batchSize)
        while batch.count < batchSize {
            batch.append(items[order?[cursor.position] ?? cursor.position])
            cursor.position += 1
            if cursor.position == items.count {
                cursor.epoch += 1
                cursor.position = 0
                cursor.shuffleState = generator.state
                if shuffle { order = generator.permutation(items.count) }
            }
        }
        return batch
    }
}

/// Prompts in batches: `PromptSampler(source.prompts, batchSize: 4, shuffle: true, seed: seed)`.
public typealias PromptSampler = BatchSampler<String>
