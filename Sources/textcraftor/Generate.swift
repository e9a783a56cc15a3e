import ArgumentParser
import Foundation
import StableDiffusion
import Torch

/// Options shared by the commands that load a Stable Diffusion folder.
struct ModelOptions: ParsableArguments {
    @Option(help: "A diffusers model folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/).",
            completion: .directory)
    var model: String

    @Option(help: "Weights dtype: float32, float16 or bfloat16.")
    var dtype = "float32"

    @Option(help: "cpu, cuda or cuda:N.")
    var device = "cpu"

    @Option(help: "Weights variant to prefer, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).")
    var variant: String?

    func resolved() throws -> (DType, Device) {
        guard let dtype = DType(name: dtype), dtype.isFloatingPoint else {
            throw CommandError("--dtype \(self.dtype): expected float32, float16 or bfloat16")
        }
        guard let device = Device(device) else { throw CommandError("--device \(self.device): expected cpu, cuda or cuda:N") }
        try device.ensureAvailable()
        return (dtype, device)
    }

    func load() throws -> StableDiffusionPipeline {
        let (dtype, device) = try resolved()
        return try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: model), dtype: dtype, device: device, variant: variant)
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images with a Stable Diffusion folder, reproducibly (same seed, same images as diffusers).",
        discussion: """
            Writes OUT/0000.png, OUT/0001.png, ... in prompt order (each prompt's images together), OUT/metadata.json \
            with every setting including the seed, and with --save-latents OUT/latents.safetensors (init_latents, \
            latents before the VAE, prompt_embeds, negative_prompt_embeds; float32).
            """)

    @OptionGroup var modelOptions: ModelOptions

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

        let pipeline = try modelOptions.load()
        let sampler = try pipeline.makeScheduler(scheduler)
        try pipeline.validate(request)  // before anything is written
        let outURL = URL(fileURLWithPath: out)
        try FileManager.default.createDirectory(at: outURL, withIntermediateDirectories: true)
        if seed == nil { FileHandle.standardError.write(Data("seed: \(request.seed)\n".utf8)) }

        var bar: ProgressBar?  // the total is the scheduler's UNet calls, which can differ from --steps (PNDM)
        let result = try pipeline.generate(request, scheduler: sampler) { done, total in
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
            try Tensor.save(tensors.mapValues { $0.to(dtype: .float32, device: .cpu) }, to: outURL.appendingPathComponent("latents.safetensors"))
        }
        let metadata: [String: Any] = [
            "model": modelOptions.model, "prompts": request.prompts, "negative_prompts": request.negativePrompts ?? [],
            "steps": steps, "guidance_scale": guidance, "seed": request.seed, "scheduler": scheduler ?? "model default",
            "scheduler_class": "\(type(of: sampler))", "height": result.images.size(1), "width": result.images.size(2),
            "images_per_prompt": imagesPerPrompt, "eta": eta, "dtype": modelOptions.dtype, "device": modelOptions.device,
            "variant": modelOptions.variant ?? "", "images": (0..<result.images.size(0)).map { String(format: "%04d.png", $0) },
        ]
        let json = try JSONSerialization.data(withJSONObject: metadata, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try json.write(to: outURL.appendingPathComponent("metadata.json"), options: .atomic)
        print("wrote \(result.images.size(0)) images to \(out)")
    }
}
