import ArgumentParser
import Foundation
import StableDiffusion
import TextCraftor

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bake LoRAs into text encoder folders, or blend or mix whole encoders in weight space.",
        discussion: """
            Starts from the model's text encoder(s), or from --text-encoder (an encoder folder or a run folder), \
            optionally blended with the model's (--blend W: W x fine-tuned + (1 - W) x original, per weight) or \
            replaced by a weighted sum of several (--mix DIR=W,...; the model's own is named original); then adds each \
            --lora FILE[:SCALE] (scale x alpha/rank x up x down per weight; kohya, PEFT or older diffusers names). \
            Writes OUT/text_encoder/ (and on SDXL OUT/text_encoder_2/) as training runs write them, config.json and \
            model.safetensors in float32, and OUT/unet/ when a LoRA changes the UNet: use them with `generate \
            --text-encoder OUT` or swap them into a diffusers folder. A LoRA merged here generates exactly what \
            `generate --lora` does; a weight-space mix differs from generate's --mix, which mixes embeddings.
            """)

    @OptionGroup(title: "Model") var model: ModelFlag
    @Option(help: "Start from this fine-tuned encoder folder, or a run folder holding text_encoder/ and/or text_encoder_2/.",
            completion: .directory)
    var textEncoder: String?
    @Option(help: ArgumentHelp("With --text-encoder: W x fine-tuned + (1 - W) x original, weight by weight.", valueName: "W"))
    var blend: String?
    @Option(help: ArgumentHelp("A weighted sum of encoders, weight by weight: DIR=W,...; the model's own is original. Repeatable.",
                               valueName: "DIR=W,..."))
    var mix: [String] = []
    @Option(help: ArgumentHelp("A LoRA file merged in, times SCALE (default 1). Repeatable: they add up.", valueName: "FILE[:SCALE]"))
    var lora: [String] = []
    @Option(help: "Output folder.", completion: .directory) var out: String

    func run() throws {
        let written = try speakingFlags {
            try EncoderMerge.run(model: model.source(), textEncoder: textEncoder, blend: blend, mix: mix, lora: lora, out: out) { key, message in
                warn("--\(key) \(message)")
            }
        }
        print("wrote \(written.map(\.path).joined(separator: " and "))")
    }
}
