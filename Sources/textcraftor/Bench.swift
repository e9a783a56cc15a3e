import ArgumentParser
import Foundation
import TextCraftor
import Torch

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks, printed side by side with the same work in Python torch when one is installed.",
        subcommands: [BenchOps.self, BenchSD.self, BenchTrain.self, BenchTokenize.self])
}

/// Per-op overhead and matmul throughput of our engine against Python torch, measured the same way in both:
/// wall-clock time of a loop after warm-up, the best of several repeats.
struct BenchOps: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ops",
        abstract: "Per-op overhead (µs per call on tiny tensors) and 1024³ float32 matmul throughput.",
        discussion: """
            The reference numbers come from scripts/bench/ops.py run by --python (default: python3), when that Python \
            can import torch. Both sides use the same thread count. Ratios above 1 mean Swift is faster.
            """)

    @Option(help: "Calls per timed loop for the overhead benchmark.") var calls = 100_000
    @Option(help: "Matmuls per timed loop.") var matmuls = 10
    @Option(help: "Repeats of each loop; the best is kept.") var repeats = 5
    @Option(help: "Intra-op threads for both sides (default: libtorch's default).") var threads: Int?
    @Option(help: "Python interpreter for the reference run (skipped when it cannot import torch).")
    var python = ProcessInfo.processInfo.environment["TEXTCRAFTOR_PYTHON"] ?? "python3"
    @Option(help: "The reference script.") var script = "scripts/bench/ops.py"

    func run() throws {
        if let threads { Torch.threadCount = threads }
        let threadCount = Torch.threadCount
        let ours = measure()
        let (reference, failure) = runReference(threads: threadCount)
        printComparison(
            "op benchmark, \(threadCount) thread(s), best of \(repeats) (libtorch \(Torch.runtimeVersion ?? "?"))",
            measures: BenchOps.measures, ours: ours, reference: reference, failure: failure)
    }

    static let measures: [(key: String, label: String, unit: String, higherIsBetter: Bool)] = [
        ("add_us", "add, 1-element tensors", "µs/op", false),
        ("relu_us", "relu, 1-element tensor", "µs/op", false),
        ("linear_us", "linear 1x8 @ 8x8", "µs/op", false),
        ("matmul_gflops", "matmul 1024³ float32", "GFLOP/s", true),
    ]

    func measure() -> [String: Double] {
        let g = Generator(seed: 0)
        let a = Tensor.randn([1], generator: g), b = Tensor.randn([1], generator: g)
        let x = Tensor.randn([1, 8], generator: g), w = Tensor.randn([8, 8], generator: g)
        let m1 = Tensor.randn([1024, 1024], generator: g), m2 = Tensor.randn([1024, 1024], generator: g)
        func best(_ n: Int, _ body: () -> Void) -> Double {
            for _ in 0..<max(n / 10, 1) { body() }  // warm-up
            return (0..<repeats).map { _ in
                let start = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<n { body() }
                return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            }.min()!
        }
        return withNoGrad {
            [
                "add_us": best(calls) { _ = a + b } / Double(calls) * 1e6,
                "relu_us": best(calls) { _ = a.relu() } / Double(calls) * 1e6,
                "linear_us": best(calls) { _ = Functional.linear(x, weight: w) } / Double(calls) * 1e6,
                "matmul_gflops": 2 * pow(1024, 3) * Double(matmuls) / best(matmuls) { _ = m1.matmul(m2) } / 1e9,
            ]
        }
    }

    func runReference(threads: Int) -> (numbers: [String: Double]?, failure: String?) {
        runPythonReference(python: python, script: script, arguments: [
            "--calls", "\(calls)", "--matmuls", "\(matmuls)", "--repeats", "\(repeats)", "--threads", "\(threads)",
        ])
    }
}

/// Runs a reference script that prints one JSON object of numbers. Without numbers, `failure` says why in one line:
/// the last line the script wrote to stderr (a Python traceback ends with the exception), or that it cannot start.
func runPythonReference(python: String, script: String, arguments: [String]) -> (numbers: [String: Double]?, failure: String?) {
    guard FileManager.default.fileExists(atPath: script) else { return (nil, "\(script) is not here (run from the repository)") }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [python, script] + arguments
    let out = Pipe()
    // stderr goes to a file, so that a chatty script cannot block on a full pipe while stdout is read.
    let errorsFile = FileManager.default.temporaryDirectory.appendingPathComponent("textcraftor-reference-\(UUID().uuidString).log")
    _ = FileManager.default.createFile(atPath: errorsFile.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: errorsFile) }
    process.standardOutput = out
    process.standardError = try? FileHandle(forWritingTo: errorsFile)
    guard (try? process.run()) != nil else { return (nil, "\(python) cannot be started") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let errors = FileManager.default.contents(atPath: errorsFile.path) ?? Data()
    let lastLine = String(decoding: errors, as: UTF8.self).split(whereSeparator: \.isNewline).last.map { String($0.prefix(300)) }
    guard process.terminationStatus == 0 else {
        return (nil, "\(python) \(script) failed: \(lastLine ?? "exit status \(process.terminationStatus)")")
    }
    guard let numbers = try? JSONDecoder().decode([String: Double].self, from: data) else {
        return (nil, "\(python) \(script) printed no JSON object of numbers")
    }
    return (numbers, nil)
}

/// Prints our numbers beside the reference's, with ratios (above 1: Swift is better).
func printComparison(_ title: String, measures: [(key: String, label: String, unit: String, higherIsBetter: Bool)],
                     ours: [String: Double], reference: [String: Double]?, failure: String?) {
    print(title)
    var rows: [[String]] = []
    for m in measures {
        let s = ours[m.key]!, p = reference?[m.key]
        let ratio = p.map { m.higherIsBetter ? s / $0 : $0 / s }
        rows.append([m.label, String(format: "%.3f %@", s, m.unit), p.map { String(format: "%.3f %@", $0, m.unit) } ?? "-",
                     ratio.map { String(format: "%.2fx", $0) } ?? "-"])
    }
    printTable(["measure", "swift", "python", "ratio"], rows)
    if reference == nil { print("(no reference: \(failure ?? "it did not run"); set --python or TEXTCRAFTOR_PYTHON)") }
}

/// Prints rows under a header with aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max()! }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    print(line(header))
    print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
    rows.forEach { print(line($0)) }
}

/// The model of a benchmark: ours reads `--model` as given (a folder, or a single file with its published configs);
/// the diffusers reference reads folders, so a single file is first written as a temporary diffusers folder
/// (`textcraftor convert`), removed at the end.
struct BenchModel {
    let source: ModelSource
    /// What the reference loads: the folder, or the temporary conversion of the file.
    let referenceFolder: String
    private let temporary: URL?

    init(_ model: String) throws {
        source = try speakingFlags { try ModelSource(model: model, modelConfig: nil) }
        guard source.singleFile != nil else {
            (referenceFolder, temporary) = (model, nil)
            return
        }
        sayModelNotes(source.notes)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("textcraftor-bench-\(UUID().uuidString)")
        FileHandle.standardError.write(Data("model: written as a diffusers folder for the reference (\(folder.path), removed at the end)\n".utf8))
        let file = source
        _ = try speakingFlags { try ModelExport.run(ModelExport.Request(model: file, out: folder.path, format: .diffusers)) }
        (referenceFolder, temporary) = (folder.path, folder)
    }

    func cleanUp() {
        if let temporary { try? FileManager.default.removeItem(at: temporary) }
    }
}
