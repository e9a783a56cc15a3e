import ArgumentParser
import Foundation
import NN
import Rewards
import StableDiffusion
import TextCraftor
import Torch

/// Everything a run is started with; written to OUT/run.json so that `--resume OUT` needs no flags again.
struct RunOptions: Codable {
    var model: String
    var prompts: String
    var promptColumn: String?
    var rewards: [String]
    var lr = 1e-6
    var betas = [0.9, 0.999]
    var weightDecay = 1e-2
    var eps = 1e-8
    var warmupSteps = 0
    var batchSize = 1
    var gradAccumulation = 1
    var maxGradNorm: Double?
    var maxSteps = 1000
    var seed: UInt64 = 0
    var saveEvery = 500
    var keepCheckpoints = 3
    var samplingSteps = 25
    var gradWindow = 5
    var guidance = 7.5
    var resolution: Int?
    var shuffle = false
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune the text encoder with TextCraftor (prompt-based: rewards on images sampled from the frozen UNet).",
        discussion: """
            Each step samples images for a batch of prompts with DDIM (eta 0, trailing timesteps, guidance), the last \
            --grad-window steps with the trainable encoder for both the prompt and the empty prompt, decodes them, \
            scores them and takes an AdamW step on -Σ γ·scale·reward. The gradient through the window is exact and \
            costs the memory of one UNet step.

            Writes OUT/text_encoder/ (config.json + model.safetensors, loadable by diffusers and by \
            `textcraftor generate --text-encoder`), OUT/metrics.jsonl, OUT/run.json and OUT/checkpoints/. \
            Ctrl-C saves a checkpoint and exits; `--resume OUT` continues exactly where it stopped.
            """)

    @Option(help: "A diffusers model folder.", completion: .directory) var model: String?
    @Option(help: "Prompts: a .txt (one per line), Parti .tsv (column Prompt), .csv (--prompt-column) or .json list.",
            completion: .file()) var prompts: String?
    @Option(help: "The CSV column holding the prompts.") var promptColumn: String?
    @Option(name: .customLong("reward"), help: "NAME=PATH[:GAMMA], repeatable (see `textcraftor score --help`).")
    var rewards: [String] = []
    @Option(help: "Output folder.", completion: .directory) var out: String?
    @Option(help: "Continue the run in this folder from its newest checkpoint.", completion: .directory) var resume: String?

    @Option(help: "AdamW learning rate (default 1e-6, as the authors).") var lr: Double?
    @Option(help: "AdamW betas, e.g. 0.9,0.999.") var betas: String?
    @Option(help: "AdamW weight decay (default 0.01).") var weightDecay: Double?
    @Option(help: "AdamW epsilon (default 1e-8).") var eps: Double?
    @Option(help: "Linear learning-rate warm-up steps (default 0: constant).") var warmupSteps: Int?
    @Option(help: "Prompts per step (default 1).") var batchSize: Int?
    @Option(help: "Batches whose gradients are summed before a step (default 1).") var gradAccumulation: Int?
    @Option(help: "Clip the gradient norm (default: off, as the authors).") var maxGradNorm: Double?
    @Option(help: "Optimizer steps (default 1000).") var maxSteps: Int?
    @Option(help: "Seed of the latent noise (default 0).") var seed: UInt64?
    @Option(help: "Checkpoint every N steps (default 500).") var saveEvery: Int?
    @Option(help: "Checkpoints kept (default 3).") var keepCheckpoints: Int?
    @Option(help: "DDIM steps per sample (default 25).") var samplingSteps: Int?
    @Option(help: "Last steps with gradient (default 5).") var gradWindow: Int?
    @Option(help: "Classifier-free guidance (default 7.5).") var guidance: Double?
    @Option(help: "Image size in pixels (default: the model's).") var resolution: Int?
    @Flag(help: "Shuffle the prompts (with their own generator; the noise stream stays the same).") var shuffle = false

    func run() throws {
        let (options, outURL, resuming) = try resolveOptions()
        var settings = TrainerSettings()
        settings.learningRate = options.lr
        guard options.betas.count == 2 else { throw CommandError("--betas: expected two numbers, e.g. 0.9,0.999") }
        settings.betas = (options.betas[0], options.betas[1])
        settings.weightDecay = options.weightDecay
        settings.eps = options.eps
        settings.warmupSteps = options.warmupSteps
        settings.batchSize = options.batchSize
        settings.gradAccumulation = options.gradAccumulation
        settings.maxGradNorm = options.maxGradNorm
        settings.maxSteps = options.maxSteps
        settings.seed = options.seed
        settings.saveEvery = options.saveEvery
        settings.keepCheckpoints = options.keepCheckpoints
        settings.resolution = options.resolution
        settings.sampling = SamplingSettings(
            samplingSteps: options.samplingSteps, gradientWindow: options.gradWindow, guidanceScale: options.guidance)
        try settings.validate()
        guard !options.rewards.isEmpty else { throw CommandError("give at least one --reward NAME=PATH[:GAMMA]") }

        let promptList = try loadPrompts(options)
        let modelURL = URL(fileURLWithPath: options.model)
        let pipeline = try StableDiffusionPipeline.load(folder: modelURL)
        if let resolution = options.resolution, resolution % pipeline.vaeScaleFactor != 0 {
            throw CommandError("--resolution must be a multiple of \(pipeline.vaeScaleFactor) (got \(resolution))")
        }
        let textFolder = modelURL.appendingPathComponent("text_encoder")
        let original = try CLIPTextModel.load(
            try componentWeights(in: textFolder, baseName: "model", binBaseName: "pytorch_model"),
            configFile: textFolder.appendingPathComponent("config.json"))
        let weighted = WeightedReward()
        for spec in options.rewards {
            let (name, paths, gamma) = try parseRewardSpec(spec)
            weighted.add(try RewardRegistry.load(name: name, paths: paths), gamma: gamma)
        }
        let run = RunFolder(outURL)
        try run.prepare()
        let trainer = try Trainer(
            pipeline: pipeline, original: original, textEncoderConfig: textFolder.appendingPathComponent("config.json"),
            rewards: weighted, prompts: OrderedPrompts(promptList), settings: settings, run: run)
        if resuming {
            try trainer.resume()
            FileHandle.standardError.write(Data("resuming \(outURL.path) at step \(trainer.step)\n".utf8))
        } else {
            let json = try JSONEncoder().encode(options)
            try json.write(to: outURL.appendingPathComponent("run.json"), options: .atomic)
        }

        let interrupt = Interrupt()
        trainer.stopRequested = { interrupt.requested }
        let bar = ProgressBar("train", total: settings.maxSteps)
        try trainer.train { report in
            let rewards = report.rewards.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.4f", $0.value))" }
            bar.update(report.step, note: (["loss \(String(format: "%.4f", report.loss))"] + rewards).joined(separator: " "))
        }
        if interrupt.requested {
            print("interrupted at step \(trainer.step): checkpoint saved; continue with --resume \(outURL.path)")
        } else {
            print("trained \(trainer.step) steps; text encoder in \(run.textEncoder.path)")
        }
    }

    /// run.json of the run being resumed (or the defaults), overlaid with the flags given.
    func resolveOptions() throws -> (RunOptions, URL, Bool) {
        var options: RunOptions
        let outPath: String
        if let resume {
            guard out == nil || out == resume else { throw CommandError("--resume continues in its own folder: drop --out") }
            let url = URL(fileURLWithPath: resume).appendingPathComponent("run.json")
            guard let data = FileManager.default.contents(atPath: url.path) else {
                throw CommandError("\(resume): not a training run (no run.json)")
            }
            do { options = try JSONDecoder().decode(RunOptions.self, from: data) } catch {
                throw CommandError("\(url.path): not a valid run.json (\(error))")
            }
            outPath = resume
        } else {
            guard let model else { throw CommandError("give --model (a diffusers folder)") }
            guard let prompts else { throw CommandError("give --prompts (a prompt file)") }
            guard let out else { throw CommandError("give --out (the run folder)") }
            if FileManager.default.fileExists(atPath: out + "/run.json") {
                throw CommandError("\(out) already holds a run: continue it with --resume \(out), or choose another --out")
            }
            options = RunOptions(model: model, prompts: prompts, rewards: rewards)
            outPath = out
        }
        if let model { options.model = model }
        if let prompts { options.prompts = prompts }
        if let promptColumn { options.promptColumn = promptColumn }
        if !rewards.isEmpty { options.rewards = rewards }
        if let lr { options.lr = lr }
        if let betas {
            let values = betas.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard values.count == 2 else { throw CommandError("--betas \(betas): expected two numbers, e.g. 0.9,0.999") }
            options.betas = values
        }
        if let weightDecay { options.weightDecay = weightDecay }
        if let eps { options.eps = eps }
        if let warmupSteps { options.warmupSteps = warmupSteps }
        if let batchSize { options.batchSize = batchSize }
        if let gradAccumulation { options.gradAccumulation = gradAccumulation }
        if let maxGradNorm { options.maxGradNorm = maxGradNorm }
        if let maxSteps { options.maxSteps = maxSteps }
        if let seed { options.seed = seed }
        if let saveEvery { options.saveEvery = saveEvery }
        if let keepCheckpoints { options.keepCheckpoints = keepCheckpoints }
        if let samplingSteps { options.samplingSteps = samplingSteps }
        if let gradWindow { options.gradWindow = gradWindow }
        if let guidance { options.guidance = guidance }
        if let resolution { options.resolution = resolution }
        if shuffle { options.shuffle = true }
        return (options, URL(fileURLWithPath: outPath), resume != nil)
    }

    func loadPrompts(_ options: RunOptions) throws -> [String] {
        guard let handle = FileHandle(forReadingAtPath: options.prompts) else {
            throw CommandError("\(options.prompts): no such prompt file")
        }
        let lines = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !lines.isEmpty else { throw CommandError("\(options.prompts): no prompts in the file") }
        return lines
    }
}

/// "hpsv2=/path/HPS_v2.pt:0.5" -> ("hpsv2", ["/path/HPS_v2.pt"], 0.5); "aesthetic=a,b" has two paths.
func parseRewardSpec(_ spec: String) throws -> (String, [String], Double) {
    guard let equals = spec.firstIndex(of: "=") else { throw CommandError("--reward \(spec): expected NAME=PATH[:WEIGHT]") }
    let name = String(spec[..<equals])
    var rest = String(spec[spec.index(after: equals)...])
    var gamma = 1.0
    if let colon = rest.lastIndex(of: ":"), let value = Double(rest[rest.index(after: colon)...]) {
        gamma = value
        rest = String(rest[..<colon])
    }
    guard !rest.isEmpty else { throw CommandError("--reward \(spec): no path given") }
    return (name, rest.split(separator: ",").map(String.init), gamma)
}

/// SIGINT: the first asks the trainer to save and stop after the current step; the second exits at once.
final class Interrupt: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    private let source: DispatchSourceSignal

    init() {
        signal(SIGINT, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler { [unowned self] in
            lock.lock()
            count += 1
            let again = count > 1
            lock.unlock()
            if again { exit(130) }
            FileHandle.standardError.write(Data("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit now)\n".utf8))
        }
        source.resume()
    }

    var requested: Bool {
        lock.lock()
        defer { lock.unlock() }
        return count > 0
    }
}
