import Foundation
import StableDiffusion
import Torch

/// Everything an image generation is run with, keyed as the `generate` flags; `OUT/metadata.json` records it with
/// what it resolved to (the seed drawn, the scheduler's class, the UNet calls).
public struct GenerationConfig: InferenceConfiguration {
    public var model: String?
    /// With a single-file `model`: a diffusers folder of its architecture (configs, tokenizers, scheduler).
    public var modelConfig: String?
    /// With a single-file `model`: its UNet's weights rather than its `model_ema.*` copy.
    public var noEma = false
    /// The scheduler's prediction type, where it is not the model's (`ModelSource`).
    public var predictionType: String?
    /// Weights variant to prefer, e.g. fp16.
    public var variant: String?
    public var dtype = FloatType.float32
    public var device = "cpu"
    public var prompt: [String] = []
    /// A text file with one prompt per line (after `prompt`'s).
    public var promptsFile: String?
    /// One negative prompt for all prompts, or one per prompt.
    public var negativePrompt: [String] = []
    /// SDXL: the texts for the second text encoder (diffusers' `prompt_2`), one for all prompts or one per prompt
    /// (empty: the prompts themselves).
    public var prompt2: [String] = []
    /// SDXL: `negative_prompt_2` (empty: the negative prompts).
    public var negativePrompt2: [String] = []
    /// diffusers' `clip_skip`: condition on the text encoder's layer N before the one the model uses (the prompts
    /// only, as diffusers).
    public var clipSkip: Int?
    /// SDXL: the crop's top-left in the size conditioning (diffusers' `crops_coords_top_left`; nil: 0,0).
    public var crop: CropCoordinates?
    public var steps = 25
    /// Classifier-free guidance (1 or less: no guidance).
    public var guidance = 7.5
    /// nil: a random seed, printed and recorded.
    public var seed: UInt64?
    /// The model's own (nil), or a `SchedulerName`: ddim, euler, euler-ancestral, dpm, dpm-sde, pndm.
    public var scheduler: String?
    /// Karras sigmas (`use_karras_sigmas`), for the schedulers that have them (euler, dpm, dpm-sde); false: as the
    /// model's scheduler config says.
    public var karras = false
    public var height: Int?
    public var width: Int?
    public var imagesPerPrompt = 1
    /// DDIM's eta (0: deterministic).
    public var eta = 0.0
    public var out: String?
    public var saveLatents = false
    // Which encoder conditions the UNet (`EncoderRecipe`)
    public var textEncoder: String?
    public var blend: String?
    public var mix: [String] = []
    public var finetunedSteps: Int?
    /// Textual-inversion embeddings added to the tokenizers and encoders (`FILE[:TOKEN]`).
    public var embedding: [String] = []
    /// LoRA files merged into the model (`FILE[:SCALE]`, `LoRASpec`), before the encoder recipe.
    public var lora: [String] = []

    public init() {}

    public static let fields: [ConfigField<Self>] = inferenceFields + [
        .strings("prompt", \.prompt),
        .path("prompts_file", \.promptsFile),
        .strings("negative_prompt", \.negativePrompt),
        .strings("prompt_2", \.prompt2),
        .strings("negative_prompt_2", \.negativePrompt2),
        .integer("clip_skip", \.clipSkip, .between(0, 1024)),
        ConfigField("crop", \.crop, read: { try $1.crop($0, $2) }, problem: \.problem),
        .integer("steps", \.steps, .between(1, 10_000)),
        .number("guidance", \.guidance, .nonNegative),
        ConfigField("seed", \.seed, read: { UInt64(try $1.integer($0, $2, .nonNegative)) }),
        .string("scheduler", \.scheduler),
        .flag("karras", \.karras),
        .integer("height", \.height, .between(1, 8192)),
        .integer("width", \.width, .between(1, 8192)),
        .integer("images_per_prompt", \.imagesPerPrompt, .between(1, 1024)),
        .number("eta", \.eta, .nonNegative),
        .path("out", \.out),
        .flag("save_latents", \.saveLatents),
        .path("text_encoder", \.textEncoder),
        .string("blend", \.blend),
        .strings("mix", \.mix),
        ConfigField("finetuned_steps", \.finetunedSteps, read: { try $1.integer($0, $2, .any) }),
        .strings("lora", \.lora),
    ]

    public func validateRelations() throws {
        if model == nil { throw TextCraftorError.invalidSetting(key: "model", message: "no model folder given") }
        if out == nil { throw TextCraftorError.invalidSetting(key: "out", message: "no output folder given") }
        _ = try EncoderRecipe(textEncoder: textEncoder, blend: blend, mix: mix, finetunedSteps: finetunedSteps)
        _ = try loraSpecs(lora)
    }
}

/// What `ImageGeneration.run` made.
public struct GenerationOutput {
    public let images: Int
    /// Per prompt, the words dropped past the tokenizer's length (nil: none).
    public let truncatedWords: [String?]
    /// SDXL with `prompt_2`: the same for each prompt's second text in the second tokenizer.
    public let truncatedWords2: [String?]
}

/// `generate` as a library: the model, scheduler and encoder recipe a `GenerationConfig` names, checked and loaded
/// in `init` (nothing written yet); `run` writes OUT/0000.png ..., metadata.json and with `save_latents`
/// latents.safetensors.
public final class ImageGeneration {
    public let config: GenerationConfig
    public let request: GenerationRequest
    let pipeline: StableDiffusionPipeline
    let scheduler: any Scheduler
    let recipe: EncoderRecipe?
    let mix: EncoderMix?
    let unetCalls: Int
    /// How a single-file model was read (`ModelSource.notes`), for the output.
    public let modelNotes: [String]

    /// `warn(key, message)`: something to tell the user that does not stop the run.
    public init(config: GenerationConfig, warn: (String, String) -> Void = { _, _ in }) throws {
        try config.validate()
        var prompts = config.prompt
        if let file = config.promptsFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw TextCraftorError.invalidSetting(key: "prompts_file", message: "\(file): cannot read the prompts file")
            }
            prompts += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        var request = GenerationRequest(prompts: prompts)
        request.negativePrompts = config.negativePrompt.isEmpty ? nil : config.negativePrompt
        request.steps = config.steps
        request.guidanceScale = config.guidance
        request.seed = config.seed ?? UInt64.random(in: 0..<(1 << 32))
        request.height = config.height
        request.width = config.width
        request.imagesPerPrompt = config.imagesPerPrompt
        request.eta = config.eta
        request.prompts2 = config.prompt2.isEmpty ? nil : config.prompt2
        request.negativePrompts2 = config.negativePrompt2.isEmpty ? nil : config.negativePrompt2
        request.clipSkip = config.clipSkip
        request.cropTopLeft = config.crop.map { ($0.top, $0.left) }
        self.request = request
        self.config = config
        recipe = try EncoderRecipe(textEncoder: config.textEncoder, blend: config.blend, mix: config.mix, finetunedSteps: config.finetunedSteps)
        let source = try config.modelSource()
        modelNotes = source.notes
        pipeline = try source.load(dtype: config.dtype.dtype, device: try Device.opened(config.device, key: "device"), variant: config.variant)
        try pipeline.applyLoRAs(config.lora)
        try pipeline.loadEmbeddings(config.embedding)
        scheduler = try pipeline.makeScheduler(config.scheduler, karras: config.karras)
        try pipeline.validate(request)
        unetCalls = try pipeline.unetCalls(request, scheduler: scheduler)
        mix = try recipe?.load(into: pipeline, variant: config.variant, unetCalls: unetCalls, warn: warn)
    }

    /// Generates and writes the images; `progress(done, total)` after each UNet call.
    public func run(progress: @escaping (Int, Int) -> Void = { _, _ in }) throws -> GenerationOutput {
        let outURL = URL(fileURLWithPath: config.out!)
        try FileManager.default.createDirectory(at: outURL, withIntermediateDirectories: true)
        let result = try pipeline.generate(request, mix: mix, scheduler: scheduler, progress: progress)
        let count = result.images.size(0)
        for i in 0..<count {
            try PNG.write(result.images[i], to: outURL.appendingPathComponent(String(format: "%04d.png", i)))
        }
        if config.saveLatents {
            var tensors = ["init_latents": result.initLatents, "latents": result.latents, "prompt_embeds": result.promptEmbeds]
            tensors["negative_prompt_embeds"] = result.negativePromptEmbeds
            tensors["pooled_prompt_embeds"] = result.pooledPromptEmbeds
            tensors["negative_pooled_prompt_embeds"] = result.negativePooledPromptEmbeds
            if let start = result.mixStart, start > 0 {
                tensors["original_prompt_embeds"] = result.originalPromptEmbeds
                tensors["original_negative_prompt_embeds"] = result.originalNegativePromptEmbeds
            }
            try Tensor.save(tensors.mapValues { $0.to(dtype: .float32, device: .cpu) }, to: outURL.appendingPathComponent("latents.safetensors"))
        }
        var metadata: [String: Any] = [
            "model": config.model!, "prompts": request.prompts, "negative_prompts": request.negativePrompts ?? [],
            "steps": config.steps, "guidance_scale": config.guidance, "seed": request.seed,
            "scheduler": config.scheduler ?? "model default", "scheduler_class": "\(type(of: scheduler))",
            "karras": config.karras,
            "height": result.images.size(1), "width": result.images.size(2), "images_per_prompt": config.imagesPerPrompt,
            "eta": config.eta, "dtype": config.dtype.rawValue, "device": config.device, "variant": config.variant ?? "",
            "images": (0..<count).map { String(format: "%04d.png", $0) }, "unet_calls": unetCalls,
            "architecture": pipeline.architecture.rawValue, "clip_skip": config.clipSkip ?? NSNull(),
            "loras": try loraSpecs(config.lora).map(\.description),
            "embeddings": config.embedding,
        ]
        if pipeline.architecture == .sdxl {
            let sizes = pipeline.sizeConditioning(request, height: result.images.size(1), width: result.images.size(2))
            metadata["prompts_2"] = request.prompts2 ?? request.prompts
            metadata["negative_prompts_2"] = request.negativePrompts2 ?? request.negativePrompts ?? []
            metadata["add_time_ids"] = sizes.values
            metadata["force_zeros_for_empty_prompt"] = pipeline.forceZerosForEmptyPrompt
        }
        metadata.merge(recipe?.metadata(unetCalls: unetCalls) ?? EncoderRecipe.noMetadata) { $1 }
        let json = try JSONSerialization.data(withJSONObject: metadata, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try json.write(to: outURL.appendingPathComponent("metadata.json"), options: .atomic)
        return GenerationOutput(images: count, truncatedWords: result.truncatedWords, truncatedWords2: result.truncatedWords2)
    }

    /// The tokenizer's length, for messages about truncated prompts.
    public var maxPromptTokens: Int { pipeline.tokenizer.maxLength }
}
