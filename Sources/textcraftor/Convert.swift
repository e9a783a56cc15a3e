import ArgumentParser
import Foundation
import StableDiffusion
import TextCraftor

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a single-file checkpoint (SD 1.x, 2.x, SDXL; original layout) into a diffusers folder, or a diffusers folder into a single file.",
        discussion: """
            A file is read as `--model FILE` reads it (the layout from its keys, .ckpt without running code, the UNet's \
            model_ema.* copy when present unless --no-ema; the published configs of its architecture, built in, or \
            --model-config DIR's), and written as a diffusers folder with those configs, tokenizers and scheduler. A \
            folder is written as one .safetensors in the original layout of its architecture, as `export` writes it. \
            The weights keep their dtype and values (unless --dtype); both directions read back to the same tensors. \
            The output is written under a temporary name and renamed into place.
            """)

    @Argument(help: "A single-file checkpoint (.safetensors, .ckpt, .pt, .pth, .bin) or a diffusers folder.", completion: .file())
    var model: String

    @OptionGroup(title: "Single-file models") var singleFile: SingleFileOptions

    @Option(help: "float32, float16 or bfloat16: every floating-point tensor's type (default: as stored).") var dtype: FloatType?

    @Option(help: "The diffusers folder (from a file) or .safetensors file (from a folder) to write; must not exist.", completion: .file())
    var out: String

    func run() throws {
        try speakingFlags {
            let source = try ModelSource(model: model, modelConfig: singleFile.modelConfig, noEMA: singleFile.noEma,
                                         predictionType: singleFile.predictionType)
            sayModelNotes(source.notes)
            _ = try ModelExport.run(ModelExport.Request(model: source, out: out, dtype: dtype?.dtype,
                                                        format: source.singleFile == nil ? .singleFile : .diffusers)) { print($0) }
        }
    }
}
