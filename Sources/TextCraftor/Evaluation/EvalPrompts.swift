import Foundation
import Torch

/// One benchmark prompt and the group it is reported under (its style's file, or its Parti category).
public struct EvalPrompt: Codable, Equatable, Sendable {
    public let text: String
    public let group: String

    public init(text: String, group: String) {
        self.text = text
        self.group = group
    }
}

/// The prompts of an evaluation, in order, and how they are grouped in the report.
public struct EvalPromptSet: Equatable, Sendable {
    public enum Grouping: String, Codable, Sendable {
        /// One file without categories: no breakdown.
        case none
        /// Several files, one per style (the HPSv2 benchmark's anime.json, concept-art.json, ...): results per style
        /// and their unweighted average, as the benchmark reports.
        case style
        /// A table with a Category column (Parti-Prompts): results per category.
        case category
    }

    public let prompts: [EvalPrompt]
    public let grouping: Grouping

    public init(prompts: [EvalPrompt], grouping: Grouping) {
        self.prompts = prompts
        self.grouping = grouping
    }

    /// The groups in order of first appearance.
    public var groups: [String] {
        var seen: Set<String> = []
        return prompts.map(\.group).filter { seen.insert($0).inserted }
    }

    /// Reads prompt files in any format the trainer reads. Several files are styles, each named by its file's name
    /// without the extension; one TSV or CSV file with a Category column is grouped by category (Parti-Prompts).
    /// `category` and `challenge` keep only matching rows of such tables.
    public static func files(_ urls: [URL], column: String = "prompt", category: String? = nil, challenge: String? = nil)
        throws -> EvalPromptSet
    {
        precondition(!urls.isEmpty, "EvalPromptSet.files needs a file")
        var prompts: [EvalPrompt] = []
        var styles: Set<String> = []
        var labelled = false
        for url in urls {
            let style = url.deletingPathExtension().lastPathComponent
            guard styles.insert(style).inserted else {
                throw TextCraftorError.invalidPrompts(
                    file: url.path, message: "a second file for the style \"\(style)\" (styles are named by file name)")
            }
            let source = try read(url, column: column, category: category, challenge: challenge, categories: urls.count == 1)
            labelled = source.labels != nil
            let labels = source.labels ?? Array(repeating: style, count: source.prompts.count)
            prompts += zip(source.prompts, labels).map { EvalPrompt(text: $0, group: $1.isEmpty ? "(none)" : $1) }
        }
        let grouping: Grouping = urls.count > 1 ? .style : labelled ? .category : .none
        return EvalPromptSet(prompts: prompts, grouping: grouping)
    }

    /// A table's Category column when it has one (and only one file is read), else the prompts alone.
    static func read(_ url: URL, column: String, category: String?, challenge: String?, categories: Bool) throws -> PromptSource {
        if categories, let format = PromptFileFormat(pathExtension: url.pathExtension), format == .tsv || format == .csv,
           let source = try? PromptSource(contentsOf: url, column: column, category: category, challenge: challenge,
                                          labelColumn: "Category")
        {
            return source
        }
        return try PromptSource(contentsOf: url, column: column, category: category, challenge: challenge)
    }

    /// The first `count` prompts.
    public func limited(to count: Int) -> EvalPromptSet {
        EvalPromptSet(prompts: Array(prompts.prefix(count)), grouping: grouping)
    }

    /// `count` prompts drawn without replacement by a seeded shuffle (SplitMix64, so the same seed draws the same
    /// prompts on every machine), kept in their file order.
    public func sampled(_ count: Int, seed: UInt64) -> EvalPromptSet {
        guard count < prompts.count else { return self }
        var generator = SplitMix64(seed: seed)
        var indices = Array(prompts.indices)
        for i in 0..<count {  // partial Fisher-Yates
            let j = i + Int(generator.next(below: UInt64(indices.count - i)))
            indices.swapAt(i, j)
        }
        return EvalPromptSet(prompts: indices.prefix(count).sorted().map { prompts[$0] }, grouping: grouping)
    }
}
