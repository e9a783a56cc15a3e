import Foundation
import Testing
import Torch

@testable import TextCraftor

/// A fresh folder under the system's temporary one, for files a test writes.
func temporaryFolder() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("textcraftor-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

@discardableResult
func write(_ text: String, to name: String, in folder: URL) throws -> URL {
    let url = folder.appendingPathComponent(name)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try Data(text.utf8).write(to: url)
    return url
}

/// The error a throwing call gives, as the CLI prints it.
func message(_ body: () throws -> some Any) -> String? {
    do {
        _ = try body()
        return nil
    } catch {
        return "\(error)"
    }
}

/// `../shared/data/PartiPrompts.tsv` beside the repository: from this file, three folders up is the repository root.
let partiPromptsFile = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("../shared/data/PartiPrompts.tsv").standardizedFileURL

/// A suite whose every test gets its own temporary folder, removed afterwards.
class TemporaryFolderSuite {
    let folder: URL
    init() throws { folder = try temporaryFolder() }
    deinit { try? FileManager.default.removeItem(at: folder) }
}

@Suite final class PromptSourceTests: TemporaryFolderSuite {
    @Test func textFileOnePromptPerLine() throws {
        let url = try write("\u{FEFF}a red circle  \n\n   \r\n  a blue square\t\r\nthe last one", to: "p.txt", in: folder)
        let source = try PromptSource(contentsOf: url)
        #expect(source.format == .text)
        #expect(source.prompts == ["a red circle", "  a blue square", "the last one"])
        #expect(source.file == url.path)
    }

    @Test func explicitFormatOverridesTheExtension() throws {
        let url = try write("[\"one\", \"two\"]", to: "prompts.list", in: folder)
        #expect(try PromptSource(contentsOf: url, format: .json).prompts == ["one", "two"])
        let text = try write("[\"one\", \"two\"]", to: "p.json", in: folder)
        #expect(try PromptSource(contentsOf: text, format: .text).prompts == ["[\"one\", \"two\"]"])
        #expect(PromptFileFormat(pathExtension: "TSV") == .tsv)
        #expect(PromptFileFormat(pathExtension: "jsonl") == nil)
    }

    @Test func tsvHasNoQuoting() throws {
        // A prompt may start with a quote (Parti has one): TSV fields are taken as they are.
        let url = try write(
            "Prompt\tCategory\tChallenge\tNote\r\n\"HELLO\" on a wall\tArts\tWriting & Symbols\t\r\na cat, sitting\tAnimals\tBasic\tx\r\n",
            to: "p.tsv", in: folder)
        #expect(try PromptSource(contentsOf: url).prompts == ["\"HELLO\" on a wall", "a cat, sitting"])
        #expect(try PromptSource(contentsOf: url, category: "animals").prompts == ["a cat, sitting"])
        #expect(try PromptSource(contentsOf: url, challenge: "Writing & Symbols").prompts == ["\"HELLO\" on a wall"])
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: partiPromptsFile.path)))
    func partiPrompts() throws {
        let source = try PromptSource(contentsOf: partiPromptsFile)
        #expect(source.format == .tsv)
        #expect(source.prompts.count == 1632)
        #expect(source.prompts.first == "bond")
        #expect(source.prompts[1560]
            == "\"G I G G L E\" painted in thick colorful lettering as graffiti on a faded red brick wall with a splotch of exploding white paint.")
        #expect(try PromptSource(contentsOf: partiPromptsFile, category: "Animals").prompts.count == 314)
        #expect(try PromptSource(contentsOf: partiPromptsFile, challenge: "writing & symbols").prompts.count == 91)
        let both = try PromptSource(contentsOf: partiPromptsFile, category: "Animals", challenge: "Basic")
        #expect(both.prompts.count == 42)
        #expect(both.prompts.first == "a shiba inu")
    }

    @Test func csvWithANamedColumn() throws {
        let csv = "\u{FEFF}id,prompt,score\r\n1,\"a cat, sitting\",0.5\r\n2,\"she said \"\"hi\"\"\",1\r\n"
            + "3,\"two\nlines\",2\r\n\r\n4,plain,3"
        let url = try write(csv, to: "open.csv", in: folder)
        #expect(try PromptSource(contentsOf: url).prompts == ["a cat, sitting", "she said \"hi\"", "two\nlines", "plain"])
        let other = try write("id,text\n1,hello\n2,world\n", to: "t.csv", in: folder)
        #expect(try PromptSource(contentsOf: other, column: "text").prompts == ["hello", "world"])
        // Case-insensitive when only one column matches.
        #expect(try PromptSource(contentsOf: other, column: "TEXT").prompts == ["hello", "world"])
    }

    @Test func csvRecordsKnowTheirLines() throws {
        let rows = try DelimitedTable.records("a,b\n\"x\ny\",1\r\n\n\"\",\r\nlast,\"q\"\"\"", .csv) {
            .invalidPrompts(file: "f", message: $0)
        }
        #expect(rows.map(\.line) == [1, 2, 5, 6])
        #expect(rows.map(\.fields) == [["a", "b"], ["x\ny", "1"], ["", ""], ["last", "q\""]])
    }

    @Test func jsonListsOfStringsOrObjects() throws {
        let strings = try write("[\"anime girl\", \"  \", \"a castle \"]", to: "anime.json", in: folder)
        #expect(try PromptSource(contentsOf: strings).prompts == ["anime girl", "a castle"])
        let objects = try write("[{\"prompt\": \"one\", \"id\": 1}, {\"prompt\": \"two\"}]", to: "o.json", in: folder)
        #expect(try PromptSource(contentsOf: objects).prompts == ["one", "two"])
        let captions = try write("[{\"caption\": \"one\"}]", to: "c.json", in: folder)
        #expect(try PromptSource(contentsOf: captions, column: "caption").prompts == ["one"])
    }

    @Test func errorsNameTheFile() throws {
        let missing = folder.appendingPathComponent("nope.txt").path
        #expect(message { try PromptSource(contentsOf: URL(fileURLWithPath: missing)) } == "\(missing): no such file")
        #expect(message { try PromptSource(contentsOf: folder, format: .text) } == "\(folder.path): is a folder, not a prompt file")

        let empty = try write("", to: "empty.txt", in: folder)
        #expect(message { try PromptSource(contentsOf: empty) } == "\(empty.path): no prompts")
        let blank = try write("\n  \n\t\n", to: "blank.txt", in: folder)
        #expect(message { try PromptSource(contentsOf: blank) } == "\(blank.path): no prompts")
        let headerOnly = try write("prompt\n", to: "h.csv", in: folder)
        #expect(message { try PromptSource(contentsOf: headerOnly) } == "\(headerOnly.path): no prompts")
        let emptyTable = try write("\n\n", to: "e.tsv", in: folder)
        #expect(message { try PromptSource(contentsOf: emptyTable) } == "\(emptyTable.path): no prompts")
        let emptyList = try write("[]", to: "e.json", in: folder)
        #expect(message { try PromptSource(contentsOf: emptyList) } == "\(emptyList.path): no prompts")

        let markdown = try write("a", to: "p.md", in: folder)
        #expect(message { try PromptSource(contentsOf: markdown) }
            == "\(markdown.path): unknown extension \".md\": expected .txt, .tsv, .csv or .json, or an explicit format")
        let bare = try write("a", to: "prompts", in: folder)
        #expect(message { try PromptSource(contentsOf: bare) }
            == "\(bare.path): no extension: expected .txt, .tsv, .csv or .json, or an explicit format")

        let latin1 = folder.appendingPathComponent("l.txt")
        try Data([0x63, 0x61, 0x66, 0xE9]).write(to: latin1)
        #expect(message { try PromptSource(contentsOf: latin1) } == "\(latin1.path): not UTF-8 text")
    }

    /// A 120 kB header line (one huge column with an escape code, or thousands of columns): the error quotes a short
    /// escaped excerpt of the columns and says how many more there are, instead of the whole line.
    @Test func hugeHeaderGivesAShortError() throws {
        let wide = try write("\u{1B}[31m" + String(repeating: "x", count: 120_000) + "\tCategory\na\tb\n", to: "wide.tsv", in: folder)
        let wideError = message { try PromptSource(contentsOf: wide) }
        #expect(wideError == "\(wide.path): no column \"prompt\" (its columns: \\u{1b}[31m"
            + String(repeating: "x", count: 35) + "…(119965 more characters), Category)")
        let many = try write((0..<20_000).map { "column\($0)" }.joined(separator: "\t") + "\n" + String(repeating: "a\t", count: 19_999) + "a\n",
                             to: "many.tsv", in: folder)
        let manyError = message { try PromptSource(contentsOf: many) }
        #expect(manyError == "\(many.path): no column \"prompt\" (its columns: column0, column1, column2, column3, column4, "
            + "column5, column6, column7, column8, column9, column10, … (19989 more))")
        for (url, error) in [(wide, wideError), (many, manyError)] {
            #expect((error?.count ?? 0) < 300 - 80 + url.path.count, "\(error ?? "")")
            // The evaluation's reader (which tries a Category column first) gives the same.
            #expect(message { try EvalPromptSet.files([url]) } == error)
        }
    }

    @Test func tableErrors() throws {
        let noColumn = try write("id,text\n1,hello\n", to: "t.csv", in: folder)
        #expect(message { try PromptSource(contentsOf: noColumn) } == "\(noColumn.path): no column \"prompt\" (its columns: id, text)")
        let open = try write("prompt,n\n\"unclosed,1\n", to: "o.csv", in: folder)
        #expect(message { try PromptSource(contentsOf: open) } == "\(open.path): line 2: a quoted field is not closed")
        let ragged = try write("prompt,a,b\nx,1,2\ny,1\n", to: "r.csv", in: folder)
        #expect(message { try PromptSource(contentsOf: ragged) } == "\(ragged.path): line 3: 2 fields, but the header has 3")
        let tsv = try write("Prompt\tCategory\na\tAnimals\nb\tPeople\n", to: "p.tsv", in: folder)
        #expect(message { try PromptSource(contentsOf: tsv, category: "Animal") }
            == "\(tsv.path): no prompts with Category \"Animal\" (its values: Animals, People)")
        #expect(message { try PromptSource(contentsOf: tsv, challenge: "Basic") }
            == "\(tsv.path): no column \"Challenge\" to filter on (its columns: Prompt, Category)")
        let parti = try write("Prompt\tCategory\tChallenge\na\tAnimals\tBasic\nb\tPeople\tComplex\n", to: "q.tsv", in: folder)
        #expect(message { try PromptSource(contentsOf: parti, category: "Animals", challenge: "Complex") }
            == "\(parti.path): no prompts with Category \"Animals\" and Challenge \"Complex\"")
        let text = try write("a\n", to: "a.txt", in: folder)
        #expect(message { try PromptSource(contentsOf: text, category: "Animals") }
            == "\(text.path): category and challenge filters need a TSV or CSV file with those columns")
    }

    @Test func jsonErrors() throws {
        let broken = try write("[\"a\", ", to: "b.json", in: folder)
        let brokenMessage = try #require(message { try PromptSource(contentsOf: broken) })
        // The reason in parentheses is the platform JSON parser's, when it gives one.
        #expect(brokenMessage.hasPrefix("\(broken.path): malformed JSON"))
        let object = try write("{\"prompts\": [\"a\"]}", to: "o.json", in: folder)
        #expect(message { try PromptSource(contentsOf: object) }
            == "\(object.path): expected a JSON list of strings or of objects with a \"prompt\" key, found an object")
        let mixed = try write("[\"a\", 3]", to: "m.json", in: folder)
        #expect(message { try PromptSource(contentsOf: mixed) }
            == "\(mixed.path): [1]: expected a string or an object with a \"prompt\" key, found a number")
        let noKey = try write("[{\"caption\": \"a\", \"id\": 1}]", to: "k.json", in: folder)
        #expect(message { try PromptSource(contentsOf: noKey) } == "\(noKey.path): [0]: no \"prompt\" key (its keys: caption, id)")
        let notString = try write("[{\"prompt\": null}]", to: "n.json", in: folder)
        #expect(message { try PromptSource(contentsOf: notString) } == "\(notString.path): [0].prompt: expected a string, found null")
    }
}

@Suite struct PromptSourceSamplerTests {
    @Test func splitMix64MatchesTheReference() {
        // Vigna's splitmix64.c, seeded with 0.
        var generator = SplitMix64(seed: 0)
        #expect([generator.next(), generator.next(), generator.next()]
            == [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
    }

    @Test func permutationsArePinned() {
        // The same algorithm written in Python gives these; a change here would break every saved cursor.
        var generator = SplitMix64(seed: 0)
        #expect(generator.permutation(10) == [4, 9, 2, 5, 1, 7, 6, 0, 3, 8])
        #expect(generator.permutation(10) == [0, 4, 1, 2, 5, 7, 8, 6, 3, 9])
        #expect(generator.state == 0x1FE6_8F0A_F33C_B97A)
        var other = SplitMix64(seed: 42)
        #expect(other.permutation(10) == [8, 3, 6, 5, 4, 0, 9, 2, 1, 7])
        #expect(other.permutation(1) == [0])
        #expect(other.permutation(0) == [])
    }

    @Test func fileOrderEpochAfterEpoch() throws {
        var sampler = try PromptSampler(["a", "b", "c", "d", "e"], batchSize: 2, shuffle: false, seed: 9)
        #expect(sampler.next() == ["a", "b"])
        #expect(sampler.next() == ["c", "d"])
        #expect(sampler.next() == ["e", "a"])
        #expect(sampler.cursor == SamplerCursor(epoch: 1, position: 1, shuffleState: 9, count: 5))
        #expect(sampler.next() == ["b", "c"])
    }

    @Test func shuffledBatchesArePinned() throws {
        let items = (0..<10).map { "p\($0)" }
        var sampler = try PromptSampler(items, batchSize: 3, shuffle: true, seed: 7)
        let expected = [[9, 5, 8], [6, 1, 2], [4, 7, 0], [3, 1, 8], [3, 2, 9], [5, 6, 7], [0, 4, 1], [8, 4, 3]]
        for batch in expected { #expect(sampler.next() == batch.map { "p\($0)" }) }
        #expect(sampler.cursor.epoch == 2)
        #expect(sampler.cursor.position == 4)
    }

    @Test func everyEpochIsAFreshPermutation() throws {
        let items = Array(0..<50)
        var sampler = try BatchSampler(items, batchSize: 5, shuffle: true, seed: 123)
        var epochs: [[Int]] = []
        for _ in 0..<4 { epochs.append((0..<10).flatMap { _ in sampler.next() }) }
        for epoch in epochs { #expect(epoch.sorted() == items) }
        #expect(Set(epochs).count == 4)
        #expect(epochs[0] != items)

        var same = try BatchSampler(items, batchSize: 5, shuffle: true, seed: 123)
        #expect((0..<40).flatMap { _ in same.next() } == epochs.flatMap { $0 })
        var other = try BatchSampler(items, batchSize: 5, shuffle: true, seed: 124)
        #expect((0..<10).flatMap { _ in other.next() } != epochs[0])
    }

    @Test(arguments: [(1, true), (3, true), (4, true), (7, false), (25, true)])
    func resumingFromASavedCursorRepeatsTheRun(batchSize: Int, shuffle: Bool) throws {
        let items = (0..<10).map { "prompt \($0)" }
        var uninterrupted = try PromptSampler(items, batchSize: batchSize, shuffle: shuffle, seed: 2024)
        for _ in 0..<7 { _ = uninterrupted.next() }
        let saved = try JSONEncoder().encode(uninterrupted.cursor)
        let expected = (0..<25).map { _ in uninterrupted.next() }

        let cursor = try JSONDecoder().decode(SamplerCursor.self, from: saved)
        var resumed = try PromptSampler(items, batchSize: batchSize, shuffle: shuffle, resumingFrom: cursor)
        #expect((0..<25).map { _ in resumed.next() } == expected)
        #expect(resumed.cursor == uninterrupted.cursor)
    }

    @Test func cursorIsSmallJSON() throws {
        var sampler = try PromptSampler(["a", "b", "c"], batchSize: 2, shuffle: true, seed: UInt64.max)
        _ = sampler.next()
        _ = sampler.next()
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(sampler.cursor), as: UTF8.self)
        #expect(json == "{\"count\":3,\"epoch\":1,\"position\":1,\"shuffle_state\":\(sampler.cursor.shuffleState)}")
        #expect(try JSONDecoder().decode(SamplerCursor.self, from: Data(json.utf8)) == sampler.cursor)
    }

    @Test func badSamplerArguments() throws {
        #expect(message { try PromptSampler([], batchSize: 1, shuffle: false, seed: 0) } == "nothing to sample from: no items")
        #expect(message { try PromptSampler(["a"], batchSize: 0, shuffle: false, seed: 0) } == "batch size must be at least 1, got 0")
        let cursor = SamplerCursor(epoch: 3, position: 1, shuffleState: 5, count: 1632)
        #expect(message { try PromptSampler(["a", "b"], batchSize: 1, shuffle: true, resumingFrom: cursor) }
            == "cannot resume: the saved order runs over 1632 items, there are now 2")
        let past = SamplerCursor(epoch: 0, position: 2, shuffleState: 5, count: 2)
        #expect(message { try PromptSampler(["a", "b"], batchSize: 1, shuffle: true, resumingFrom: past) }
            == "cannot resume: the saved position (epoch 0, item 2) is out of range")
    }
}
