import Foundation
import StableDiffusion

/// One image and its caption, for direct fine-tuning.
public struct ImageCaption: Sendable, Equatable {
    public let image: URL
    public let caption: String

    public init(image: URL, caption: String) {
        self.image = image
        self.caption = caption
    }
}

/// Image–caption pairs for direct fine-tuning, in the metadata's order, every image checked to exist.
///
/// The layout is Hugging Face's `imagefolder`: a folder with `metadata.jsonl` (one object per line,
/// `{"file_name": "0001.png", "text": "a red circle"}`) or `metadata.csv` (columns `file_name` and `text`), file names
/// relative to the folder. A `caption` key or column is accepted where `text` is missing. Batches come from
/// `BatchSampler(data.pairs, batchSize:shuffle:seed:)`, resumable like the prompts'.
public struct PairedData: Sendable {
    /// The metadata file the pairs were read from.
    public let metadata: URL
    public let pairs: [ImageCaption]

    public static let metadataNames = ["metadata.jsonl", "metadata.csv"]

    /// `location`: a folder holding `metadata.jsonl` or `metadata.csv`, or such a file itself (`.jsonl`, `.csv`).
    public init(contentsOf location: URL) throws {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: location.path, isDirectory: &isFolder) else {
            throw TextCraftorError.invalidData(file: location.path, message: "no such file or folder")
        }
        var metadata = location
        if isFolder.boolValue {
            let present = Self.metadataNames.map { location.appendingPathComponent($0) }
                .filter { FileManager.default.fileExists(atPath: $0.path) }
            guard present.count == 1 else {
                throw TextCraftorError.invalidData(
                    file: location.path,
                    message: present.isEmpty ? "no metadata.jsonl or metadata.csv" : "both metadata.jsonl and metadata.csv; keep one")
            }
            metadata = present[0]
        }
        let path = metadata.path
        func fail(_ message: String) -> TextCraftorError { .invalidData(file: path, message: message) }
        let text = try readText(metadata, what: "a metadata file", fail: fail)

        let entries: [(line: Int, fileName: String, caption: String)]
        switch metadata.pathExtension.lowercased() {
        case "jsonl": entries = try Self.jsonLines(text, fail: fail)
        case "csv": entries = try Self.csv(text, fail: fail)
        default: throw fail("expected a folder, a .jsonl or a .csv file")
        }
        guard !entries.isEmpty else { throw fail("no image-caption pairs") }

        let folder = metadata.deletingLastPathComponent()
        pairs = try entries.map { entry in
            guard !entry.fileName.isEmpty else { throw fail("line \(entry.line): empty file_name") }
            let expanded = NSString(string: entry.fileName).expandingTildeInPath
            let image = expanded.hasPrefix("/")
                ? URL(fileURLWithPath: expanded) : folder.appendingPathComponent(entry.fileName)
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: image.path, isDirectory: &isFolder) else {
                throw fail("line \(entry.line): no image file \"\(entry.fileName)\"")
            }
            guard !isFolder.boolValue else { throw fail("line \(entry.line): \"\(entry.fileName)\" is a folder, not an image") }
            return ImageCaption(image: image.standardizedFileURL, caption: entry.caption)
        }
        self.metadata = metadata
    }

    /// `metadata.jsonl`: one JSON object per line (blank lines skipped), `file_name` and `text` (or `caption`).
    static func jsonLines(_ text: String, fail: (String) -> TextCraftorError) throws -> [(line: Int, fileName: String, caption: String)] {
        var entries: [(line: Int, fileName: String, caption: String)] = []
        // Split on LF only: a JSON string cannot hold a raw newline, and a CR before it is JSON whitespace.
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            guard line.contains(where: { !$0.isWhitespace }) else { continue }
            let value = try JSONValue.parse(String(line), fail: { fail("line \(number): \($0)") })
            guard case .object(let object) = value else {
                throw fail("line \(number): expected an object with \"file_name\" and \"text\", found \(value.kind)")
            }
            func string(_ key: String) throws -> String? {
                guard let value = object[key] else { return nil }
                guard case .string(let string) = value else {
                    throw fail("line \(number): \"\(key)\": expected a string, found \(value.kind)")
                }
                return string
            }
            guard let fileName = try string("file_name") else { throw fail("line \(number): no \"file_name\" key") }
            guard let caption = try string("text") ?? string("caption") else {
                throw fail("line \(number): no \"text\" or \"caption\" key")
            }
            entries.append((number, fileName, caption))
        }
        return entries
    }

    /// `metadata.csv` (RFC 4180): columns `file_name` and `text` (or `caption`); line numbers count the header as 1.
    static func csv(_ text: String, fail: (String) -> TextCraftorError) throws -> [(line: Int, fileName: String, caption: String)] {
        let table = try DelimitedTable(text, .csv, fail: fail)
        guard !table.header.isEmpty else { return [] }
        let file = try table.column("file_name", fail: fail)
        guard let name = matchName("text", in: table.header) ?? matchName("caption", in: table.header),
              let caption = table.header.firstIndex(of: name) else {
            throw fail("no column \"text\" or \"caption\" (its columns: \(excerptList(table.header)))")
        }
        return table.rows.map { ($0.line, $0.fields[file], $0.fields[caption]) }
    }
}
