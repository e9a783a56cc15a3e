import ArgumentParser
import Foundation
import StableDiffusion
import TextCraftor

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a whole model with the fine-tuned text encoder(s) in it: one single file for AUTOMATIC1111, ComfyUI and diffusers' from_single_file, or a diffusers folder.",
        discussion: """
            The base is --model (a diffusers folder or a single file). --text-encoder (a run folder, an encoder folder \
            or a bare state dict) replaces the encoder(s) it holds, checked key by key against the base's; each --lora \
            FILE[:SCALE] is merged into the encoders and UNet. Everything else is copied unchanged, tensor for tensor: \
            from a single-file base every key of the file is kept (EMA copies included, unless a LoRA changes the UNet, \
            which then drops the model_ema.* copy so that every loader reads the merged one); from a folder, every \
            component is mapped back to the original layout (SD 1.x: cond_stage_model.transformer.*, SD 2.x: OpenCLIP \
            cond_stage_model.model.* with q/k/v fused into in_proj, SDXL: conditioner.embedders.0/1.*; \
            model.diffusion_model.*, first_stage_model.*). Before anything is written the file's keys are read back \
            through the single-file reader and must give every component's keys and shapes. --dtype float16 halves the \
            file (the fine-tuned weights rounded once). Written under a temporary name and renamed: OUT never holds \
            half a model. Textual-inversion embeddings are not part of a checkpoint in any front end: ship the \
            token's file beside it (A1111 embeddings/, ComfyUI models/embeddings/).

            Examples:
              textcraftor export --model v1-5-pruned-emaonly.safetensors --text-encoder runs/aesthetic --out sd15-tc.safetensors
              textcraftor export --model sdxl-base/ --text-encoder runs/xl --dtype float16 --out sdxl-tc.safetensors
              textcraftor export --model sd15/ --lora runs/lora/lora.safetensors:0.8 --format diffusers --out sd15-tc/
            """)

    @OptionGroup(title: "Model") var model: ModelFlag
    @Option(help: "Fine-tuned text encoder(s): a run folder holding text_encoder/ and/or text_encoder_2/, an encoder folder, or a bare state dict (.pth/.pt/.bin/.safetensors).",
            completion: .file())
    var textEncoder: String?
    @Option(help: ArgumentHelp("A LoRA merged in, times SCALE (default 1). Repeatable: they add up.", valueName: "FILE[:SCALE]"))
    var lora: [String] = []
    @Option(help: ArgumentHelp("Embeddings are not stored in checkpoints: this option only explains that.", valueName: "FILE"))
    var embedding: [String] = []
    @Option(help: "single-file (default: one .safetensors) or diffusers (a folder).") var format: ModelExport.Format = .singleFile
    @Option(help: "float32, float16 or bfloat16: every floating-point tensor's type (default: as the base stores each).")
    var dtype: FloatType?
    @Option(help: "The file (.safetensors) or, with --format diffusers, the folder to write (must not exist).", completion: .file())
    var out: String

    func run() throws {
        if !embedding.isEmpty {
            throw CommandError("--embedding \(embedding[0]): an embedding is not part of a checkpoint (front ends load it beside one: A1111 embeddings/, ComfyUI models/embeddings/, diffusers load_textual_inversion); copy the file next to the model instead")
        }
        _ = try speakingFlags {
            try ModelExport.run(ModelExport.Request(model: model.source(), textEncoder: textEncoder, lora: lora, out: out,
                                                    dtype: dtype?.dtype, format: format)) { print($0) }
        }
    }
}

extension ModelExport.Format: ExpressibleByArgument {}
