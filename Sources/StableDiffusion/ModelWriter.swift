import Foundation
import NN
import Torch

/// Writers of model folders in the layouts diffusers and transformers read: a component's `config.json` (with
/// `_class_name`) beside its safetensors, transformers' configs, a scheduler, `model_index.json`. Weights are
/// written to a temporary file and renamed, so a folder never holds half a file.
public enum ModelWriter {
    /// A diffusers component folder: `config.json` (the config, with `_class_name` and the diffusers version it
    /// follows) and its weights in `dtype`.
    public static func writeComponent(
        config: some Encodable, className: String, weights: [String: Tensor], to folder: URL, weightsName: String,
        dtype: DType, extra: [String: Any] = ["_diffusers_version": "0.39.0"]
    ) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try writeConfig(config, adding: extra.merging(["_class_name": className]) { $1 },
                        to: folder.appendingPathComponent("config.json"))
        try saveWeights(weights, dtype: dtype, to: folder.appendingPathComponent(weightsName))
    }

    /// `config` as pretty JSON with `keys` added, written atomically.
    public static func writeConfig(_ config: some Encodable, adding keys: [String: Any], to url: URL) throws {
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as! [String: Any]
        json.merge(keys) { $1 }
        let data = try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: url, options: .atomic)
    }

    /// Weights as safetensors in `dtype` on the CPU, with transformers' `format: pt` metadata (and any `metadata`).
    public static func saveWeights(_ weights: [String: Tensor], dtype: DType, metadata: [String: String] = [:], to url: URL) throws {
        let tensors = weights.mapValues { $0.to(dtype: dtype, device: .cpu).contiguous() }
        let partial = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).partial")
        try Tensor.save(tensors, metadata: metadata.merging(["format": "pt"]) { $1 }, to: partial)
        guard rename(partial.path, url.path) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
    }

    /// transformers' `config.json` for a model: the config with `architectures`, `model_type` and `torch_dtype`.
    public static func writeTransformersConfig(
        _ config: some Encodable, architecture: String, modelType: String, dtype: DType, to url: URL
    ) throws {
        try writeConfig(config, adding: ["architectures": [architecture], "model_type": modelType, "torch_dtype": "\(dtype)"],
                        to: url)
    }

    /// A whole CLIP as transformers' `CLIPModel` (`config.json`, `model.safetensors`); without a tokenizer, which
    /// the loader takes from CLIP's bundled one.
    public static func writeCLIP(_ model: CLIPModel, dtype: DType, to folder: URL) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try writeTransformersConfig(model.config, architecture: "CLIPModel", modelType: "clip", dtype: dtype,
                                    to: folder.appendingPathComponent("config.json"))
        try saveWeights(model.stateDict(), dtype: dtype, to: folder.appendingPathComponent("model.safetensors"))
    }

    /// A text tower as Stable Diffusion's `text_encoder/` (transformers' `CLIPTextModel`: `text_model.*` keys).
    /// `weights`: the tower's own (a `CLIPTextModel`'s), or a whole `CLIPModel`'s, whose other keys are left out.
    /// `withProjection`: SDXL's `text_encoder_2/` (`CLIPTextModelWithProjection`), which keeps `text_projection.weight`.
    public static func writeTextEncoder(
        config: CLIPTextConfig, weights: [String: Tensor], dtype: DType, to folder: URL, withProjection: Bool = false
    ) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try writeTransformersConfig(
            config, architecture: withProjection ? "CLIPTextModelWithProjection" : "CLIPTextModel",
            modelType: "clip_text_model", dtype: dtype, to: folder.appendingPathComponent("config.json"))
        let kept = weights.filter { $0.key.hasPrefix("text_model.") || (withProjection && $0.key == "text_projection.weight") }
        try saveWeights(kept, dtype: dtype, to: folder.appendingPathComponent("model.safetensors"))
    }

    /// `scheduler/scheduler_config.json`.
    public static func writeScheduler(_ config: SchedulerConfig, to folder: URL) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(config).write(to: folder.appendingPathComponent("scheduler_config.json"), options: .atomic)
    }

    /// `model_index.json` of a `StableDiffusionPipeline` without safety checker or feature extractor, or with
    /// `architecture` `.sdxl` of a `StableDiffusionXLPipeline` (its second tokenizer and text encoder, and
    /// `force_zeros_for_empty_prompt` as the published base model sets it).
    public static func writeModelIndex(scheduler: String, architecture: ModelArchitecture = .sd, to folder: URL) throws {
        var index: [String: Any] = [
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0",
            "feature_extractor": [NSNull(), NSNull()], "safety_checker": [NSNull(), NSNull()],
            "requires_safety_checker": false, "image_encoder": [NSNull(), NSNull()],
            "scheduler": ["diffusers", scheduler], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        ]
        if architecture == .sdxl {
            index["_class_name"] = "StableDiffusionXLPipeline"
            index["safety_checker"] = nil
            index["requires_safety_checker"] = nil
            index["force_zeros_for_empty_prompt"] = true
            index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
            index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        }
        let data = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: folder.appendingPathComponent("model_index.json"), options: .atomic)
    }
}
