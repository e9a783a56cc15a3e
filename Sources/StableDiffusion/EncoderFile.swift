import Foundation
import NN
import Torch

/// One text encoder's bare state dict in a single file, as the TextCraftor authors released theirs
/// (`tc_text_e_0_iter_10000.pth`: `torch.save(text_encoder.state_dict())` of a DistributedDataParallel-wrapped
/// `CLIPTextModel`, keys `module.text_model.encoder.layers.0.self_attn.q_proj.weight`). `.pth`/`.pt`/`.bin` are
/// read with the safe unpickler (no code runs), `.safetensors` memory-mapped. The keys are normalised to
/// transformers' `CLIPTextModel` names: leading `module.` dropped, `text_model.` added where missing (except
/// `text_projection.weight`, SDXL's second encoder's), the `embeddings.position_ids` buffer of older transformers
/// skipped (positions are recomputed). There is no config in such a file: the model's own encoder's is used, and
/// the file is loaded strictly against it (a missing or extra key, or a shape, is an error naming the file and the key).
public enum EncoderFile {
    public static let extensions: Set<String> = ["pth", "pt", "bin", "safetensors"]

    /// Whether `url` is an existing file rather than a folder (an encoder folder or a run folder).
    public static func isFile(_ url: URL) -> Bool {
        var isFolder: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) && !isFolder.boolValue
    }

    /// The file's tensors under transformers' names, read on demand.
    public static func open(_ url: URL) throws -> RenamedWeights {
        guard extensions.contains(url.pathExtension) else {
            throw StableDiffusionError.invalidArgument(
                "\(url.path): a text encoder file is a .pth, .pt, .bin or .safetensors state dict (or give a folder)")
        }
        let source = try Weights.open(url)
        var names: [String: String] = [:]
        for key in source.keys {
            var name = key
            while name.hasPrefix("module.") { name.removeFirst("module.".count) }
            if name != "text_projection.weight", !name.hasPrefix("text_model.") { name = "text_model." + name }
            if name == "text_model.embeddings.position_ids" { continue }
            if let other = names[name] {
                throw StableDiffusionError.invalidArgument(
                    "\(url.path): keys '\(excerpt(other))' and '\(excerpt(key))' both name \(excerpt(name))")
            }
            names[name] = key
        }
        guard names["text_model.embeddings.token_embedding.weight"] != nil,
            names.keys.contains(where: { $0.hasPrefix("text_model.encoder.layers.") })
        else {
            let some = source.keys.sorted().prefix(3).map { "'\(excerpt($0, limit: 80))'" }.joined(separator: ", ")
            throw StableDiffusionError.invalidArgument(
                "\(url.path): not a CLIP text model state dict (no embeddings.token_embedding.weight and encoder.layers.*; "
                    + "\(source.keys.count) keys\(some.isEmpty ? "" : ", e.g. \(some)"))")
        }
        return RenamedWeights(source, names: names)
    }

    /// Whether the state dict holds `text_projection.weight`: SDXL's second encoder (`CLIPTextModelWithProjection`).
    public static func hasProjection(_ weights: any WeightSource) -> Bool { weights.info("text_projection.weight") != nil }
}

extension StableDiffusionPipeline {
    /// What a file's encoder errors name as its config: there is none in the file, the model's own is used.
    static let ownEncoderConfig = "the model's text_encoder/config.json"

    /// A fresh copy of the first text encoder (`text_encoder`) from a single state-dict file (`EncoderFile`), in this
    /// pipeline's encoder's config, dtype and device.
    public func loadTextEncoder(file: URL) throws -> CLIPTextModel {
        let weights = try EncoderFile.open(file)
        if EncoderFile.hasProjection(weights) {
            throw StableDiffusionError.invalidArgument(
                "\(file.path): holds text_projection.weight, SDXL's second text encoder (text_encoder_2), not a text_encoder")
        }
        return try VarBuilder.load(weights, dtype: textEncoder.parameters.first?.dtype, device: device) {
            try CLIPTextModel($0, config: textEncoder.config, configFile: Self.ownEncoderConfig)
        }
    }

    /// The same for SDXL's `text_encoder_2` (a state dict with `text_projection.weight`).
    public func loadTextEncoder2(file: URL) throws -> CLIPTextModelWithProjection {
        guard let own = textEncoder2 else {
            throw StableDiffusionError.invalidArgument("\(file.path): a second text encoder (text_encoder_2) is for SDXL models")
        }
        let weights = try EncoderFile.open(file)
        return try VarBuilder.load(weights, dtype: own.parameters.first?.dtype, device: device) {
            try CLIPTextModelWithProjection($0, config: own.config, configFile: "the model's text_encoder_2/config.json")
        }
    }
}
