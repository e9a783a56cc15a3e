import ArgumentParser
import Foundation
import TextCraftor
import Torch

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images with a Stable Diffusion folder, reproducibly (same seed, same images as diffusers).",
        discussion: """
            Writes OUT/0000.png, OUT/0001.png, ... in prompt order (each prompt's images together), OUT/metadata.json \
            with every setting including the seed, and with --save-latents OUT/latents.safetensors (init_latents, \
            latents before the VAE, prompt_embeds, negative_prompt_embeds, and for SDXL pooled_prompt_embeds and \
            negative_pooled_prompt_embeds; float32).

            SDXL folders (StableDiffusionXLPipeline) generate as diffusers does: both text encoders, --prompt-2 and \
            --negative-prompt-2 for the second, the size conditioning with --crop, and without --negative-prompt \
            zeros for the unconditional half (force_zeros_for_empty_prompt). Refiners are not supported.

            Controllable generation (TextCraftor): --text-encoder DIR conditions on a fine-tuned text encoder (a folder \
            with config.json and model.safetensors, as training writes OUT/text_encoder/, or a bare state dict in one .pth, \
            .pt, .bin or .safetensors file such as the authors' released tc_text_e_0_iter_10000.pth, read without \
            running code, module. and text_model. prefixes accepted, in the model's encoder's config) instead of the model's; \
            --blend W interpolates W x fine-tuned + (1 - W) x original embeddings; --mix DIR=W,... sums several \
            encoders' embeddings, the model's own named `original` (e.g. original=0.1,aes/=0.7,pick/=0.1,hps/=0.1); \
            --finetuned-steps N uses those embeddings for the last N UNet calls only and the original encoder's before \
            (the authors: 15 of 25). Both the prompts' and the negative (or empty) prompts' embeddings are mixed. With \
            --save-latents and --finetuned-steps below the total, the original encoder's embeddings are saved too \
            (original_prompt_embeds, original_negative_prompt_embeds).

            On SDXL, --text-encoder takes a training run's folder (its text_encoder/ and/or text_encoder_2/ replace \
            the model's for every step) or one encoder's folder (a fine-tuned SD 1.x encoder stands in for SDXL's \
            text_encoder). --blend, --mix and --finetuned-steps work there as on SD 1.x/2.x, per place: a run that \
            trained one encoder keeps the model's other, and the hidden states and pooled text embeds are both mixed.

            Textual-inversion tokens: --embedding FILE[:TOKEN] (repeatable) adds a token from diffusers' \
            learned_embeds.safetensors, A1111's .pt or .safetensors, or SDXL's clip_l/clip_g file (what `train \
            --adapter token` writes to OUT/token/); prompts that name the token use it, with any encoder above.
            """)

    @OptionGroup var options: InferenceOptions
    @OptionGroup(title: "Generation") var flags: GenerateFlags

    func run() throws {
        let generation = try speakingFlags {
            try ImageGeneration(config: options.configuration(flags)) { key, message in warn("--\(key.replacingOccurrences(of: "_", with: "-")) \(message)") }
        }
        sayModelNotes(generation.modelNotes)
        if generation.config.seed == nil { FileHandle.standardError.write(Data("seed: \(generation.request.seed)\n".utf8)) }
        var bar: ProgressBar?  // the total is the scheduler's UNet calls, which can differ from --steps (PNDM)
        let output = try generation.run { done, total in
            bar = bar ?? ProgressBar("generate", total: total)
            bar?.update(done)
        }
        for (i, words) in output.truncatedWords.enumerated() {
            if let words { warn("prompt \(i + 1) is longer than \(generation.maxPromptTokens) tokens; dropped: \(excerpt(words, limit: 200))") }
        }
        for (i, words) in output.truncatedWords2.enumerated() {
            if let words { warn("--prompt-2 of prompt \(i + 1) is longer than \(generation.maxPromptTokens) tokens; dropped: \(excerpt(words, limit: 200))") }
        }
        print("wrote \(output.images) images to \(generation.config.out!)")
    }
}

/// The flags of `generate`, each named after its `GenerationConfig` key; nil or empty: not given.
struct GenerateFlags: ParsableArguments {
    @Option(help: "Weights dtype: float32 (default), float16 or bfloat16.") var dtype: FloatType?
    @Option(help: "A prompt (repeat for several).") var prompt: [String] = []
    @Option(help: "A text file with one prompt per line.", completion: .file()) var promptsFile: String?
    @Option(help: "A negative prompt: one for all prompts, or one per prompt.") var negativePrompt: [String] = []
    @Option(name: .customLong("prompt-2"), help: ArgumentHelp(
        "SDXL: the text for the second text encoder (diffusers' prompt_2): one for all prompts, or one per prompt.",
        discussion: "Default: the prompt itself."))
    var prompt2: [String] = []
    @Option(name: .customLong("negative-prompt-2"), help: "SDXL: diffusers' negative_prompt_2 (default: the negative prompt).")
    var negativePrompt2: [String] = []
    @Option(help: ArgumentHelp(
        "Condition on the text encoder's layer N before the one the model uses (diffusers' clip_skip; default 0).",
        discussion: "SD 1.x/2.x: hidden_states[-(N+1)] through the final layer norm; SDXL: hidden_states[-(N+2)] of both encoders. As in diffusers, the negative prompts keep the model's own layer.",
        valueName: "N"))
    var clipSkip: Int?
    @Option(help: ArgumentHelp(
        "SDXL: the crop's top-left in the size conditioning, TOP,LEFT in pixels (diffusers' crops_coords_top_left; default 0,0).",
        valueName: "TOP,LEFT"), transform: CropCoordinates.parse)
    var crop: CropCoordinates?
    @Option(help: "Denoising steps (default 25).") var steps: Int?
    @Option(help: "Classifier-free guidance scale (default 7.5; 1 or less: no guidance).") var guidance: Double?
    @Option(help: "Seed of the initial noise (default: a random one, printed).") var seed: UInt64?
    @Option(help: ArgumentHelp(
        "Scheduler: the model's own, or ddim, euler, euler-ancestral, dpm, dpm-sde, pndm.",
        discussion: schedulerNames))
    var scheduler: String?
    @Flag(help: ArgumentHelp("Karras sigmas (use_karras_sigmas) for euler, dpm and dpm-sde.", discussion: karrasDiscussion))
    var karras = false
    @Option(help: "Image height in pixels (default: the model's).") var height: Int?
    @Option(help: "Image width in pixels (default: the model's).") var width: Int?
    @Option(help: "Images for each prompt (default 1).") var imagesPerPrompt: Int?
    @Option(help: "DDIM eta (default 0: deterministic).") var eta: Double?
    @Option(help: "Output folder.", completion: .directory) var out: String?
    @Flag(help: "Also write latents.safetensors.") var saveLatents = false

    @Option(help: "A fine-tuned text encoder folder (config.json + model.safetensors), or its bare state dict (.pth/.pt/.bin/.safetensors), used instead of the model's; on SDXL also a run folder with text_encoder/ and/or text_encoder_2/.",
            completion: .file())
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
    @Option(help: ArgumentHelp(
        "A LoRA merged into the model, times SCALE (default 1). Repeatable: several add up.",
        discussion: "kohya (lora_te_, lora_te1_/lora_te2_, lora_unet_), diffusers/PEFT (text_encoder., text_encoder_2., unet. with lora_A/lora_B) or older diffusers (lora_linear_layer) names; text encoder and UNet parts (linear and conv layers) are merged into the weights (scale x alpha/rank x up x down) before --text-encoder, --blend or --mix apply. A key that matches nothing, or a LoRA for another architecture, is an error.",
        valueName: "FILE[:SCALE]"))
    var lora: [String] = []
}
