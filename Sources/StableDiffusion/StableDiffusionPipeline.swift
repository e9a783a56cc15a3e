import Foundation
import NN
import Torch

/// What to generate. Defaults are diffusers' `StableDiffusionPipeline.__call__` defaults, except the step count.
public struct GenerationRequest: Sendable {
    public var prompts: [String]
    /// One per prompt, or one for all; nil means "" (the unconditional prompt).
    public var negativePrompts: [String]?
    public var steps = 25
    public var guidanceScale = 7.5
    public var seed: UInt64 = 0
    public var height: Int? = nil
    public var width: Int? = nil
    public var imagesPerPrompt = 1
    /// DDIM's eta; ignored by the other schedulers.
    public var eta = 0.0

    public init(prompts: [String]) { self.prompts = prompts }

    /// Classifier-free guidance runs only when the scale is above 1, as in diffusers.
    public var usesGuidance: Bool { guidanceScale > 1 }
}

/// What a generation produced: 8-bit images and the tensors behind them.
public struct GenerationResult {
    /// [N, H, W, 3] uint8, converted as diffusers does: `((x / 2 + 0.5).clamp(0, 1) * 255).round()`.
    public let images: Tensor
    /// The initial noise, one `randn` of [N, 4, H/f, W/f] from a CPU generator seeded with the seed.
    public let initLatents: Tensor
    /// The final latents, before the VAE.
    public let latents: Tensor
    /// The embeddings of the last UNet call: with a mix (and `finetunedSteps` above 0), the mixed ones.
    public let promptEmbeds: Tensor
    public let negativePromptEmbeds: Tensor?
    /// With a mix: the pipeline's own encoder's embeddings, which conditioned the calls before `mixStart` (nil when
    /// the mix conditioned every call, and without a mix).
    public let originalPromptEmbeds: Tensor?
    public let originalNegativePromptEmbeds: Tensor?
    /// With a mix: the first UNet call (0-based) conditioned on it; the scheduler's call count when none was.
    public let mixStart: Int?
    /// Words dropped from each prompt because it had more than 77 tokens (nil where nothing was dropped).
    public let truncatedWords: [String?]
}

/// Stable Diffusion 1.x/2.x text-to-image sampling, step for step as diffusers' `StableDiffusionPipeline`: the same
/// seed and weights give the same latents.
public final class StableDiffusionPipeline {
    public let tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextModel
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL
    public let schedulerConfig: SchedulerConfig
    public let schedulerConfigFile: String
    public let device: Device

    public init(
        tokenizer: CLIPTokenizer, textEncoder: CLIPTextModel, unet: UNet2DConditionModel, vae: AutoencoderKL,
        schedulerConfig: SchedulerConfig, schedulerConfigFile: String = "scheduler_config.json", device: Device = .cpu
    ) {
        self.tokenizer = tokenizer
        self.textEncoder = textEncoder
        self.unet = unet
        self.vae = vae
        self.schedulerConfig = schedulerConfig
        self.schedulerConfigFile = schedulerConfigFile
        self.device = device
    }

    /// Loads a diffusers folder: `model_index.json` and the `tokenizer`, `text_encoder`, `unet`, `vae` and
    /// `scheduler` components, each strictly (every key of every weights file must fit the model).
    ///
    /// `dtype` is every component's type unless `textEncoderDType`, `unetDType` or `vaeDType` names another (mixed
    /// precision: a trained component in float32 beside frozen ones in bfloat16; the models cast their inputs).
    public static func load(
        folder: URL, dtype: DType = .float32, device: Device = .cpu, variant: String? = nil,
        textEncoderDType: DType? = nil, unetDType: DType? = nil, vaeDType: DType? = nil
    ) throws -> StableDiffusionPipeline {
        try ModelIndex.check(folder: folder)
        let textFolder = folder.appendingPathComponent("text_encoder")
        let textWeights = try componentWeights(in: textFolder, baseName: "model", binBaseName: "pytorch_model", variant: variant)
        return StableDiffusionPipeline(
            tokenizer: try CLIPTokenizer(directory: folder.appendingPathComponent("tokenizer")),
            textEncoder: try CLIPTextModel.load(
                textWeights, configFile: textFolder.appendingPathComponent("config.json"), dtype: textEncoderDType ?? dtype,
                device: device),
            unet: try UNet2DConditionModel.load(
                folder: folder.appendingPathComponent("unet"), variant: variant, dtype: unetDType ?? dtype, device: device),
            vae: try AutoencoderKL.load(
                folder: folder.appendingPathComponent("vae"), variant: variant, dtype: vaeDType ?? dtype, device: device),
            schedulerConfig: try decodeConfig(
                SchedulerConfig.self, from: folder.appendingPathComponent("scheduler/scheduler_config.json")),
            schedulerConfigFile: folder.appendingPathComponent("scheduler/scheduler_config.json").path,
            device: device)
    }

    /// The folder's scheduler, or another one (a `SchedulerName`) on the same noise schedule; `karras`: with Karras
    /// sigmas.
    public func makeScheduler(_ name: String? = nil, karras: Bool = false) throws -> any Scheduler {
        try StableDiffusion.makeScheduler(config: schedulerConfig, overrideClass: name, karras: karras, configFile: schedulerConfigFile)
    }

    public var vaeScaleFactor: Int { vae.vaeScaleFactor }
    public var defaultSize: Int { (unet.config.sample_size ?? 64) * vaeScaleFactor }

    /// Token ids [B, 77] of prompts, and the words each lost to truncation.
    public func tokenize(_ prompts: [String]) -> (ids: Tensor, truncatedWords: [String?]) {
        let (ids, dropped) = tokenizer.tokenize(prompts, maxLength: tokenizer.maxLength)
        return (Tensor(ids.flatMap { $0.map(Int64.init) }, shape: [ids.count, tokenizer.maxLength]).to(device), dropped)
    }

    /// The text encoder's last hidden state for prompts: [B, 77, D] (diffusers' `encode_prompt`).
    public func encode(_ prompts: [String]) -> Tensor {
        textEncoder(tokenize(prompts).ids).lastHiddenState
    }

    /// Samples images for the request, calling `progress(step, total)` after each UNet call.
    ///
    /// With a `mix`, the last `mix.finetunedSteps` UNet calls (all by default) are conditioned on the mixed
    /// embeddings of its encoders, and the calls before on this pipeline's own encoder; both halves of the guidance
    /// context (the negative or empty prompts, and the prompts) are mixed. Without one, the pipeline's encoder
    /// conditions every call, step for step as diffusers.
    public func generate(
        _ request: GenerationRequest, mix: EncoderMix? = nil, scheduler: (any Scheduler)? = nil,
        progress: ((Int, Int) -> Void)? = nil
    ) throws -> GenerationResult {
        try validate(request)
        let height = request.height ?? defaultSize, width = request.width ?? defaultSize
        let scheduler = try scheduler ?? makeScheduler()
        try scheduler.prepareSampling(steps: request.steps)
        let calls = scheduler.timesteps.count
        if let mix { try validate(mix, unetCalls: calls) }
        // The first UNet call conditioned on the mix (calls: none).
        let mixStart = mix.map { calls - ($0.finetunedSteps ?? calls) }
        return withNoGrad {
            let perPrompt = request.imagesPerPrompt
            let (ids, dropped) = tokenize(request.prompts)
            var negativeIds: Tensor? = nil
            if request.usesGuidance {
                let negatives = request.negativePrompts.map { $0.count == 1 ? Array(repeating: $0[0], count: request.prompts.count) : $0 }
                    ?? Array(repeating: "", count: request.prompts.count)
                negativeIds = tokenize(negatives).ids
            }
            // Each encoder's embeddings, computed once for all the steps that use them.
            var cache: [ObjectIdentifier: (prompt: Tensor, negative: Tensor?)] = [:]
            func embeddings(_ encoder: CLIPTextModel) -> (prompt: Tensor, negative: Tensor?) {
                if let hit = cache[ObjectIdentifier(encoder)] { return hit }
                let embeds = (prompt: run(encoder, ids), negative: negativeIds.map { run(encoder, $0) })
                cache[ObjectIdentifier(encoder)] = embeds
                return embeds
            }
            func repeated(_ embeds: (prompt: Tensor, negative: Tensor?)) -> (prompt: Tensor, negative: Tensor?) {
                (repeatPerPrompt(embeds.prompt, perPrompt), embeds.negative.map { repeatPerPrompt($0, perPrompt) })
            }
            func context(_ embeds: (prompt: Tensor, negative: Tensor?)) -> Tensor {
                embeds.negative.map { Tensor.cat([$0, embeds.prompt]) } ?? embeds.prompt
            }
            let original = (mixStart ?? 1) > 0 ? repeated(embeddings(textEncoder)) : nil
            var mixedEmbeds: (prompt: Tensor, negative: Tensor?)? = nil
            if let mix, let mixStart, mixStart < calls {
                let prompt = mixed(mix) { embeddings($0).prompt }
                let negative = negativeIds == nil ? nil : mixed(mix) { embeddings($0).negative! }
                mixedEmbeds = repeated((prompt, negative))
            }
            let originalContext = original.map(context), mixedContext = mixedEmbeds.map(context)
            let last = mixedEmbeds ?? original!

            // diffusers' prepare_latents: one randn from the seeded CPU generator, then scaled by the scheduler.
            let generator = Generator(seed: request.seed)
            let shape = [request.prompts.count * perPrompt, unet.config.in_channels, height / vaeScaleFactor, width / vaeScaleFactor]
            let initLatents = Tensor.randn(shape, generator: generator)
            var latents = (initLatents * scheduler.initNoiseSigma).to(dtype: last.prompt.dtype, device: device)
            for (i, t) in scheduler.timesteps.enumerated() {
                let context = i < (mixStart ?? calls) ? originalContext! : mixedContext!
                latents = denoise(latents, timestep: t, context: context, guidanceScale: request.guidanceScale,
                                  scheduler: scheduler, generator: generator, eta: request.eta)
                progress?(i + 1, calls)
            }
            return GenerationResult(
                images: toImages(decode(latents)), initLatents: initLatents, latents: latents, promptEmbeds: last.prompt,
                negativePromptEmbeds: last.negative, originalPromptEmbeds: mix == nil ? nil : original?.prompt,
                originalNegativePromptEmbeds: mix == nil ? nil : original?.negative, mixStart: mixStart,
                truncatedWords: dropped)
        }
    }

    /// One denoising step with classifier-free guidance: `context` holds the unconditional embeddings first when
    /// guidance is on. Differentiable in `latents` and `context`: the trainer walks back through it.
    public func denoise(
        _ latents: Tensor, timestep: Double, context: Tensor, guidanceScale: Double, scheduler: any Scheduler,
        generator: Generator?, eta: Double = 0
    ) -> Tensor {
        let guided = guidanceScale > 1
        let input = scheduler.scaleModelInput(guided ? Tensor.cat([latents, latents]) : latents, timestep: timestep)
        // Float timesteps: Euler's are fractional (999, 957.375, ...); the UNet embeds them as diffusers does.
        let t = Tensor(scalar: Float(timestep)).to(device).expand([input.size(0)])
        var noise = unet(input, timestep: t, encoderHiddenStates: context)
        if guided {
            let parts = noise.chunk(2)
            noise = parts[0] + guidanceScale * (parts[1] - parts[0])
        }
        return scheduler.step(modelOutput: noise, timestep: timestep, sample: latents, generator: generator, eta: eta)
    }

    /// Latents to images in [-1, 1] through the VAE (`vae.decode(latents / scaling_factor)`).
    public func decode(_ latents: Tensor) -> Tensor {
        vae.decode(latents / vae.config.scaling_factor)
    }

    /// [N, 3, H, W] in [-1, 1] to [N, H, W, 3] uint8, as diffusers' image processor converts.
    public func toImages(_ decoded: Tensor) -> Tensor {
        ((decoded.to(.float32) / 2 + 0.5).clamp(min: 0, max: 1) * 255).round().permute([0, 2, 3, 1]).to(.uint8).to(.cpu)
    }

    /// Repeats each prompt's embeddings n times in a row: [B, L, D] -> [B*n, L, D] (diffusers' repeat + view).
    func repeatPerPrompt(_ embeds: Tensor, _ n: Int) -> Tensor {
        n == 1 ? embeds : embeds.repeatInterleave(n, dim: 0)
    }

    /// Checks a request without running it (the CLI does this before it writes anything).
    public func validate(_ request: GenerationRequest) throws {
        guard !request.prompts.isEmpty else { throw StableDiffusionError.invalidArgument("no prompt given (--prompt or --prompts-file)") }
        guard request.steps >= 1 else { throw StableDiffusionError.invalidArgument("--steps must be at least 1 (got \(request.steps))") }
        guard request.guidanceScale >= 0 else {
            throw StableDiffusionError.invalidArgument("--guidance must not be negative (got \(request.guidanceScale))")
        }
        guard request.imagesPerPrompt >= 1 else {
            throw StableDiffusionError.invalidArgument("--images-per-prompt must be at least 1 (got \(request.imagesPerPrompt))")
        }
        for (name, value) in [("--height", request.height), ("--width", request.width)] {
            if let value, value <= 0 || value % vaeScaleFactor != 0 {
                throw StableDiffusionError.invalidArgument("\(name) must be a positive multiple of \(vaeScaleFactor) (got \(value))")
            }
        }
        if let negatives = request.negativePrompts, negatives.count != 1, negatives.count != request.prompts.count {
            throw StableDiffusionError.invalidArgument(
                "give one --negative-prompt, or one per prompt (\(request.prompts.count)); got \(negatives.count)")
        }
    }
}

/// `model_index.json` of a diffusers folder: which classes make the pipeline.
enum ModelIndex {
    static let components = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"]

    static func check(folder: URL) throws {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw StableDiffusionError.missingFile(folder.path)
        }
        let index = folder.appendingPathComponent("model_index.json")
        guard let data = FileManager.default.contents(atPath: index.path) else {
            throw StableDiffusionError.missingFile(index.path)
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw StableDiffusionError.invalidConfig(file: index.path, message: "not valid JSON")
        }
        for component in components {
            guard object[component] != nil else {
                throw StableDiffusionError.invalidConfig(file: index.path, message: "missing key \"\(component)\"")
            }
            let path = folder.appendingPathComponent(component).path
            guard FileManager.default.fileExists(atPath: path) else { throw StableDiffusionError.missingFile(path) }
        }
    }
}
