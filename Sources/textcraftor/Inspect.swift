import ArgumentParser
import Foundation
import NN
import StableDiffusion
import Torch

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the tensors (name, dtype, shape) of a checkpoint or of a model folder.",
        discussion: """
            Reads .safetensors (memory-mapped, nothing is loaded), torch.save files (.bin, .pt, .pth, .ckpt; the \
            state_dict entry when there is one) and folders: every weights file below a diffusers folder, by component. \
            A LoRA file (kohya, PEFT or older diffusers names) is also summed up: its format, the model it is for (from \
            its metadata, else its names and widths), its ranks and alphas, and the modules it changes per part \
            (text_encoder, text_encoder_2, unet) and kind (q_proj, fc1, to_q, conv 3x3, ...).

            A textual-inversion embedding (diffusers' learned_embeds, A1111's .pt or .safetensors, SDXL's clip_l/clip_g) \
            is also described: its format, the token prompts use, its vectors and width, and the model it fits \
            (clip_l/clip_g: SDXL; 768 wide: SD 1.x; 1024 wide: SD 2.x).

            A whole single-file model (SD 1.x, SD 2.x, SDXL in the original layout) is described as --model reads it: \
            its layout, whether it holds a model_ema.* copy, the UNet's input channels (9: inpainting) and the prediction \
            type with the reason (the usual SD 2.x test of its weights, or a v_pred key).
            """)

    @Argument(help: "A weights file or a folder.", completion: .file())
    var path: String

    @Flag(help: "One JSON object per tensor instead of a table.")
    var json = false

    /// How many characters of a tensor name the table shows.
    static let nameLimit = 200

    func run() throws {
        let url = URL(fileURLWithPath: path)
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else {
            throw CommandError("\(path): no such file or folder")
        }
        let files = isFolder.boolValue ? try weightFiles(below: url) : [url]
        guard !files.isEmpty else { throw CommandError("\(path): no weights files (.safetensors, .bin, .pt, .pth, .ckpt) below it") }
        var total = 0
        for file in files {
            var source: any WeightSource
            var embedding: TokenEmbedding?
            do {
                source = try Weights.open(file)
            } catch {
                // A1111's .pt is not a flat state dict (string_to_param holds the tensor): read as an embedding.
                guard let found = try? TokenEmbedding.read(file) else { throw error }
                embedding = found
                source = TensorDictionary(["string_to_param.*": found.first], origin: file.path)
            }
            let rows = source.keys.map { key -> (String, DType, [Int]) in
                let info = source.info(key)!
                return (key, info.dtype, info.shape)
            }
            // Saturating: the shapes come from the file, and a zero-size tensor may have huge other dimensions.
            let count = rows.reduce(0) { saturatingSum($0, elementCount($1.2)) }
            total = saturatingSum(total, count)
            // A file of at most a few tensors may be an embedding (probing a large checkpoint would read it all).
            if embedding == nil, rows.count <= 6 { embedding = try? TokenEmbedding.read(file) }
            if json {
                if let embedding {
                    let object: [String: Any] = [
                        "file": file.path, "embedding": ["format": embedding.format.rawValue, "token": embedding.token,
                        "vectors": embedding.vectors, "widths": [embedding.first.size(1)] + (embedding.second.map { [$0.size(1)] } ?? []),
                        "fits": embedding.fits]]
                    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
                    print(String(decoding: data, as: UTF8.self))
                }
                if let checkpoint = try? SingleFileCheckpoint(source: source, url: file) {
                    let hint = checkpoint.predictionTypeHint()
                    let object: [String: Any] = ["file": file.path, "model": [
                        "layout": checkpoint.layout.rawValue, "ema": checkpoint.usesEMA, "prediction_type": hint.type,
                        "prediction_type_reason": hint.reason, "unet_in_channels": checkpoint.unetInChannels ?? 0]]
                    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
                    print(String(decoding: data, as: UTF8.self))
                }
                for (name, dtype, shape) in rows {
                    let object: [String: Any] = ["file": file.path, "name": name, "dtype": dtype.description, "shape": shape]
                    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
                    print(String(decoding: data, as: UTF8.self))
                }
                continue
            }
            print("\(file.path): \(rows.count) tensors, \(formatCount(count)) values")
            if file.pathExtension == "safetensors", let lora = try? LoRAFile(file) { lora.summary.forEach { print("  " + $0) } }
            if let model = singleFileSummary(source, file) { print("  " + model) }
            // Names are the file's bytes: escaped (no terminal escape codes reach the terminal) and cut when very
            // long; very long shapes are abridged. The JSON form keeps them exact (JSON escapes control characters).
            printTable(["name", "dtype", "shape"], rows.map {
                [excerpt($0.0, limit: Self.nameLimit), $0.1.description, excerpt(shape: $0.2, limit: 16)]
            })
            if let embedding {
                print("textual-inversion embedding (\(embedding.format.rawValue)): token \(excerpt(embedding.token, limit: 80)), "
                      + "\(embedding.vectors) vector\(embedding.vectors == 1 ? "" : "s"), fits \(embedding.fits)")
            }
            print()
        }
        if !json && files.count > 1 { print("total: \(formatCount(total)) values in \(files.count) files") }
    }

    /// Weights files in a folder and its component subfolders, sorted by path.
    func weightFiles(below folder: URL) throws -> [URL] {
        let extensions: Set<String> = ["safetensors", "bin", "pt", "pth", "ckpt"]
        guard let walker = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: nil) else { return [] }
        return walker.compactMap { $0 as? URL }.filter { extensions.contains($0.pathExtension) }.sorted { $0.path < $1.path }
    }
}

/// A shape's element count, Int.max when it does not fit.
func elementCount(_ shape: [Int]) -> Int {
    if shape.contains(0) { return 0 }
    var product = 1
    for dimension in shape {
        let (next, overflow) = product.multipliedReportingOverflow(by: dimension)
        if overflow { return .max }
        product = next
    }
    return product
}

func saturatingSum(_ a: Int, _ b: Int) -> Int {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? .max : sum
}

/// 123_456_789 -> "123.5M".
func formatCount(_ n: Int) -> String {
    switch n {
    case 1_000_000_000...: String(format: "%.2fB", Double(n) / 1e9)
    case 1_000_000...: String(format: "%.1fM", Double(n) / 1e6)
    case 1_000...: String(format: "%.1fK", Double(n) / 1e3)
    default: "\(n)"
    }
}

/// One line on a whole single-file model (`SingleFileCheckpoint`): its layout, EMA copy, UNet inputs and prediction
/// type with the reason; nil for any other file.
func singleFileSummary(_ source: any WeightSource, _ file: URL) -> String? {
    guard let checkpoint = try? SingleFileCheckpoint(source: source, url: file) else { return nil }
    let hint = checkpoint.predictionTypeHint()
    return "\(checkpoint.layout.rawValue) single-file model: UNet with \(checkpoint.unetInChannels ?? 0) input channels"
        + (checkpoint.usesEMA ? ", a model_ema.* copy (used by default; --no-ema for the other)" : "")
        + "; prediction type \(hint.type) (\(hint.reason)); load it with --model \(file.lastPathComponent)"
}
