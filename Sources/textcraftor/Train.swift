import ArgumentParser
import Foundation
import Rewards
import TextCraftor
import Torch

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune the text encoder with TextCraftor (prompt-based: rewards on images sampled from the frozen UNet).",
        discussion: """
            Each step samples images for a batch of prompts with DDIM (eta 0, trailing timesteps, guidance), the last \
            --grad-window steps with the trainable encoder for both the prompt and the empty prompt, decodes them, \
            scores them and takes an AdamW step on -Σ γ·scale·reward. The gradient through the window is exact and \
            costs the memory of one UNet step. On SDXL the encoders chosen by --train condition the window (the \
            unconditional half is zeros where the model forces them, as its pipeline samples).

            Settings come from --config (a TOML file whose keys are the flags' names with underscores: grad_window = 3), \
            then the flags, which override it; --resume reads them from the run's run.json, and flags given with it \
            change them for the rest of the run.

            --adapter token trains one new token's embedding instead (see --adapter), written to OUT/token/.

            Writes OUT/text_encoder/ (and on SDXL OUT/text_encoder_2/ for the encoders trained; config.json + \
            model.safetensors, loadable by diffusers and by `textcraftor generate --text-encoder OUT`; with --adapter lora \
            OUT/lora.safetensors instead, for `generate --lora`, diffusers, AUTOMATIC1111 and ComfyUI), \
            OUT/metrics.jsonl, OUT/tensorboard/ (TensorBoard event files: `tensorboard --logdir OUT`), OUT/run.json and \
            OUT/checkpoints/. \
            Ctrl-C saves a checkpoint and exits; `--resume OUT` continues exactly where it stopped.
            """)

    @Option(help: "A TOML config file (keys as the flags, with underscores; flags override it).", completion: .file())
    var config: String?
    @Option(help: "Continue the run in this folder from its newest checkpoint.", completion: .directory) var resume: String?
    @OptionGroup(title: "Model and data") var model: ModelFlag
    @OptionGroup(title: "Training") var training: TrainingFlags
    @OptionGroup(title: "Adapter") var adapter: AdapterFlags
    @OptionGroup(title: "Guards against reward hacking") var guards: GuardFlags
    @OptionGroup(title: "Device") var device: DeviceOptions
    @OptionGroup(title: "Data-parallel") var distributed: DistributedOptions
    @OptionGroup(title: "Telemetry") var telemetry: TelemetryFlags

    func validate() throws {
        if let resume, let out = training.out, out != resume { throw CommandError("--resume continues in its own folder: drop --out") }
    }

    func run() throws {
        if let processes = distributed.nprocPerNode {
            guard ProcessInfo.processInfo.environment["RANK"] == nil else {
                throw CommandError("--nproc-per-node launches the ranks itself: unset RANK/WORLD_SIZE, or drop the flag under torchrun")
            }
            if processes > 1 {
                _ = try resolvedConfig()  // the settings are checked once, before any process starts
                let status = try Launcher.run(
                    processes: processes, arguments: Launcher.childArguments(Array(CommandLine.arguments.dropFirst())),
                    port: distributed.masterPort, timeout: distributed.distTimeout ?? TrainingConfig().distTimeout)
                if status != 0 { throw ExitCode(status) }
                return
            }
        }
        let config = try resolvedConfig()
        let session = try speakingFlags {
            var environment = try DistributedEnvironment.fromEnvironment()
            if environment == nil, config.distBackend != .auto {
                // A backend named for a single process forms a group of one: the collectives' path runs, end to end.
                guard let port = ProcessGroup.freePort() else { throw CommandError("--dist-backend: no free port on 127.0.0.1") }
                environment = DistributedEnvironment(rank: 0, worldSize: 1, localRank: 0, masterAddress: "127.0.0.1", masterPort: port)
            }
            return try TrainingSession(config: config, resume: resume != nil, distributed: environment)
        }
        let writer = session.isWriter
        if writer { sayModelNotes(session.modelNotes) }
        if session.resumed, writer { FileHandle.standardError.write(Data("resuming \(session.run.url.path) at step \(session.trainer.step)\n".utf8)) }
        if session.resumed, writer, session.trainer.earlyStopping?.stopped == true {
            FileHandle.standardError.write(Data("this run stopped early; raise --early-stop-patience to go on\n".utf8))
        }
        if writer, let lora = session.trainer.adapters.first as? LoRARun { FileHandle.standardError.write(Data("\(lora.sizeNote)\n".utf8)) }
        let interrupt = Interrupt()
        let bar = writer ? ProgressBar("train", total: config.maxSteps) : nil
        try speakingFlags {
            try session.train(stopRequested: { interrupt.requested }) { report in
                bar?.update(report.step, note: "loss \(String(format: "%.4f", report.loss)) " + report.rewardsNote)
            }
        }
        guard writer else { return }
        if let stopping = session.trainer.earlyStopping, let best = stopping.bestStep, let value = stopping.best {
            let signal = config.earlyStop.map { (try? EarlyStopSignal(spec: $0))?.name ?? $0 } ?? "held-out"
            let how = stopping.stopped
                ? "stopped early at step \(session.trainer.step): held-out \(signal) did not improve for \(stopping.patience) evaluations"
                : "early stopping did not stop the run"
            print("\(how); best step \(best) (held-out \(signal) \(String(format: "%.4f", value))), its weights in \(session.run.best.path)")
        }
        if interrupt.requested {
            print("interrupted at step \(session.trainer.step): checkpoint saved; continue with --resume \(session.run.url.path)")
        } else {
            print("trained \(session.trainer.step) steps; weights in \(session.weightsFolders.map(\.path).joined(separator: " and "))")
        }
    }

    /// run.json of the run being resumed, or the --config file (or the defaults), with the flags put over it.
    func resolvedConfig() throws -> TrainingConfig {
        try speakingFlags {
            var config: TrainingConfig
            if let resume {
                config = try TrainingSession.recordedConfig(in: URL(fileURLWithPath: resume))
                config = try config.overlaying(
                    configValues(of: [model, model.singleFile, training, adapter, guards, device, distributed, telemetry], skipping: DistributedOptions.launcherFlags))
            } else {
                config = try loadConfiguration(file: self.config, flags: model, model.singleFile, training, adapter, guards, device, distributed, telemetry,
                                           skipping: DistributedOptions.launcherFlags)
            }
            if let resume { config.out = resume }
            guard config.out != nil else { throw CommandError("give --out (the run folder), or `out` in the config") }
            guard config.model != nil else { throw CommandError("give --model (a diffusers folder or a single-file checkpoint), or `model` in the config") }
            guard !config.rewards.isEmpty else {
                throw CommandError("give at least one --reward NAME=PATH[:GAMMA], or [[reward]] in the config")
            }
            if config.mode == .direct, config.data == nil {
                throw CommandError("--mode direct needs --data (images with metadata.jsonl or metadata.csv)")
            }
            try config.validate()
            return config
        }
    }
}

/// The guards against reward hacking (`TrainingConfig`'s proximity_weight, random_window and early_stop keys).
struct GuardFlags: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Embedding-proximity penalty W (default 0: off).",
        discussion: "Adds W x the mean squared difference between the conditioning the trained encoders give the step's prompts (the hidden states the UNet reads; on SDXL also the pooled embedding) and the one the original encoders give them, with its gradient, so the encoder cannot drift far from what the UNet was trained on. Written as proximity (the unweighted term) in metrics.jsonl. The original is the frozen copy of the encoder (with --adapter lora: the encoder without adapters; with --adapter token: the token's initial rows, the init word's). Not for the UNet stage.",
        valueName: "W"))
    var proximityWeight: Double?
    @Flag(inversion: .prefixedNo, help: "Draw each step's gradient window uniformly from 1...--grad-window (AlignProp, DRaFT-LV), from the seed and the step, so a resumed run draws the same; written as grad_window in metrics.jsonl.")
    var randomWindow: Bool?
    @Option(help: ArgumentHelp(
        "Early stopping on a held-out signal that is not trained: NAME=PATH as --reward takes it (no weight), or oracle (ShapesWorld's alignment).",
        discussion: "Every --early-stop-every steps (and at step 0 and the last) the held-out prompts are sampled with the current encoder (no gradient, the same seeds each time) and scored; the mean is held_out in metrics.jsonl. The best evaluation's weights are kept in OUT/best/ (with best.json naming the step); after --early-stop-patience evaluations without improvement the run saves a checkpoint and stops. e.g. --reward aesthetic=... --early-stop clip=PATH.",
        valueName: "REWARD"))
    var earlyStop: String?
    @Option(help: "Steps between held-out evaluations (default 50).") var earlyStopEvery: Int?
    @Option(help: "Held-out evaluations without improvement before the run stops (default 3).") var earlyStopPatience: Int?
    @Option(help: "The held-out prompts for --early-stop (default: every tenth prompt of --prompts, at most 32, which are then not trained on).",
            completion: .file()) var heldOutPrompts: String?
}

/// `train --model` and the single-file flags (no weights variant: training loads float32 master weights).
struct ModelFlag: ParsableArguments {
    @Option(help: ArgumentHelp("A diffusers model folder, or one original-layout checkpoint (.safetensors, .ckpt).", discussion: singleFileDiscussion),
            completion: .file()) var model: String?
    @OptionGroup(title: "Single-file models") var singleFile: SingleFileOptions

    /// The model these flags name (`ModelSource`); a missing --model is an error naming it.
    func source() throws -> ModelSource {
        guard let model else { throw CommandError("give --model (a diffusers folder or a single-file checkpoint)") }
        return try ModelSource(model: model, modelConfig: singleFile.modelConfig, noEMA: singleFile.noEma,
                               predictionType: singleFile.predictionType)
    }
}

/// TensorBoard logging (`TensorBoardSettings`), keys `tensorboard` and `tensorboard_images_every`.
struct TelemetryFlags: ParsableArguments {
    @Flag(inversion: .prefixedNo, help: ArgumentHelp(
        "Write TensorBoard event files to OUT/tensorboard/ (default: on).",
        discussion: "Every step's numbers of metrics.jsonl (loss, each reward by name, grad_norm, lr, step_time, loss_scale under fp16) as scalars of the same names; view with `tensorboard --logdir OUT`. A resumed run drops the events of the steps it does again and writes a new file beside the old ones."))
    var tensorboard: Bool?
    @Option(help: ArgumentHelp(
        "Every N steps, also log a grid of the images the step sampled and scored (tag images; 0: never; default 100).",
        discussion: "The images the step decoded anyway (before its update): no extra sampling. Cells larger than 512 pixels are scaled down; with --grad-accumulation the last batch, under data-parallel training rank 0's rows.",
        valueName: "N"))
    var tensorboardImagesEvery: Int?
}

/// Every key of `TrainingConfig` that has a flag of its own name (`--grad-window` is `grad_window`); nil: not given.
struct TrainingFlags: ParsableArguments {
    @Option(help: "prompt (TextCraftor, default) or direct (paired images and captions).") var mode: TrainingMode?
    @Option(help: ArgumentHelp(
        "text-encoder (default), text-encoder-2, text-encoders or unet (the second stage).",
        discussion: "SDXL has two text encoders: text-encoder-2 trains text_encoder_2, text-encoders both with one optimizer. SD 1.x/2.x takes text-encoder and unet."))
    var train: TrainedNetwork?
    @Option(help: "Prompts: a .txt (one per line), Parti .tsv (column Prompt), .csv (--prompt-column) or .json list.",
            completion: .file()) var prompts: String?
    @Option(help: "The CSV column holding the prompts (default prompt).") var promptColumn: String?
    @Option(help: "Direct mode: a folder of images with metadata.jsonl or metadata.csv.", completion: .directory) var data: String?
    @Option(help: "UNet stage: fine-tuned text encoders to condition on: an encoder folder, one encoder's bare state dict (.pth/.pt/.bin/.safetensors), or a run folder holding text_encoder/ and/or text_encoder_2/ (default: the model's).",
            completion: .file()) var textEncoder: String?
    @Option(help: "NAME=PATH[:GAMMA], repeatable (see `textcraftor score --help`).", transform: RewardOption.init(spec:))
    var reward: [RewardOption] = []
    @Option(help: ArgumentHelp(
        "none (default), running or fixed: how each reward's score is normalised before gamma x scale weighs it.",
        discussion: "none: raw scores with the authors' scales (aesthetic 3, pickscore 1, hpsv2 100, clip 100). running: (R - mean) / std with the run's running mean and std of that reward (Welford over every score so far; kept in checkpoints and restored by --resume). fixed: typical means and stds over Stable Diffusion images (README's reward table). Normalised, every default scale is 1, so a gamma weighs every reward alike. metrics.jsonl gets each reward's contribution to the objective (NAME_contribution: gamma x scale x normalised reward, batch mean; the loss is minus their sum).",
        valueName: "MODE"))
    var normalizeRewards: RewardNormalization?
    @Option(help: "Output folder.", completion: .directory) var out: String?

    @Option(help: "DDIM steps per sample (default 25).") var samplingSteps: Int?
    @Option(help: "Last steps with gradient (default 5).") var gradWindow: Int?
    @Option(help: "Classifier-free guidance (default 7.5).") var guidance: Double?
    @Option(help: "Image size in pixels (default: the model's).") var resolution: Int?
    @Flag(inversion: .prefixedNo, help: "Recompute the VAE decoder piece by piece in the backward pass (default): less memory, one more decoder forward.")
    var vaeCheckpoint: Bool?
    @Option(help: "Direct mode: the timestep range, LOW,HIGH (default 0,999).", transform: TimestepRange.parse) var tRange: TimestepRange?

    @Option(help: "AdamW learning rate (default 1e-6, as the authors).") var lr: Double?
    @Option(help: "AdamW betas, e.g. 0.9,0.999.", transform: AdamBetas.parse) var betas: AdamBetas?
    @Option(help: "AdamW weight decay (default 0.01).") var weightDecay: Double?
    @Option(help: "AdamW epsilon (default 1e-8).") var eps: Double?
    @Option(help: "Linear learning-rate warm-up steps (default 0: constant).") var warmupSteps: Int?
    @Option(help: "Batches whose gradients are summed before a step (default 1).") var gradAccumulation: Int?
    @Option(help: "Clip the gradient norm (default: off, as the authors).") var maxGradNorm: Double?

    @Option(help: "Prompts per step (default 1).") var batchSize: Int?
    @Option(help: "Optimizer steps (default 1000).") var maxSteps: Int?
    @Option(help: "Checkpoint every N steps (default 500).") var saveEvery: Int?
    @Option(help: "Checkpoints kept (default 3).") var keepCheckpoints: Int?
    @Option(help: "Seed of the latent noise (default 0).") var seed: UInt64?
    @Flag(inversion: .prefixedNo, help: "Shuffle the prompts (with their own generator; the noise stream stays the same).")
    var shuffle: Bool?
    @Option(help: ArgumentHelp(
        "no (default), bf16 or fp16.",
        discussion: "The frozen models (UNet, VAE, original encoder, reward towers) in that type; the trained network keeps float32 weights (AdamW's master weights). Under fp16 a VAE with force_upcast stays float32."))
    var mixedPrecision: MixedPrecision?
}

extension AdamBetas {
    static func parse(_ text: String) throws -> AdamBetas {
        guard let betas = AdamBetas(text) else { throw CommandError("\(text): expected two numbers, e.g. 0.9,0.999") }
        return betas
    }
}

extension TimestepRange {
    static func parse(_ text: String) throws -> TimestepRange {
        guard let range = TimestepRange(text) else { throw CommandError("\(text): expected two timesteps LOW,HIGH") }
        return range
    }
}

extension StepReport {
    /// Each reward's batch mean, by name: "aesthetic 5.1234 clip 0.8123", for progress bars.
    var rewardsNote: String {
        rewards.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.4f", $0.value))" }.joined(separator: " ")
    }
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
