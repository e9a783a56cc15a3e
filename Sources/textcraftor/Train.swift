import ArgumentParser
import Foundation
import NN
import Rewards
import StableDiffusion
import TextCraftor
import Torch

/// Everything a run is started with: written to OUT/run.json, so that `--resume OUT` needs no flags again.
struct RunRecord: Codable {
    var options: TrainingOptions
    var promptColumn: String?
    var keepCheckpoints: Int?
    var resolution: Int?
    var textEncoder: String?
    var timestepRange: [Int]?
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
    @Option(help: "A TOML config file (keys as the flags, with underscores; flags override it).", completion: .file())
    var config: String?
    @Option(help: "Prompts: a .txt (one per line), Parti .tsv (column Prompt), .csv (--prompt-column) or .json list.",
            completion: .file()) var prompts: String?
    @Option(name: .customLong("mode"), help: "prompt (TextCraftor, default) or direct (paired images and captions).")
    var modeFlag: String?
    @Option(name: .customLong("train"), help: "text (the text encoder, default) or unet (the second stage).")
    var trainFlag: String?
    @Option(name: .customLong("data"), help: "Direct mode: a folder of images with metadata.jsonl or metadata.csv.",
            completion: .directory) var dataFolder: String?
    @Option(help: "Direct mode: the timestep range, LOW,HIGH (default 0,999).") var tRange: String?
    @Option(help: "UNet stage: a fine-tuned text encoder folder to condition on (default: the model's).",
            completion: .directory) var textEncoder: String?
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
    @Option(help: ArgumentHelp(
        "cpu (default), cuda or cuda:N.",
        discussion: "CUDA needs a CUDA build of libtorch (see `textcraftor doctor`); asked for without one, the run stops with the reason. TF32 matmuls are on for CUDA. With several ranks, cuda is each rank's cuda:LOCAL_RANK."))
    var device: String?
    @Option(help: ArgumentHelp(
        "no (default), bf16 or fp16.",
        discussion: "The frozen models (UNet, VAE, original encoder, reward towers) in that type; the trained network keeps float32 weights (AdamW's master weights). Under fp16 a VAE with force_upcast stays float32."))
    var mixedPrecision: String?
    @Flag(help: "Shuffle the prompts (with their own generator; the noise stream stays the same).") var shuffle = false

    @Option(help: ArgumentHelp(
        "Data-parallel: run as N processes on this machine (Gloo over loopback).",
        discussion: "Several machines: start one process per rank with torchrun's variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (torchrun itself can launch it). Each rank takes its rows of every global batch; gradients are averaged before each step; rank 0 writes the run folder. --batch-size must be a multiple of the number of processes.",
        valueName: "N"))
    var nprocPerNode: Int?
    @Option(help: "With --nproc-per-node: the rendezvous port on 127.0.0.1 (default: a free one).") var masterPort: Int?
    @Option(help: "Data-parallel: seconds a rank waits for the others (rendezvous and every collective) before it stops with an error naming them.")
    var distTimeout: Double = 300
    @Option(help: "Data-parallel: compare a hash of the parameters across ranks every N steps (and at the end).")
    var syncCheckEvery = 100
    @Option(help: ArgumentHelp(
        "Data-parallel: auto (default), gloo or nccl.",
        discussion: "auto is NCCL on CUDA where the NCCL plugin is found (scripts/build-nccl-plugin; TEXTCRAFTOR_NCCL_PLUGIN or libtextcraftor_nccl.so beside the executable), else Gloo, which serves CUDA tensors through host memory. Named for a single process (no WORLD_SIZE, no --nproc-per-node), it forms a group of one, which runs the collectives' path end to end.",
        valueName: "NAME"))
    var distBackend = "auto"

    func run() throws {
        guard distTimeout > 0 else { throw CommandError("--dist-timeout must be positive (got \(distTimeout))") }
        guard syncCheckEvery >= 1 else { throw CommandError("--sync-check-every must be at least 1 (got \(syncCheckEvery))") }
        let backendChoice = try DistributedEnvironment.BackendChoice(flag: distBackend)
        if let nprocPerNode {
            guard nprocPerNode >= 1 else { throw CommandError("--nproc-per-node must be at least 1 (got \(nprocPerNode))") }
            guard ProcessInfo.processInfo.environment["RANK"] == nil else {
                throw CommandError("--nproc-per-node launches the ranks itself: unset RANK/WORLD_SIZE, or drop the flag under torchrun")
            }
            if nprocPerNode > 1 {
                _ = try resolveRecord(rank: 0)  // the flags are checked once, before any process starts
                let status = try Launcher.run(
                    processes: nprocPerNode, arguments: Launcher.childArguments(Array(CommandLine.arguments.dropFirst())),
                    port: masterPort, timeout: distTimeout)
                if status != 0 { throw ExitCode(status) }
                return
            }
        }
        var distributed = try DistributedEnvironment.fromEnvironment()
        if distributed == nil, backendChoice != .auto {
            // A backend named for a single process forms a group of one: the collectives' path runs, end to end.
            guard let port = ProcessGroup.freePort() else { throw CommandError("--dist-backend \(distBackend): no free port on 127.0.0.1") }
            distributed = DistributedEnvironment(rank: 0, worldSize: 1, localRank: 0, masterAddress: "127.0.0.1", masterPort: port)
        }
        let rank = distributed?.rank ?? 0
        let (record, outURL, resuming) = try resolveRecord(rank: rank)
        let options = try record.options.resolved()
        guard let model = record.options.model else { throw CommandError("give --model (a diffusers folder), or `model` in the config") }
        guard let rewardSpecs = record.options.rewards, !rewardSpecs.isEmpty else {
            throw CommandError("give at least one --reward NAME=PATH[:GAMMA], or [[reward]] in the config")
        }
        var settings = TrainerSettings()
        settings.learningRate = options.learningRate
        settings.betas = options.betas.pair
        settings.weightDecay = options.weightDecay
        settings.eps = options.eps
        settings.warmupSteps = options.warmupSteps
        settings.batchSize = options.batchSize
        settings.gradAccumulation = options.gradientAccumulation
        settings.maxGradNorm = options.maxGradNorm
        settings.maxSteps = options.maxSteps ?? 1000
        settings.seed = options.seed
        settings.saveEvery = options.saveEvery
        settings.keepCheckpoints = record.keepCheckpoints ?? 3
        settings.resolution = record.resolution
        if let range = record.timestepRange {
            guard range.count == 2, range[0] >= 0, range[0] <= range[1], range[1] <= 999 else {
                throw CommandError("--t-range: expected two timesteps LOW,HIGH with 0 <= LOW <= HIGH <= 999")
            }
            settings.timestepRange = range[0]...range[1]
        }
        settings.sampling = SamplingSettings(
            samplingSteps: options.samplingSteps, gradientWindow: options.gradientWindow, guidanceScale: options.guidanceScale)
        try settings.validate()
        let precision = record.options.mixedPrecision ?? .no
        settings.mixedPrecision = precision
        var device = try ModelOptions.device(record.options.device ?? "cpu")  // a resumed run may be given another
        if case .cuda = device, let distributed, record.options.device == "cuda" {
            device = try ModelOptions.device("cuda:\(distributed.localRank)")
        }
        if case .cuda = device { Torch.setTF32(true) }
        if let distributed {
            guard options.mode == .prompt else { throw CommandError("data-parallel training is for prompt mode (--mode prompt)") }
            guard settings.batchSize % distributed.worldSize == 0 else {
                throw CommandError("--batch-size \(settings.batchSize) does not split across \(distributed.worldSize) processes: use a multiple of \(distributed.worldSize)")
            }
        }

        // Everything a user can get wrong is checked before the run folder is touched.
        let data: TrainingData
        switch options.mode {
        case .prompt:
            guard let prompts = record.options.prompts else { throw CommandError("give --prompts (a prompt file), or `prompts` in the config") }
            let source = try PromptSource(contentsOf: URL(fileURLWithPath: prompts), column: record.promptColumn ?? "prompt")
            data = .prompts(try SampledBatches(source.prompts, batchSize: options.batchSize, shuffle: options.shuffle, seed: options.seed))
        case .direct:
            guard let folder = record.options.data else { throw CommandError("--mode direct needs --data (images with metadata.jsonl or metadata.csv)") }
            let pairs = try PairedData(contentsOf: URL(fileURLWithPath: folder)).pairs
            data = .pairs(try SampledBatches(pairs, batchSize: options.batchSize, shuffle: options.shuffle, seed: options.seed))
        }
        let modelURL = URL(fileURLWithPath: model)
        let pipeline = try precision.loadPipeline(folder: modelURL, device: device, training: options.train)
        if let resolution = record.resolution, resolution <= 0 || resolution % pipeline.vaeScaleFactor != 0 {
            throw CommandError("--resolution must be a positive multiple of \(pipeline.vaeScaleFactor) (got \(resolution))")
        }
        let textFolder = modelURL.appendingPathComponent("text_encoder")
        let original = try CLIPTextModel.load(
            try componentWeights(in: textFolder, baseName: "model", binBaseName: "pytorch_model"),
            configFile: textFolder.appendingPathComponent("config.json"), dtype: precision.frozenDType, device: device)
        if let textEncoder = record.textEncoder {
            // The UNet stage on a fine-tuned encoder: its weights replace the pipeline's (same architecture).
            let folder = URL(fileURLWithPath: textEncoder)
            try pipeline.textEncoder.load(try componentWeights(in: folder, baseName: "model", binBaseName: "pytorch_model"))
        }
        let weighted = WeightedReward()
        for reward in rewardSpecs {
            weighted.add(try RewardRegistry.load(name: reward.name, paths: reward.paths, dtype: precision.frozenDType, device: device),
                         gamma: reward.gamma, scale: reward.scale)
        }
        let group = try distributed?.join(timeout: distTimeout, backend: try DistributedEnvironment.backend(backendChoice, device: device))
        let run = RunFolder(outURL)
        if rank == 0 { try run.prepare() }
        let trainer = try Trainer(pipeline: pipeline, original: original, modelFolder: modelURL, rewards: weighted, data: data,
                                  settings: settings, target: options.train, run: run)
        trainer.parallel = group.map { DataParallel(group: $0, syncCheckEvery: syncCheckEvery) }
        if resuming {
            try trainer.resume()
            if rank == 0 { FileHandle.standardError.write(Data("resuming \(outURL.path) at step \(trainer.step)\n".utf8)) }
        } else if rank == 0 {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(record).write(to: outURL.appendingPathComponent("run.json"), options: .atomic)
        }

        let interrupt = Interrupt()
        trainer.stopRequested = { interrupt.requested }
        let bar = rank == 0 ? ProgressBar("train", total: settings.maxSteps) : nil
        try trainer.train { report in
            bar?.update(report.step, note: "loss \(String(format: "%.4f", report.loss)) " + report.rewardsNote)
        }
        guard rank == 0 else { return }
        let trained = options.train == .text ? "text_encoder" : "unet"
        if interrupt.requested {
            print("interrupted at step \(trainer.step): checkpoint saved; continue with --resume \(outURL.path)")
        } else {
            print("trained \(trainer.step) steps; weights in \(outURL.appendingPathComponent(trained).path)")
        }
    }

    /// The options given by flags (nil where a flag is absent).
    func flagOptions() throws -> TrainingOptions {
        var betaPair: AdamBetas? = nil
        if let betas {
            let values = betas.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard values.count == 2 else { throw CommandError("--betas \(betas): expected two numbers, e.g. 0.9,0.999") }
            betaPair = AdamBetas(values[0], values[1])
        }
        var mode: TrainingMode? = nil
        if let modeFlag {
            guard let m = TrainingMode(rawValue: modeFlag) else { throw CommandError("--mode \(modeFlag): expected prompt or direct") }
            mode = m
        }
        var network: TrainedNetwork? = nil
        if let trainFlag {
            guard let t = TrainedNetwork(rawValue: trainFlag) else { throw CommandError("--train \(trainFlag): expected text or unet") }
            network = t
        }
        let rewardOptions = try rewards.isEmpty ? nil : rewards.map { spec -> RewardOption in
            let (name, paths, gamma) = try parseRewardSpec(spec)
            return RewardOption(name: name, paths: paths, gamma: gamma)
        }
        return TrainingOptions(
            learningRate: lr, betas: betaPair, weightDecay: weightDecay, eps: eps, warmupSteps: warmupSteps,
            gradientAccumulation: gradAccumulation, maxGradNorm: maxGradNorm, samplingSteps: samplingSteps,
            gradientWindow: gradWindow, guidanceScale: guidance, mode: mode, train: network, batchSize: batchSize,
            maxSteps: maxSteps, saveEvery: saveEvery, seed: seed, shuffle: shuffle ? true : nil, device: device,
            mixedPrecision: try mixedPrecision.map(MixedPrecision.init(flag:)), model: model,
            prompts: prompts, data: dataFolder, out: out, rewards: rewardOptions)
    }

    /// run.json of the run being resumed, or the --config file, overlaid with the flags given.
    /// `rank`: a data-parallel rank other than 0 does not refuse the folder rank 0 is starting a run in.
    func resolveRecord(rank: Int = 0) throws -> (RunRecord, URL, Bool) {
        var record: RunRecord
        let outPath: String
        if let resume {
            guard out == nil || out == resume else { throw CommandError("--resume continues in its own folder: drop --out") }
            let url = URL(fileURLWithPath: resume).appendingPathComponent("run.json")
            guard let data = FileManager.default.contents(atPath: url.path) else {
                throw CommandError("\(resume): not a training run (no run.json)")
            }
            do { record = try JSONDecoder().decode(RunRecord.self, from: data) } catch {
                throw CommandError("\(url.path): not a valid run.json")
            }
            outPath = resume
        } else {
            let file = try config.map { try TrainingConfigFile.load(URL(fileURLWithPath: $0)) } ?? TrainingOptions()
            record = RunRecord(options: file)
            guard let out = out ?? file.out else { throw CommandError("give --out (the run folder), or `out` in the config") }
            if rank == 0, FileManager.default.fileExists(atPath: out + "/run.json") {
                throw CommandError("\(out) already holds a run: continue it with --resume \(out), or choose another --out")
            }
            outPath = out
        }
        record.options = record.options.overlaid(with: try flagOptions())
        record.options.out = outPath
        if let promptColumn { record.promptColumn = promptColumn }
        if let keepCheckpoints { record.keepCheckpoints = keepCheckpoints }
        if let resolution { record.resolution = resolution }
        if let textEncoder { record.textEncoder = textEncoder }
        if let tRange {
            record.timestepRange = tRange.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        }
        return (record, URL(fileURLWithPath: outPath), resume != nil)
    }
}

extension StepReport {
    /// Each reward's batch mean, by name: "aesthetic 5.1234 clip 0.8123", for progress bars.
    var rewardsNote: String {
        rewards.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.4f", $0.value))" }.joined(separator: " ")
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
