import ArgumentParser
import Foundation
import TextCraftor
import Torch

/// Real-shaped models with random weights, for benchmarks and dry runs where the real checkpoints are not at hand.
struct SynthModel: ParsableCommand {
    /// Wide enough for the longest preset name and two spaces, so a name never runs into its summary.
    private static let presetColumn = (ModelPreset.allCases.map(\.rawValue.count).max() ?? 0) + 2

    static let configuration = CommandConfiguration(
        commandName: "synth-model",
        abstract: "Write a model with a published checkpoint's exact config and key names, and random weights.",
        discussion: """
            For measuring speed and memory on the real shapes without downloading anything. The files load wherever \
            the real ones do (diffusers, transformers, open_clip, and this tool); the weights are PyTorch's default \
            initialisations from --seed, so images are noise and scores meaningless.

            Presets:
            \(ModelPreset.allCases.map { "  \($0.rawValue.padding(toLength: presetColumn, withPad: " ", startingAt: 0))\($0.summary)" }.joined(separator: "\n"))

            The folder is written as OUT.partial and renamed when complete. float16 (the default) halves the size: \
            sd15 takes 2.1 GB, sd21 2.6 GB, sdxl 6.9 GB, pickscore and hpsv2 2.0 GB, aesthetic, aesthetic25 and imagereward \
            0.9 GB. imagereward's vocab.txt is a placeholder (BERT's special tokens at their ids, then ASCII characters and \
            fillers): bert-base-uncased's vocabulary cannot be made up, so give the real one with real weights.
            """)

    @Option(help: "sd15, sd21, sdxl, pickscore, hpsv2, aesthetic, aesthetic25 or imagereward.") var preset: String
    @Option(help: "The folder to create.", completion: .directory) var out: String
    @Option(help: "Storage type: float16, bfloat16 or float32.") var dtype = "float16"
    @Option(help: "Seed of the random weights.") var seed: UInt64 = 0

    func run() throws {
        guard let preset = ModelPreset(rawValue: preset) else {
            throw CommandError("--preset \(preset): expected \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let type = DType(name: dtype), type.isFloatingPoint else {
            throw CommandError("--dtype \(dtype): expected float16, bfloat16 or float32")
        }
        let folder = URL(fileURLWithPath: out)
        guard !FileManager.default.fileExists(atPath: folder.path) else {
            throw CommandError("\(out) already exists: choose another --out or remove it")
        }
        let partial = URL(fileURLWithPath: out + ".partial")
        try? FileManager.default.removeItem(at: partial)
        let names = preset.componentNames()
        let bar = ProgressBar("synth-model \(preset.rawValue)", total: names.count)
        var done = 0
        do {
            try preset.write(to: partial, seed: seed, dtype: type) { name in
                bar.update(done, note: name)
                done += 1
            }
        } catch let error as CocoaError {
            throw CommandError("\(partial.path): cannot write (\(error.localizedDescription))")
        }
        bar.update(names.count)
        try FileManager.default.moveItem(at: partial, to: folder)
        print("wrote \(out) (\(preset.summary), \(type)); use it with \(preset.usage(out))")
    }
}
