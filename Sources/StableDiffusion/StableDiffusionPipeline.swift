import Foundation
import NN
import Torch

/// What to generate. Defaults are diffusers' `StableDiffusionPipeline.__call__` (and `StableDiffusionXLPipeline`'s)
/// defaults, except the step count.
public struct GenerationRequest: Sendable {
    public var prompts: [String]
    /// One per prompt, or one for all; nil means "" (the unconditional prompt), and for SDXL with
    /// `force_zeros_for_empty_prompt` zeros instead of its embeddings (diffusers: `negative_prompt=None`).
    public var negativePrompts: [String]?
    public var steps = 25
    public var guidanceScale = 7.5
    public var seed: UInt64 = 0
    public var height: Int? = nil
    public var width: Int? = nil
    public var imagesPerPrompt = 1
    /// DDIM's eta; ignored by the other schedulers.
    public var eta = 0.0
    /// SDXL: the texts for `tokenizer_2` and `text_encoder_2` (diffusers' `prompt_2`), one per prompt or one for all;
    /// nil: the prompts.
    public var prompts2: [String]? = nil
    /// SDXL: diffusers' `negative_prompt_2`; nil: the negative prompts.
    public var negativePrompts2: [String]? = nil
    /// diffusers' `clip_skip`: condition on the output of an earlier text-encoder layer, N layers before the one the
    /// model uses (SD 1.x/2.x: `hidden_states[-(N+1)]` through the final layer norm; SDXL: `hidden_states[-(N+2)]`).
    /// As in diffusers it applies to the prompts only; the negative prompts keep the model's own layer.
    public var clipSkip: Int? = nil
    /// SDXL's size conditioning (diffusers' `crops_coords_top_left`, `original_size`, `target_size`); nil: (0, 0), and
    /// the image's own size for both sizes.
    public var cropTopLeft: (top: Int, left: Int)? = nil
    public var originalSize: (height: Int, width: Int)? = nil
    public var targetSize: (height: Int, width: Int)? = nil

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
    /// SDXL: the pooled embeddings (`text_embeds`) of the prompts and of the negative prompts (zeros when forced).
    public let pooledPromptEmbeds: Tensor?
    public let negativePooledPromptEmbeds: Tensor?
    /// With a mix: the pipeline's own encoder's embeddings, which conditioned the calls before `mixStart` (nil when
    /// the mix conditioned every call, and without a mix).
    public let originalPromptEmbeds: Tensor?
    public let originalNegativePromptEmbeds: Tensor?
    /// With a mix: the first UNet call (0-based) conditioned on it; the scheduler's call count when none was.
    public let mixStart: Int?
    /// Words dropped from each prompt because it had more than 77 tokens (nil where nothing was dropped).
    public let truncatedWords: [String?]
    /// SDXL: the same for each prompt's `prompt_2` text in the second tokenizer (nil where nothing was dropped).
    public let truncatedWords2: [String?]
}

/// Which family a Stable Diffusion folder belongs to, from its `model_index.json`.
public enum ModelArchitecture: String, Sendable {
    /// Stable Diffusion 1.x/2.x: one text encoder, the UNet conditioned on its last hidden state.
    case sd
    /// Stable Diffusion XL (base): two text encoders, their penultimate states side by side, and the pooled embeddings
    /// and size conditioning added to the UNet's time embedding.
    case sdxl

    public var name: String { self == .sd ? "Stable Diffusion 1.x/2.x" : "Stable Diffusion XL" }
}

/// Stable Diffusion 1.x/2.x and XL text-to-image sampling, step for step as diffusers' `StableDiffusionPipeline`
/// and `StableDiffusionXLPipeline`: the same seed and weights give the same latents. An SDXL pipeline has a second
/// tokenizer and text encoder (`tokenizer2`, `textEncoder2`); everything else is shared, and the UNet is conditioned
/// through one `Conditioning` value in both.
public final class StableDiffusionPipeline {
    /// Tokens added by `addToken` (textual inversion) are in it.
    public internal(set) var tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextModel
    /// SDXL: `tokenizer_2` (the published one pads with "!").
    public internal(set) var tokenizer2: CLIPTokenizer?
    /// SDXL: `text_encoder_2`, whose projected pooled output is the UNet's `text_embeds`.
    public let textEncoder2: CLIPTextModelWithProjection?
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL
    public let schedulerConfig: SchedulerConfig
    public let schedulerConfigFile: String
    /// SDXL's `force_zeros_for_empty_prompt` (model_index.json, true when absent as in diffusers): without a negative
    /// prompt, guidance's unconditional half is zeros instead of the embeddings of "".
    public let forceZerosForEmptyPrompt: Bool
    public let device: Device

    public init(
        tokenizer: CLIPTokenizer, textEncoder: CLIPTextModel, tokenizer2: CLIPTokenizer? = nil,
        textEncoder2: CLIPTextModelWithProjection? = nil, unet: UNet2DConditionModel, vae: AutoencoderKL,
        schedulerConfig: SchedulerConfig, schedulerConfigFile: String = "scheduler_config.json",
        forceZerosForEmptyPrompt: Bool = true, device: Device = .cpu
    ) {
        precondition((tokenizer2 == nil) == (textEncoder2 == nil), "StableDiffusionPipeline: SDXL needs tokenizer2 and textEncoder2")
        self.tokenizer = tokenizer
        self.textEncoder = textEncoder
        self.tokenizer2 = tokenizer2
        self.textEncoder2 = textEncoder2
        self.unet = unet
        self.vae = vae
        self.schedulerConfig = schedulerConfig
        self.schedulerConfigFile = schedulerConfigFile
        self.forceZerosForEmptyPrompt = forceZerosForEmptyPrompt
        self.device = device
    }

    public var architecture: ModelArchitecture { textEncoder2 == nil ? .sd : .sdxl }

    /// The architecture of a diffusers folder, from its `model_index.json` (checked as `load` checks it), without
    /// loading anything: for refusing what a job does not support before the weights are read.
    public static func architecture(of folder: URL) throws -> ModelArchitecture {
        try ModelIndex.read(folder: folder).architecture
    }

    /// Loads a diffusers folder: `model_index.json` and the `tokenizer`, `text_encoder`, `unet`, `vae` and
    /// `scheduler` components (SDXL: `tokenizer_2` and `text_encoder_2` too), each strictly (every key of every
    /// weights file must fit the model). The configs are checked against each other before any weight is read.
    ///
    /// `dtype` is every component's type unless `textEncoderDType`, `unetDType` or `vaeDType` names another (mixed
    /// precision: a trained component in float32 beside frozen ones in bfloat16; the models cast their inputs).
    /// `textEncoder2DType` is SDXL's second encoder's (default: `textEncoderDType`). An SDXL VAE whose config sets `force_upcast` stays float32 when
    /// `dtype` is float16, as diffusers' SDXL pipeline decodes (SD 1.x/2.x's pipeline does not upcast).
    ///
    /// `singleFile`: the weights come from one original-layout checkpoint instead of the folder's files (`folder` then
    /// gives the configs, tokenizers and scheduler, and its architecture must be the file's). `predictionType`: the
    /// scheduler's, in place of its config's.
    public static func load(
        folder: URL, dtype: DType = .float32, device: Device = .cpu, variant: String? = nil,
        textEncoderDType: DType? = nil, textEncoder2DType: DType? = nil, unetDType: DType? = nil, vaeDType: DType? = nil,
        singleFile: SingleFileCheckpoint? = nil, predictionType: String? = nil
    ) throws -> StableDiffusionPipeline {
        let index = try ModelIndex.read(folder: folder)
        let isXL = index.architecture == .sdxl
        try singleFile?.checkConfigFolder(folder, index: index)
        let textFolder = folder.appendingPathComponent("text_encoder")
        let textFolder2 = folder.appendingPathComponent("text_encoder_2")
        let unetConfigFile = folder.appendingPathComponent("unet/config.json")
        try checkComponents(
            unet: try decodeConfig(UNet2DConditionConfig.self, from: unetConfigFile), unetConfigFile: unetConfigFile.path,
            text: try decodeConfig(CLIPTextConfig.self, from: textFolder.appendingPathComponent("config.json")),
            text2: isXL ? try decodeConfig(CLIPTextConfig.self, from: textFolder2.appendingPathComponent("config.json")) : nil)
        let vaeFolder = folder.appendingPathComponent("vae")
        var vaeType = vaeDType ?? dtype
        if isXL {
            let file = vaeFolder.appendingPathComponent("config.json")
            let vae = try decodeConfig(AutoencoderKLConfig.self, from: file)
            if vaeDType == nil, dtype == .float16, vae.force_upcast { vaeType = .float32 }
            for (key, values) in [("latents_mean", vae.latents_mean), ("latents_std", vae.latents_std)] {
                if let values, values.count != vae.latent_channels {
                    throw StableDiffusionError.invalidConfig(
                        file: file.path, message: "key \"\(key)\" has \(values.count) entries, latent_channels is \(vae.latent_channels)")
                }
            }
        }
        func text<M>(_ folder: URL, _ type: DType?, second: Bool = false, _ load: (any WeightSource, URL, DType, Device) throws -> M) throws -> M {
            let weights: any WeightSource
            if let singleFile {
                let config = try decodeConfig(CLIPTextConfig.self, from: folder.appendingPathComponent("config.json"))
                weights = try second ? singleFile.textEncoder2(config: config) : singleFile.textEncoder(config: config)
            } else {
                weights = try componentWeights(in: folder, baseName: "model", binBaseName: "pytorch_model", variant: variant)
            }
            return try load(weights, folder.appendingPathComponent("config.json"), type ?? dtype, device)
        }
        var scheduler = try decodeConfig(SchedulerConfig.self, from: folder.appendingPathComponent("scheduler/scheduler_config.json"))
        if let predictionType { scheduler.predictionType = predictionType }
        return StableDiffusionPipeline(
            tokenizer: try CLIPTokenizer(directory: folder.appendingPathComponent("tokenizer")),
            textEncoder: try text(textFolder, textEncoderDType) { try CLIPTextModel.load($0, configFile: $1, dtype: $2, device: $3) },
            tokenizer2: isXL ? try CLIPTokenizer(directory: folder.appendingPathComponent("tokenizer_2")) : nil,
            textEncoder2: isXL
                ? try text(textFolder2, textEncoder2DType ?? textEncoderDType, second: true) { try CLIPTextModelWithProjection.load($0, configFile: $1, dtype: $2, device: $3) } : nil,
            unet: try UNet2DConditionModel.load(
                folder: folder.appendingPathComponent("unet"), variant: variant, dtype: unetDType ?? dtype, device: device,
                weights: singleFile.map { file in { try file.unet(config: $0) } }),
            vae: try AutoencoderKL.load(
                folder: vaeFolder, variant: variant, dtype: vaeType, device: device, weights: singleFile.map { file in { try file.vae(config: $0) } }),
            schedulerConfig: scheduler,
            schedulerConfigFile: folder.appendingPathComponent("scheduler/scheduler_config.json").path,
            forceZerosForEmptyPrompt: index.forceZerosForEmptyPrompt, device: device)
    }

    /// The UNet's text inputs against the text encoders (their configs, before any weight is read): the
    /// cross-attention width is the encoders' hidden widths (side by side for SDXL), and SDXL's `add_embedding` takes
    /// `text_encoder_2`'s projection and six features of `addition_time_embed_dim` (diffusers checks the latter when it
    /// samples, and the former fails in the first attention).
    static func checkComponents(
        unet: UNet2DConditionConfig, unetConfigFile file: String, text: CLIPTextConfig, text2: CLIPTextConfig?
    ) throws {
        func fail(_ message: String) -> StableDiffusionError { .invalidConfig(file: file, message: message) }
        let textTime = unet.addition_embed_type == "text_time"
        guard let text2 else {
            if textTime { throw fail("addition_embed_type \"text_time\" is SDXL's, but the folder has one text encoder (no text_encoder_2 in model_index.json)") }
            for width in unet.cross_attention_dim.values(count: unet.down_block_types.count) where width != text.hidden_size {
                throw fail("cross_attention_dim \(width) does not match text_encoder's hidden_size (\(text.hidden_size))")
            }
            return
        }
        guard textTime else {
            throw fail("addition_embed_type \"\(unet.addition_embed_type ?? "null")\" is not SDXL's \"text_time\", which an SDXL folder needs")
        }
        let width = text.hidden_size + text2.hidden_size
        for found in unet.cross_attention_dim.values(count: unet.down_block_types.count) where found != width {
            throw fail("cross_attention_dim \(found) does not match the text encoders' hidden sizes (\(text.hidden_size) + \(text2.hidden_size) = \(width))")
        }
        let pooled = text2.projection_dim ?? text2.hidden_size
        let timeDim = unet.addition_time_embed_dim ?? 0
        let expected = pooled + 6 * timeDim
        if let found = unet.projection_class_embeddings_input_dim, found != expected {
            throw fail("projection_class_embeddings_input_dim \(found) does not match text_encoder_2's projection_dim (\(pooled)) + 6 x addition_time_embed_dim (\(timeDim)) = \(expected)")
        }
    }

    /// The folder's scheduler, or another one (a `SchedulerName`) on the same noise schedule; `karras`: with Karras
    /// sigmas.
    public func makeScheduler(_ name: String? = nil, karras: Bool = false) throws -> any Scheduler {
        try StableDiffusion.makeScheduler(config: schedulerConfig, overrideClass: name, karras: karras, configFile: schedulerConfigFile)
    }

    public var vaeScaleFactor: Int { vae.vaeScaleFactor }
    public var defaultSize: Int { (unet.config.sample_size ?? 64) * vaeScaleFactor }

    /// Token ids [B, 77] of prompts in the first tokenizer, and the words each lost to truncation.
    public func tokenize(_ prompts: [String]) -> (ids: Tensor, truncatedWords: [String?]) {
        idsTensor(tokenizer, prompts)
    }

    /// Token ids of prompts for every tokenizer of the pipeline: the first takes `prompts`; SDXL's second takes
    /// `secondPrompts` (diffusers' `prompt_2`), or the prompts when nil. Without a second tokenizer,
    /// `secondPrompts` is not used.
    public func promptTokens(_ prompts: [String], secondPrompts: [String]? = nil) -> PromptTokens {
        let (ids, dropped) = idsTensor(tokenizer, prompts)
        guard let tokenizer2 else { return PromptTokens(ids: ids, truncatedWords: dropped) }
        let (ids2, dropped2) = idsTensor(tokenizer2, secondPrompts ?? prompts)
        return PromptTokens(ids: ids, ids2: ids2, truncatedWords: dropped, truncatedWords2: dropped2)
    }

    func idsTensor(_ tokenizer: CLIPTokenizer, _ prompts: [String]) -> (ids: Tensor, truncatedWords: [String?]) {
        let (ids, dropped) = tokenizer.tokenize(prompts, maxLength: tokenizer.maxLength)
        return (Tensor(ids.flatMap { $0.map(Int64.init) }, shape: [ids.count, tokenizer.maxLength]).to(device), dropped)
    }

    /// The embeddings that condition the UNet's cross-attention for prompts: [B, 77, D] (diffusers' `encode_prompt`;
    /// SD 1.x/2.x: the text encoder's last hidden state).
    public func encode(_ prompts: [String]) -> Tensor {
        encode(promptTokens(prompts)).hiddenStates
    }

    /// The conditioning of token ids, as diffusers' `encode_prompt` computes it, and differentiable: run with
    /// gradients on, it carries the graph back into the encoders (the trainer's entry point).
    ///
    /// - SD 1.x/2.x: the text encoder's last hidden state; with `clipSkip` N, `hidden_states[-(N+1)]` through its final
    ///   layer norm.
    /// - SDXL: `hidden_states[-2]` of both encoders (no final norm; with `clipSkip` N, `hidden_states[-(N+2)]`) side
    ///   by side, [B, 77, D1 + D2] in `text_encoder_2`'s type; `textEmbeds` is `text_encoder_2`'s projected pooled
    ///   output; `sizes` gives the time ids (nil leaves them out, for a caller that adds them later).
    ///
    /// `textEncoder` and `textEncoder2` replace the pipeline's own (a trainable copy, say). The result is on the
    /// pipeline's device; for SD 1.x/2.x in the pipeline's text encoder's type, whatever the given encoder's.
    public func encode(
        _ tokens: PromptTokens, textEncoder: CLIPTextModel? = nil, textEncoder2: CLIPTextModelWithProjection? = nil,
        clipSkip: Int? = nil, sizes: SizeConditioning? = nil
    ) -> Conditioning {
        let first = textEncoder ?? self.textEncoder
        guard let second = textEncoder2 ?? self.textEncoder2 else {
            return Conditioning(hiddenStates: run(first, tokens.ids, clipSkip: clipSkip))
        }
        guard let ids2 = tokens.ids2 else { preconditionFailure("StableDiffusionPipeline.encode: SDXL needs the second tokenizer's ids") }
        let skip = clipSkip ?? 0
        func onDevice(_ ids: Tensor, of module: any Module) -> Tensor {
            module.parameters.first.map { ids.device == $0.device ? ids : ids.to($0.device) } ?? ids
        }
        let out1 = first(onDevice(tokens.ids, of: first), outputHiddenStates: true)
        let out2 = second(onDevice(ids2, of: second), outputHiddenStates: true)
        let states1 = out1.hiddenStates!, states2 = out2.hiddenStates!
        let h1 = states1[states1.count - 2 - skip], h2 = states2[states2.count - 2 - skip]
        let dtype = h2.dtype
        let hidden = Tensor.cat([h1.to(dtype: dtype, device: h2.device), h2], dim: -1).to(dtype: dtype, device: device)
        let pooled = out2.textEmbeds.device == device ? out2.textEmbeds : out2.textEmbeds.to(device)
        return Conditioning(
            hiddenStates: hidden, textEmbeds: pooled, timeIds: sizes?.timeIds(batch: tokens.batchSize, device: device).to(dtype))
    }

    /// Samples images for the request, calling `progress(step, total)` after each UNet call.
    ///
    /// With a `mix`, the last `mix.finetunedSteps` UNet calls (all by default) are conditioned on
    /// the mixed embeddings of its encoders, and the calls before on this pipeline's own encoder; both halves of the
    /// guidance context (the negative or empty prompts, and the prompts) are mixed; on SDXL the hidden states and the
    /// pooled embeddings alike, each term encoding with its encoders in their places (the model's own where it has
    /// none). Without one, the pipeline's
    /// encoders condition every call, step for step as diffusers.
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
            let count = request.prompts.count
            func each(_ texts: [String]) -> [String] { texts.count == 1 ? Array(repeating: texts[0], count: count) : texts }
            let tokens = promptTokens(request.prompts, secondPrompts: request.prompts2.map(each))
            let sizes = architecture == .sdxl ? sizeConditioning(request, height: height, width: width) : nil
            // SDXL without a negative prompt and with force_zeros_for_empty_prompt: zeros, nothing to encode.
            let zeroNegative = request.usesGuidance && architecture == .sdxl && request.negativePrompts == nil
                && forceZerosForEmptyPrompt
            var negativeTokens: PromptTokens? = nil
            if request.usesGuidance, !zeroNegative {
                let negatives = request.negativePrompts.map(each) ?? Array(repeating: "", count: count)
                negativeTokens = promptTokens(negatives, secondPrompts: request.negativePrompts2.map(each) ?? negatives)
            }
            // Each encoder's conditioning, computed once for all the steps that use it. diffusers applies clip_skip
            // to the prompts only.
            // Keyed by the encoders of each place (SDXL: a term may replace one and keep the other).
            var cache: [[ObjectIdentifier]: GuidancePair] = [:]
            func embeddings(_ encoder: CLIPTextModel, _ encoder2: CLIPTextModelWithProjection? = nil) -> GuidancePair {
                let second = encoder2 ?? textEncoder2
                let key = [ObjectIdentifier(encoder)] + (second.map { [ObjectIdentifier($0)] } ?? [])
                if let hit = cache[key] { return hit }
                let prompt = encode(tokens, textEncoder: encoder, textEncoder2: second, clipSkip: request.clipSkip, sizes: sizes)
                let negative = zeroNegative
                    ? prompt.zeroingText()
                    : negativeTokens.map { encode($0, textEncoder: encoder, textEncoder2: second, sizes: sizes) }
                let pair = GuidancePair(prompt: prompt, negative: negative)
                cache[key] = pair
                return pair
            }
            func termEmbeddings(_ component: EncoderMix.Component?) -> GuidancePair {
                embeddings(component?.encoder ?? textEncoder, component?.encoder2)
            }
            let original = (mixStart ?? 1) > 0 ? embeddings(textEncoder).repeatingEach(perPrompt) : nil
            var mixedEmbeds: GuidancePair? = nil
            if let mix, let mixStart, mixStart < calls {
                if architecture == .sd {
                    let prompt = mixed(mix) { embeddings($0).prompt.hiddenStates }
                    let negative = negativeTokens == nil ? nil : mixed(mix) { embeddings($0).negative!.hiddenStates }
                    mixedEmbeds = GuidancePair(
                        prompt: Conditioning(hiddenStates: prompt), negative: negative.map { Conditioning(hiddenStates: $0) }
                    ).repeatingEach(perPrompt)
                } else {
                    let prompt = mixedConditioning(mix) { termEmbeddings($0).prompt }
                    let hasNegative = termEmbeddings(nil).negative != nil
                    let negative = hasNegative ? mixedConditioning(mix) { termEmbeddings($0).negative! } : nil
                    mixedEmbeds = GuidancePair(prompt: prompt, negative: negative).repeatingEach(perPrompt)
                }
            }
            let originalContext = original?.context, mixedContext = mixedEmbeds?.context
            let last = mixedEmbeds ?? original!

            // diffusers' prepare_latents: one randn from the seeded CPU generator, then scaled by the scheduler.
            let generator = Generator(seed: request.seed)
            let shape = [count * perPrompt, unet.config.in_channels, height / vaeScaleFactor, width / vaeScaleFactor]
            let initLatents = Tensor.randn(shape, generator: generator)
            var latents = (initLatents * scheduler.initNoiseSigma).to(dtype: last.prompt.hiddenStates.dtype, device: device)
            for (i, t) in scheduler.timesteps.enumerated() {
                let conditioning = i < (mixStart ?? calls) ? originalContext! : mixedContext!
                latents = denoise(latents, timestep: t, conditioning: conditioning, guidanceScale: request.guidanceScale,
                                  scheduler: scheduler, generator: generator, eta: request.eta)
                progress?(i + 1, calls)
            }
            let shown = mix == nil ? nil : original
            return GenerationResult(
                images: toImages(decode(latents)), initLatents: initLatents, latents: latents,
                promptEmbeds: last.prompt.hiddenStates, negativePromptEmbeds: last.negative?.hiddenStates,
                pooledPromptEmbeds: last.prompt.textEmbeds, negativePooledPromptEmbeds: last.negative?.textEmbeds,
                originalPromptEmbeds: shown?.prompt.hiddenStates, originalNegativePromptEmbeds: shown?.negative?.hiddenStates,
                mixStart: mixStart,
                truncatedWords: tokens.truncatedWords,
                truncatedWords2: request.prompts2 == nil ? Array(repeating: nil, count: count) : tokens.truncatedWords2)
        }
    }

    /// SDXL's size conditioning of a request for an image of `height` x `width` (diffusers' defaults where unset).
    public func sizeConditioning(_ request: GenerationRequest, height: Int, width: Int) -> SizeConditioning {
        SizeConditioning(
            original: request.originalSize ?? (height, width), cropTopLeft: request.cropTopLeft ?? (0, 0),
            target: request.targetSize ?? (height, width))
    }

    /// One denoising step with classifier-free guidance: `conditioning` holds the unconditional rows first when
    /// guidance is on. Differentiable in `latents` and the conditioning: the trainer walks back through it.
    public func denoise(
        _ latents: Tensor, timestep: Double, conditioning: Conditioning, guidanceScale: Double, scheduler: any Scheduler,
        generator: Generator?, eta: Double = 0
    ) -> Tensor {
        let noise = guidedNoise(latents, timestep: timestep, conditioning: conditioning, guidanceScale: guidanceScale,
                                scheduler: scheduler)
        return scheduler.step(modelOutput: noise, timestep: timestep, sample: latents, generator: generator, eta: eta)
    }

    /// The noise prediction `denoise` steps with: above guidance 1, the UNet on the guidance batch (`conditioning`'s
    /// unconditional rows first, the latents twice) and `uncond + scale * (cond - uncond)`; else the UNet alone.
    public func guidedNoise(
        _ latents: Tensor, timestep: Double, conditioning: Conditioning, guidanceScale: Double, scheduler: any Scheduler
    ) -> Tensor {
        guard guidanceScale > 1 else { return noise(latents, timestep: timestep, conditioning: conditioning, scheduler: scheduler) }
        let parts = noise(Tensor.cat([latents, latents]), timestep: timestep, conditioning: conditioning, scheduler: scheduler).chunk(2)
        return parts[0] + guidanceScale * (parts[1] - parts[0])
    }

    /// The UNet's noise prediction for `latents` (one row per conditioning row) at `timestep`, the input scaled as the
    /// scheduler asks.
    public func noise(_ latents: Tensor, timestep: Double, conditioning: Conditioning, scheduler: any Scheduler) -> Tensor {
        let input = scheduler.scaleModelInput(latents, timestep: timestep)
        // Float timesteps: Euler's are fractional (999, 957.375, ...); the UNet embeds them as diffusers does.
        let t = Tensor(scalar: Float(timestep)).to(device).expand([input.size(0)])
        return unet(input, timestep: t, conditioning: conditioning)
    }

    /// `denoise` with text embeddings alone (a UNet without added conditioning).
    public func denoise(
        _ latents: Tensor, timestep: Double, context: Tensor, guidanceScale: Double, scheduler: any Scheduler,
        generator: Generator?, eta: Double = 0
    ) -> Tensor {
        denoise(latents, timestep: timestep, conditioning: Conditioning(hiddenStates: context), guidanceScale: guidanceScale,
                scheduler: scheduler, generator: generator, eta: eta)
    }

    /// Latents to images in [-1, 1] through the VAE (`vae.decode(latents / scaling_factor)`). A VAE kept wider than
    /// the latents (SDXL's `force_upcast` under float16) gets them widened first and returns its own type, as diffusers
    /// upcasts before dividing. SDXL's pipeline also reads a VAE config's `latents_mean` and `latents_std` when both
    /// are set (`latents * std / scaling_factor + mean`, per channel); SD 1.x/2.x's ignores them, as diffusers' does.
    public func decode(_ latents: Tensor) -> Tensor {
        vae.decode(decoderInput(latents))
    }

    /// What `decode` hands the VAE's decoder for `latents`: widened where the VAE is, then unscaled (and for SDXL with
    /// `latents_mean`/`latents_std`, de-normalised per channel). Differentiable, and separate so that the trainer's
    /// piecewise-recomputed decoder starts from the same input.
    public func decoderInput(_ latents: Tensor) -> Tensor {
        let widened = vae.dtype == .float32 && latents.dtype != .float32 ? latents.to(.float32) : latents
        let config = vae.config
        if architecture == .sdxl, let mean = config.latents_mean, let std = config.latents_std {
            func channels(_ values: [Double]) -> Tensor {
                Tensor(values.map(Float.init), shape: [1, values.count, 1, 1]).to(dtype: widened.dtype, device: widened.device)
            }
            return widened * channels(std) / config.scaling_factor + channels(mean)
        }
        return widened / config.scaling_factor
    }

    /// [N, 3, H, W] in [-1, 1] to [N, H, W, 3] uint8, as diffusers' image processor converts.
    public func toImages(_ decoded: Tensor) -> Tensor {
        ((decoded.to(.float32) / 2 + 0.5).clamp(min: 0, max: 1) * 255).round().permute([0, 2, 3, 1]).to(.uint8).to(.cpu)
    }

    /// Repeats each prompt's embeddings n times in a row: [B, L, D] -> [B*n, L, D] (diffusers' repeat + view).
    func repeatPerPrompt(_ embeds: Tensor, _ n: Int) -> Tensor {
        n == 1 ? embeds : embeds.repeatInterleave(n, dim: 0)
    }

    /// The largest `clip_skip`: the layers an encoder's hidden states can go back (SD 1.x/2.x: to the embeddings;
    /// SDXL: the penultimate state is already one back, in the shallower encoder).
    public var maxClipSkip: Int {
        guard let textEncoder2 else { return textEncoder.config.num_hidden_layers }
        return min(textEncoder.config.num_hidden_layers, textEncoder2.config.num_hidden_layers) - 1
    }

    /// Checks a request without running it (the CLI does this before it writes anything).
    public func validate(_ request: GenerationRequest) throws {
        func fail(_ message: String) -> StableDiffusionError { .invalidArgument(message) }
        guard !request.prompts.isEmpty else { throw fail("no prompt given (--prompt or --prompts-file)") }
        guard request.steps >= 1 else { throw fail("--steps must be at least 1 (got \(request.steps))") }
        guard request.guidanceScale >= 0 else { throw fail("--guidance must not be negative (got \(request.guidanceScale))") }
        guard request.imagesPerPrompt >= 1 else {
            throw fail("--images-per-prompt must be at least 1 (got \(request.imagesPerPrompt))")
        }
        for (name, value) in [("--height", request.height), ("--width", request.width)] {
            if let value, value <= 0 || value % vaeScaleFactor != 0 {
                throw fail("\(name) must be a positive multiple of \(vaeScaleFactor) (got \(value))")
            }
        }
        let count = request.prompts.count
        for (flag, texts) in [("--negative-prompt", request.negativePrompts), ("--prompt-2", request.prompts2),
                              ("--negative-prompt-2", request.negativePrompts2)] {
            if let texts, texts.count != 1, texts.count != count {
                throw fail("give one \(flag), or one per prompt (\(count)); got \(texts.count)")
            }
        }
        if let skip = request.clipSkip, skip < 0 || skip > maxClipSkip {
            let what = architecture == .sdxl ? "the text encoders' layers less the penultimate one" : "the text encoder's layers"
            throw fail("--clip-skip must be between 0 and \(maxClipSkip) (\(what)); got \(skip)")
        }
        if architecture == .sd {
            let sdxlOnly: [(String, Bool)] = [
                ("--prompt-2", request.prompts2 != nil), ("--negative-prompt-2", request.negativePrompts2 != nil),
                ("--crop", request.cropTopLeft != nil), ("original size", request.originalSize != nil),
                ("target size", request.targetSize != nil),
            ]
            if let (flag, _) = sdxlOnly.first(where: \.1) {
                throw fail("\(flag) is for SDXL models (a second text encoder and size conditioning); this is a \(architecture.name) model")
            }
        }
        if let crop = request.cropTopLeft, crop.top < 0 || crop.left < 0 {
            throw fail("--crop must be TOP,LEFT in pixels, each at least 0 (got \(crop.top),\(crop.left))")
        }
        for (name, size) in [("original size", request.originalSize), ("target size", request.targetSize)] {
            if let size, size.height <= 0 || size.width <= 0 {
                throw fail("the \(name) must be positive (got \(size.height)x\(size.width))")
            }
        }
    }
}

/// The conditioning of the prompts and, with guidance, of the negative prompts (nil without guidance).
struct GuidancePair {
    let prompt: Conditioning
    let negative: Conditioning?

    func repeatingEach(_ n: Int) -> GuidancePair {
        GuidancePair(prompt: prompt.repeatingEach(n), negative: negative?.repeatingEach(n))
    }

    /// The UNet's batch: the negative rows first, as diffusers' guidance batch.
    var context: Conditioning { negative.map { Conditioning.cat([$0, prompt]) } ?? prompt }
}

/// `model_index.json` of a diffusers folder: which classes make the pipeline, and so which components it needs.
struct ModelIndex {
    let architecture: ModelArchitecture
    /// `force_zeros_for_empty_prompt` (SDXL pipelines; true when absent, as diffusers' default).
    let forceZerosForEmptyPrompt: Bool

    static let components = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"]
    static let sdxlComponents = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae", "scheduler"]

    /// Reads and checks the index: SDXL when it names `text_encoder_2` or an SDXL class, SD 1.x/2.x otherwise. Every
    /// component it needs must be listed and present as a folder. An SDXL refiner (`text_encoder_2` without
    /// `text_encoder`) is refused.
    static func read(folder: URL) throws -> ModelIndex {
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
        func fail(_ message: String) -> StableDiffusionError { .invalidConfig(file: index.path, message: message) }
        // A component diffusers leaves out is listed as [null, null].
        func listed(_ key: String) -> Bool {
            guard let entry = object[key], !(entry is NSNull) else { return false }
            return !((entry as? [Any])?.allSatisfy { $0 is NSNull } ?? false)
        }
        let className = object["_class_name"] as? String ?? ""
        let isXL = listed("text_encoder_2") || className.hasPrefix("StableDiffusionXL")
        if isXL, !listed("text_encoder") {
            throw fail("an SDXL refiner (text_encoder_2 without text_encoder): refiners are not supported, use an SDXL base model")
        }
        for component in isXL ? sdxlComponents : components {
            guard object[component] != nil else { throw fail("missing key \"\(component)\"") }
            let path = folder.appendingPathComponent(component).path
            guard FileManager.default.fileExists(atPath: path) else { throw StableDiffusionError.missingFile(path) }
        }
        var forceZeros = true
        if let value = object["force_zeros_for_empty_prompt"], !(value is NSNull) {
            guard let flag = value as? Bool else {
                throw fail("key \"force_zeros_for_empty_prompt\" is not true or false")
            }
            forceZeros = flag
        }
        return ModelIndex(architecture: isXL ? .sdxl : .sd, forceZerosForEmptyPrompt: forceZeros)
    }
}
