import ArgumentParser
import Foundation
import StableDiffusion

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a single-file checkpoint (SD 1.x, 2.x, SDXL; original layout) into a diffusers folder.",
        discussion: """
            The file is read as `--model FILE` reads it (the layout from its keys, .ckpt without running code, the \
            UNet's model_ema.* copy when present unless --no-ema); --model-config, a diffusers folder of the same \
            architecture, gives the configs, tokenizers and scheduler, which are copied. The weights keep the file's \
            dtype and values. The folder is written under a temporary name and renamed into place.
            """)

    @Argument(help: "The single-file checkpoint (.safetensors, .ckpt, .pt, .pth, .bin).", completion: .file())
    var file: String

    @Option(help: ArgumentHelp("A diffusers folder of the same architecture (configs, tokenizers, scheduler).", valueName: "DIR"),
            completion: .directory)
    var modelConfig: String

    @Flag(help: "The UNet's own weights rather than the model_ema.* copy.")
    var noEma = false

    @Option(help: "The diffusers folder to write (must not exist).", completion: .directory)
    var out: String

    func run() throws {
        let checkpoint = try SingleFileCheckpoint(url: URL(fileURLWithPath: file), useEMA: !noEma)
        try checkpoint.writeDiffusersFolder(configFolder: URL(fileURLWithPath: modelConfig), to: URL(fileURLWithPath: out))
        print("\(out): \(checkpoint.layout.rawValue) as a diffusers folder\(checkpoint.usesEMA ? " (the UNet's EMA weights)" : "")")
    }
}
