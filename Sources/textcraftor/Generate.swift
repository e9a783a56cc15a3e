import ArgumentParser
import Foundation
import StableDiffusion
import Torch

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images with a Stable Diffusion folder, reproducibly (same seed, same images as diffusers).",
        discussion: """
            Writes OUT/0000.png, OUT/0001.png, ... in prompt order (each prompt's images together), OUT/metadata.json \
            with every setting including the seed, and with --save-latents OUT/latents.safetensors (init_latents, \
            latents before the VAE, prompt_embeds, negative_prompt_embeds; float32).

            Controllable generation (TextCraftor): --text-encoder DIR conditions on a fine-tuned text encoder (a folder \
            with config.json and model.safetensors, as training writes OUT/text_encoder/) instead of the model's; \
            --blend W interpolates W x fine-tuned + (1 - W) x original embeddings; --mix DIR=W,... sums several \
            encoders' embeddings, the model's own named `original` (e.g. original=0.1,aes/=0.7,pick/=0.1,hps/=0.1); \
            --finetuned-steps N uses those embeddings for the last N UNet calls only and the original encoder's before \
            (the authors: 15 of 25). Both the prompts' and the negative (or empty) prompts' embeddings are mixed. With \
            --save-latents and --finetuned-steps below the total, the original encoder's embeddings are saved too \
            (original_prompt_embeds, original_negative_prompt_embeds).
            """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @OptionGroup var dtypeOptions: DTypeOptions

    @Option(name: .customLong("prompt"), help: "A prompt (repeat for several).")
    var prompts: [String] = []

    @Option(help: "A text file with one prompt per line.", completion: .file())
    var promptsFile: String?

    @Option(name: .customLong("negative-prompt"), help: "A negative prompt: one for all prompts, or one per prompt.")
    var negativePrompts: [String] = []

    @Option(help: "Denoising steps.") var steps = 25
    @Option(help: "Classifier-free guidance scale (1 or less: no guidance).") var guidance = 7.5
    @Option(help: "Seed of the initial noise (default: a random one, printed).") var seed: UInt64?
    @Option(help: "Scheduler: the model's own, or ddim, euler, dpm, pndm.") var scheduler: String?
    @Option(help: "Image height in pixels (default: the model's).") var height: Int?
    @Option(help: "Image width in pixels (default: the model's).") var width: Int?
    @Option(help: "Images for each prompt.") var imagesPerPrompt = 1
    @Option(help: "DDIM eta (0: deterministic).") var eta = 0.0
    @Option(help: "Output folder.", completion: .directory) var out: String
    @Flag(help: "Also write latents.safetensors.") var saveLatents = false

    @Option(help: "A fine-tuned text encoder folder (config.json + model.safetensors) used instead of the model's.",
            completion: .directory)
    var textEncoder: String?
    @Option(help: ArgumentHelp(
        "With --text-encoder: W x fine-tuned + (1 - W) x original embeddings (default 1).",
        discussion: "0 is the original encoder, 1 the fine-tuned one; above 1 extrapolates past the fine-tuned encoder (more of its change, at the risk of artefacts). Must not be negative.",
        valueName: "W"))
    var blend: String?
    @Option(help: ArgumentHelp(
        "Style mixing: DIR=W,DIR=W,... summed as W x embeddings; the model's own encoder is named original.",
        discussion: "Weights are used as given (a warning when they do not sum to 1). Not with --text-encoder or --blend. Repeatable.",
        valueName: "DIR=W,..."))
    var mix: [String] = []
    @Option(help: ArgumentHelp(
        "Condition only the last N UNet calls on the fine-tuned/blended/mixed embeddings, the ones before on the original encoder (default: all).",
        valueName: "N"))
    var finetunedSteps: Int?

    func validate() throws {
        guard modelOptions.model != nil else { throw CommandError("give --model (a diffusers folder)") }
    }

    func run() throws {
        var allPrompts = prompts
        if let promptsFile {
            guard let text = try? String(contentsOfFile: promptsFile, encoding: .utf8) else {
                throw CommandError("\(promptsFile): cannot read the prompts file")
            }
            allPrompts += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        var request = GenerationRequest(prompts: allPrompts)
        request.negativePrompts = negativePrompts.isEmpty ? nil : negativePrompts
        request.steps = steps
        request.guidanceScale = guidance
        request.seed = seed ?? UInt64.random(in: 0..<(1 << 32))
        request.height = height
        request.width = width
        request.imagesPerPrompt = imagesPerPrompt
        request.eta = eta

        let recipe = try EncoderRecipe(textEncoder: textEncoder, blend: blend, mix: mix, finetunedSteps: finetunedSteps)

        let model = modelOptions.model!
        let pipeline = try StableDiffusionPipeline.load(
            folder: URL(fileURLWithPath: model), dtype: dtypeOptions.dtype.dtype, device: try deviceOptions.opened(),
            variant: modelOptions.variant)
        let sampler = try pipeline.makeScheduler(scheduler)
        try pipeline.validate(request)  // before anything is written
        let unetCalls = try pipeline.unetCalls(request, scheduler: sampler)
        let encoderMix = try recipe?.load(into: pipeline, variant: modelOptions.variant, unetCalls: unetCalls)
        let outURL = URL(fileURLWithPath: out)
        try FileManager.default.createDirectory(at: outURL, withIntermediateDirectories: true)
        if seed == nil { FileHandle.standardError.write(Data("seed: \(request.seed)\n".utf8)) }

        var bar: ProgressBar?  // the total is the scheduler's UNet calls, which can differ from --steps (PNDM)
        let result = try pipeline.generate(request, mix: encoderMix, scheduler: sampler) { done, total in
            bar = bar ?? ProgressBar("generate", total: total)
            bar?.update(done)
        }
        for (i, words) in result.truncatedWords.enumerated() {
            if let words { warn("prompt \(i + 1) is longer than \(pipeline.tokenizer.maxLength) tokens; dropped: \(words)") }
        }
        for i in 0..<result.images.size(0) {
            try PNG.write(result.images[i], to: outURL.appendingPathComponent(String(format: "%04d.png", i)))
        }
        if saveLatents {
            var tensors = ["init_latents": result.initLatents, "latents": result.latents, "prompt_embeds": result.promptEmbeds]
            tensors["negative_prompt_embeds"] = result.negativePromptEmbeds
            if let start = result.mixStart, start > 0 {
                tensors["original_prompt_embeds"] = result.originalPromptEmbeds
                tensors["original_negative_prompt_embeds"] = result.originalNegativePromptEmbeds
            }
            try Tensor.save(tensors.mapValues { $0.to(dtype: .float32, device: .cpu) }, to: outURL.appendingPathComponent("latents.safetensors"))
        }
        var metadata: [String: Any] = [
            "model": model, "prompts": request.prompts, "negative_prompts": request.negativePrompts ?? [],
            "steps": steps, "guidance_scale": guidance, "seed": request.seed, "scheduler": scheduler ?? "model default",
            "scheduler_class": "\(type(of: sampler))", "height": result.images.size(1), "width": result.images.size(2),
            "images_per_prompt": imagesPerPrompt, "eta": eta, "dtype": dtypeOptions.dtype.rawValue, "device": deviceOptions.device ?? "cpu",
            "variant": modelOptions.variant ?? "", "images": (0..<result.images.size(0)).map { String(format: "%04d.png", $0) },
            "unet_calls": unetCalls,
        ]
        metadata.merge(recipe?.metadata(unetCalls: unetCalls) ?? EncoderRecipe.noMetadata) { $1 }
        let json = try JSONSerialization.data(withJSONObject: metadata, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try json.write(to: outURL.appendingPathComponent("metadata.json"), options: .atomic)
        print("wrote \(result.images.size(0)) images to \(out)")
    }
}
