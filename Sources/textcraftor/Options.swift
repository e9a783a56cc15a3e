import ArgumentParser
import Foundation
import Rewards
import StableDiffusion
import TextCraftor
import Torch

// Option groups shared by the commands, and the one way flags reach a configuration: each flag of a group that
// overlays a `Configuration` is named after its key (`gradWindow` is `--grad-window` and the key `grad_window`), is
// optional (nil: not given, the file's or the default value stands), and `configValues(of:)` reads the given ones.

/// --model, the single-file flags and --variant: a diffusers folder or one original-layout checkpoint, and the
/// weights variant to prefer.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "A diffusers model folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/), or one original-layout checkpoint (.safetensors, .ckpt).",
        discussion: singleFileDiscussion), completion: .file())
    var model: String?

    @OptionGroup(title: "Single-file models") var singleFile: SingleFileOptions

    @Option(help: "Weights variant to prefer, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).")
    var variant: String?
}

/// How `--model FILE` is read, for the help of every command that takes one.
let singleFileDiscussion = """
    A single file (SD 1.x: cond_stage_model.transformer.*, SD 2.x: OpenCLIP cond_stage_model.model.*, SDXL base: \
    conditioner.embedders.*; with model.diffusion_model.* and first_stage_model.*) is read in place, its keys renamed \
    to diffusers' on the fly; .ckpt/.pt without running code; the UNet's model_ema.* copy when present. Its configs, \
    tokenizers and scheduler are the published model's of its architecture (SD 1.5, SD 2.1 768 v-prediction or 2.1-base \
    512 epsilon, SDXL base 1.0), or those of --model-config DIR. The output says what was chosen and why.
    """

/// --model-config, --no-ema and --prediction-type: how a single-file --model is read (`ModelSource`).
struct SingleFileOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "With a single-file --model: a diffusers folder of the same architecture whose configs, tokenizers and scheduler are used (default: the published ones, built in).",
        valueName: "DIR"), completion: .directory)
    var modelConfig: String?

    @Flag(help: "With a single-file --model: its UNet's own weights rather than the model_ema.* copy (used by default when present).")
    var noEma = false

    @Option(help: ArgumentHelp(
        "The scheduler's prediction type: epsilon, v_prediction or sample (default: the model's config).",
        discussion: "For an SD 2.x single file without --model-config the default comes from the usual test of its weights (the 768 v-models' last output-block norm varies more; a v_pred key marks v-models too), said in the output. Set it when a fine-tune was trained otherwise.",
        valueName: "TYPE"))
    var predictionType: String?
}

/// What `generate` and `eval` share: a `--config` TOML file, the model and the device.
struct InferenceOptions: ParsableArguments {
    @Option(help: "A TOML file with the settings (keys as the flags, with underscores; flags override it).", completion: .file())
    var config: String?
    @OptionGroup(title: "Model") var model: ModelOptions
    @OptionGroup(title: "Device") var device: DeviceOptions
    @OptionGroup(title: "Embeddings") var embeddings: EmbeddingOptions

    /// The `--config` file's settings (or the defaults) with these flags and `flags`' over them.
    func configuration<C: Configuration>(_ flags: any ParsableArguments) throws -> C {
        try loadConfiguration(file: config, flags: model, model.singleFile, device, embeddings, flags)
    }
}

/// --embedding of `generate` and `eval`: textual-inversion tokens for the prompts.
struct EmbeddingOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "A textual-inversion embedding, FILE[:TOKEN], repeatable; the prompts then use TOKEN.",
        discussion: "Reads diffusers' learned_embeds.safetensors (the token is its key), AUTOMATIC1111's .pt and .safetensors (emb_params; the token is the file's stem, as A1111 names it), and SDXL's clip_l/clip_g .safetensors (A1111, ComfyUI; both encoders), as `textcraftor train --adapter token` writes them in OUT/token/. A token of N vectors stands for its N tokens wherever the prompt names it. The embedding's width must be the model's (768 SD 1.x, 1024 SD 2.x; clip_l and clip_g on SDXL).",
        valueName: "FILE[:TOKEN]"), completion: .file())
    var embedding: [String] = []
}

/// --device, checked the same way by every command that computes.
struct DeviceOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "cpu (default), cuda or cuda:N.",
        discussion: "CUDA needs a CUDA build of libtorch (see `textcraftor doctor`); asked for without one, the command stops with the reason. TF32 matmuls are on for CUDA."))
    var device: String?

    func validate() throws {
        if let device, Device(device) == nil { throw CommandError("--device \(device): expected cpu, cuda or cuda:N") }
    }

    /// The device, opened (CUDA where it cannot run is an error naming the reason).
    func opened() throws -> Device {
        let device = try Device.opened(device ?? "cpu", key: "device")
        if case .cuda = device { Torch.setTF32(true) }
        return device
    }
}

/// The --scheduler names in the words of other tools, for the help of `generate` and `eval`.
let schedulerNames = """
    euler-ancestral is "Euler a" (EulerAncestralDiscreteScheduler), dpm "DPM++ 2M" and dpm-sde "DPM++ 2M SDE" \
    (DPMSolverMultistepScheduler with algorithm_type dpmsolver++ and sde-dpmsolver++). Each runs on the model's noise \
    schedule and keeps its scheduler config's other keys (timestep_spacing, solver_order, ...), as diffusers' \
    from_config does. euler-ancestral and dpm-sde add noise at every step, drawn from the seed's generator in \
    diffusers' order: the same seed gives diffusers' images.
    """

/// What --karras does, for the help of `generate` and `eval`.
let karrasDiscussion = """
    Karras et al.'s noise schedule (rho 7) between the largest and smallest sigma: --scheduler dpm --karras is \
    "DPM++ 2M Karras", dpm-sde "DPM++ 2M SDE Karras", euler "Euler Karras". With a scheduler that has none (ddim, \
    pndm, euler-ancestral, or a model's own of those) it is an error.
    """

/// --dtype of the inference commands: the weights' floating-point type.
struct DTypeOptions: ParsableArguments {
    @Option(help: "Weights dtype: float32 (default), float16 or bfloat16.") var dtype: FloatType = .float32
}

extension FloatType: ExpressibleByArgument {}

/// The data-parallel flags of `train` (its keys dist_timeout, sync_check_every and dist_backend, and the launcher's).
struct DistributedOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Data-parallel: run as N processes on this machine (Gloo over loopback).",
        discussion: "Several machines: start one process per rank with torchrun's variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (torchrun itself can launch it). Each rank takes its rows of every global batch; gradients are averaged before each step; rank 0 writes the run folder. --batch-size must be a multiple of the number of processes.",
        valueName: "N"))
    var nprocPerNode: Int?
    @Option(help: "With --nproc-per-node: the rendezvous port on 127.0.0.1 (default: a free one).") var masterPort: Int?
    @Option(help: "Data-parallel: seconds a rank waits for the others (rendezvous and every collective) before it stops with an error naming them (default 300).")
    var distTimeout: Double?
    @Option(help: "Data-parallel: compare a hash of the parameters across ranks every N steps (and at the end; default 100).")
    var syncCheckEvery: Int?
    @Option(help: ArgumentHelp(
        "Data-parallel: auto (default), gloo or nccl.",
        discussion: "auto is NCCL on CUDA where the NCCL plugin is found (scripts/build-nccl-plugin; TEXTCRAFTOR_NCCL_PLUGIN or libtextcraftor_nccl.so beside the executable), else Gloo, which serves CUDA tensors through host memory. Named for a single process (no WORLD_SIZE, no --nproc-per-node), it forms a group of one, which runs the collectives' path end to end.",
        valueName: "NAME"))
    var distBackend: DistributedBackend?

    /// The launcher's own flags: not configuration keys (a run is the same whichever way its ranks were started).
    static let launcherFlags: Set<String> = ["nproc_per_node", "master_port"]

    func validate() throws {
        if let nprocPerNode, nprocPerNode < 1 { throw CommandError("--nproc-per-node must be at least 1 (got \(nprocPerNode))") }
    }
}

extension MixedPrecision: ExpressibleByArgument {}
extension TrainingMode: ExpressibleByArgument {}
extension TrainedNetwork: ExpressibleByArgument {}
extension Adapter: ExpressibleByArgument {}
extension DistributedBackend: ExpressibleByArgument {}
extension RewardNormalization: ExpressibleByArgument {}

/// The flags given in option groups whose properties are named after configuration keys, as (key, value): the
/// property `gradWindow` gives the key `grad_window`. Absent flags (nil, an empty list) are left out.
func configValues(of groups: [Any], skipping skipped: Set<String> = []) -> [(key: String, value: Any)] {
    var values: [(key: String, value: Any)] = []
    for group in groups {
        for child in Mirror(reflecting: group).children {
            guard let label = child.label, let flag = child.value as? GivenFlag else { continue }
            let key = snakeCase(label.hasPrefix("_") ? String(label.dropFirst()) : label)
            if skipped.contains(key) { continue }
            if let value = flag.given { values.append((key, value)) }
        }
    }
    return values
}

/// The configuration a command runs with: the `--config` file's (or the defaults), with the given flags of `groups`
/// over it.
func loadConfiguration<C: Configuration>(file: String?, flags groups: Any..., skipping skipped: Set<String> = []) throws -> C {
    let base = try file.map { try ConfigFile.load(URL(fileURLWithPath: $0), as: C.self) } ?? C()
    return try base.overlaying(configValues(of: groups, skipping: skipped))
}

/// "gradWindow" -> "grad_window", "prompt2" -> "prompt_2" (diffusers' `prompt_2`, the flag `--prompt-2`).
func snakeCase(_ name: String) -> String {
    var out = ""
    for character in name {
        if character.isUppercase {
            out += "_" + character.lowercased()
        } else {
            if character.isNumber, let last = out.last, !last.isNumber { out += "_" }
            out.append(character)
        }
    }
    return out
}

extension CropCoordinates {
    static func parse(_ text: String) throws -> CropCoordinates {
        guard let crop = CropCoordinates(text) else { throw CommandError("\(text.prefix(40)): expected two pixel offsets TOP,LEFT") }
        return crop
    }
}

/// An ArgumentParser property wrapper whose value, once parsed, is read without knowing its type.
protocol GivenFlag {
    /// The parsed value, or nil when the flag was not given (nil, or an empty repeated option).
    var given: Any? { get }
}

extension Option: GivenFlag {
    var given: Any? { presentValue(wrappedValue) }
}

extension Flag: GivenFlag {
    /// A plain `Bool` flag (no `--no-` form) is given when it is set: its absence leaves the file's value alone.
    var given: Any? {
        if Mirror(reflecting: wrappedValue).displayStyle != .optional, let plain = wrappedValue as? Bool { return plain ? true : nil }
        return presentValue(wrappedValue)
    }
}

/// `value` unwrapped when it is an Optional, nil when it is nil or an empty array.
func presentValue(_ value: Any) -> Any? {
    let mirror = Mirror(reflecting: value)
    if mirror.displayStyle == .optional { return mirror.children.first.map { presentValue($0.value) } ?? nil }
    if mirror.displayStyle == .collection, mirror.children.isEmpty { return nil }
    return value
}

extension CommandError {
    /// A library error as the command line says it: a configuration key becomes its flag (`batch_size: ...` is
    /// `--batch-size: ...`); other errors keep their words.
    init(_ error: Error) {
        if case TextCraftorError.invalidSetting(let key, let message) = error {
            let head = key.prefix { $0 != "[" && $0 != "." }
            self.init("--\(head.replacingOccurrences(of: "_", with: "-"))\(key.dropFirst(head.count)): \(message)")
        } else {
            self.init("\(error)")
        }
    }
}

/// Runs `body`, turning library errors into the command line's words (`CommandError(_:)`).
func speakingFlags<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as CommandError { throw error } catch let error as ExitCode { throw error } catch {
        throw CommandError(error)
    }
}

/// How a single-file model was read (`ModelSource.notes`), one line each on stderr.
func sayModelNotes(_ notes: [String]) {
    for note in notes { FileHandle.standardError.write(Data("model: \(note)\n".utf8)) }
}
