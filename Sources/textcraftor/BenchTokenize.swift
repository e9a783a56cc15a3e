import ArgumentParser
import Foundation
import StableDiffusion
import TextCraftor

/// CLIP tokenizer speed against transformers' CLIPTokenizer (scripts/bench/clip_tokenizer.py), on the same tokenizer
/// folder and the same prompts.
struct BenchTokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "CLIP tokenizer speed (prompts per second, empty and warm word cache) against transformers' CLIPTokenizer.",
        discussion: """
            Each repeat loads the tokenizer folder (vocab.json, merges.txt), tokenizes every prompt once with an empty \
            word cache, then once more with the words cached, to --max-length ids with padding and truncation, as a \
            pipeline does; the best of --repeats of each is kept. The prompts default to the bundled Parti-Prompts \
            (1632, some longer than 77 tokens). Both sides run on one thread. The reference also tokenizes the same \
            prompts: a checksum of the ids says whether both sides agree (transformers 4 with ftfy installed is the \
            tokenizer Stable Diffusion uses; without ftfy, or with transformers 5, its text cleaning differs).
            """)

    @Option(help: "A tokenizer folder (vocab.json, merges.txt) or a bpe_simple_vocab_16e6.txt.gz (default: the bundled CLIP vocabulary).",
            completion: .file())
    var tokenizer: String?
    @Option(help: "A prompt file: text (one a line), TSV or CSV with a prompt column, or JSON (default: the bundled Parti-Prompts).",
            completion: .file())
    var prompts: String?
    @Option(help: "Context length: ids are padded and truncated to it.") var maxLength = 77
    @Option(help: "Repeats; the best is kept.") var repeats = 3
    @Option(help: "Python with transformers for the reference run (skipped when it cannot import it).")
    var python = ProcessInfo.processInfo.environment["TEXTCRAFTOR_PYTHON"] ?? "python3"
    @Option(help: "The reference script.") var script = "scripts/bench/clip_tokenizer.py"

    func run() throws {
        guard repeats >= 1 else { throw CommandError("--repeats must be at least 1 (got \(repeats))") }
        guard maxLength >= 2 else { throw CommandError("--max-length must be at least 2 (got \(maxLength))") }
        guard maxLength <= Tokenize.maxContextLength else {
            throw CommandError("--max-length must be at most \(Tokenize.maxContextLength) (got \(maxLength))")
        }
        let texts = try promptTexts()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("bench-tokenize-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: scratch) }
        // Both sides load the same folder: a given folder as it is, else ours written out in transformers' layout.
        let folder: URL
        if let tokenizer, !tokenizer.hasSuffix(".gz") {
            folder = URL(fileURLWithPath: tokenizer)
        } else {
            folder = scratch.appendingPathComponent("tokenizer")
            let source = try tokenizer.map { try CLIPTokenizer(openCLIPMerges: URL(fileURLWithPath: $0)) } ?? CLIPTokenizer.bundled()
            try source.write(to: folder)
        }
        let promptsFile = scratch.appendingPathComponent("prompts.json")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: texts).write(to: promptsFile, options: .atomic)

        let (ours, checksum) = try measure(folder: folder, prompts: texts)
        let (reference, failure) = runPythonReference(python: python, script: script, arguments: [
            "--tokenizer", folder.path, "--prompts-file", promptsFile.path, "--max-length", "\(maxLength)",
            "--repeats", "\(repeats)",
        ])
        let n = texts.count
        printComparison(
            "CLIP tokenizer: \(n) prompts from \(prompts ?? "Parti-Prompts"), \(maxLength) ids each, best of \(repeats)",
            measures: [
                ("load_ms", "load vocab.json and merges.txt", "ms", false),
                ("cold_prompts_per_s", "\(n) prompts, empty word cache", "prompts/s", true),
                ("warm_prompts_per_s", "\(n) prompts, words cached", "prompts/s", true),
            ],
            ours: ours, reference: reference, failure: failure)
        guard let reference, let theirs = reference["ids_checksum"] else { return }
        let version = reference["transformers_major"].map { "transformers \(Int($0))" } ?? "transformers"
        let ftfy = reference["ftfy"] == 1 ? "with ftfy" : "without ftfy"
        if theirs == checksum {
            print("ids: the same as \(version)'s CLIPTokenizer (\(ftfy)) for all \(n) prompts")
        } else {
            print("ids: differ from \(version)'s CLIPTokenizer (\(ftfy)): checksum \(Int(checksum)) here, \(Int(theirs)) there")
        }
    }

    func promptTexts() throws -> [String] {
        if let prompts {
            do { return try PromptSource(contentsOf: URL(fileURLWithPath: prompts)).prompts } catch {
                throw CommandError("\(error)")
            }
        }
        guard let parti = TextCraftorResources.partiPrompts else {
            throw CommandError("PartiPrompts.tsv is not installed with this binary: give --prompts FILE")
        }
        do { return try PromptSource(contentsOf: parti).prompts } catch { throw CommandError("\(error)") }
    }

    /// The best of `repeats` timings of each step, and a checksum of the ids (the same formula as the script's).
    func measure(folder: URL, prompts: [String]) throws -> (numbers: [String: Double], checksum: Double) {
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        var load = Double.infinity, cold = Double.infinity, warm = Double.infinity
        var ids: [[Int32]] = []
        for _ in 0..<repeats {
            var clip: CLIPTokenizer!
            load = min(load, try seconds { clip = try CLIPTokenizer(directory: folder) })
            cold = min(cold, seconds { ids = clip.tokenize(prompts, maxLength: maxLength).ids })
            warm = min(warm, seconds { _ = clip.tokenize(prompts, maxLength: maxLength) })
        }
        let n = Double(prompts.count)
        return (["load_ms": load * 1e3, "cold_prompts_per_s": n / cold, "warm_prompts_per_s": n / warm],
                Self.checksum(ids, maxLength: maxLength))
    }

    /// Σ id × ((row × maxLength + column) mod 1009 + 1): exact in a Double for any batch a benchmark runs.
    static func checksum(_ ids: [[Int32]], maxLength: Int) -> Double {
        var sum = 0
        for (row, rowIDs) in ids.enumerated() {
            for (column, id) in rowIDs.enumerated() { sum += Int(id) * ((row * maxLength + column) % 1009 + 1) }
        }
        return Double(sum)
    }
}
