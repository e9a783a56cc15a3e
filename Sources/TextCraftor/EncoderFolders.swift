import Foundation
import NN
import StableDiffusion
import Torch

/// Fine-tuned text encoders on disk, as `text_encoder` (`--text-encoder`) names them: one encoder's folder
/// (`config.json` and weights, as a run's `OUT/text_encoder/`), or a folder holding `text_encoder/` and/or
/// `text_encoder_2/` (a training run's, which on SDXL holds whichever encoders it trained, or a diffusers model's).
/// A folder of one encoder goes where its config's `architectures` says: `CLIPTextModelWithProjection` is SDXL's
/// `text_encoder_2`, anything else `text_encoder` (so an SD 1.x encoder, CLIP ViT-L as SDXL's first, stands in
/// there). Whether the weights fit is checked when they are loaded, strictly, naming the file.
/// A file rather than a folder is one encoder's bare state dict (`EncoderFile`: the authors' released `.pth`), in
/// the model's own encoder's config; with `text_projection.weight` it is SDXL's `text_encoder_2`, else `text_encoder`.
public struct EncoderFolders: Equatable, Sendable {
    /// The folder for `text_encoder`, or nil to keep the model's.
    public var first: URL?
    /// The folder for SDXL's `text_encoder_2`, or nil to keep the model's.
    public var second: URL?

    public init(first: URL? = nil, second: URL? = nil) {
        self.first = first
        self.second = second
    }

    /// Resolves `path` for a model of `architecture`; errors name `key`.
    public static func resolve(_ path: String, key: String, architecture: ModelArchitecture) throws -> EncoderFolders {
        func fail(_ message: String) -> TextCraftorError { .invalidSetting(key: key, message: "\(excerpt(path, limit: 200)): \(message)") }
        let folder = URL(fileURLWithPath: path)
        if EncoderFile.isFile(folder) {
            let second: Bool
            do { second = EncoderFile.hasProjection(try EncoderFile.open(folder)) } catch { throw fail("\(error)") }
            if second, architecture == .sd {
                throw fail("holds text_projection.weight (SDXL's text_encoder_2), and a \(architecture.name) model has one text encoder")
            }
            return second ? EncoderFolders(second: folder) : EncoderFolders(first: folder)
        }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw fail("no such file or folder")
        }
        func hasConfig(_ url: URL) -> Bool { FileManager.default.fileExists(atPath: url.appendingPathComponent("config.json").path) }
        if hasConfig(folder) {
            guard isSecondEncoder(folder) else { return EncoderFolders(first: folder) }
            if architecture == .sd {
                throw fail("is SDXL's text_encoder_2 (CLIPTextModelWithProjection), and a \(architecture.name) model has one text encoder")
            }
            return EncoderFolders(second: folder)
        }
        let first = folder.appendingPathComponent("text_encoder"), second = folder.appendingPathComponent("text_encoder_2")
        var found = EncoderFolders(first: hasConfig(first) ? first : nil, second: hasConfig(second) ? second : nil)
        if architecture == .sd {
            guard found.first != nil else {
                throw fail(found.second == nil
                    ? "neither a text encoder folder (config.json) nor a folder holding text_encoder/"
                    : "holds only text_encoder_2/, and a \(architecture.name) model has one text encoder (text_encoder/)")
            }
            found.second = nil
        }
        guard found != EncoderFolders() else {
            throw fail("neither a text encoder folder (config.json) nor a folder holding text_encoder/ or text_encoder_2/")
        }
        return found
    }

    /// Whether an encoder folder's config names transformers' `CLIPTextModelWithProjection` (SDXL's second encoder).
    static func isSecondEncoder(_ folder: URL) -> Bool {
        guard let data = FileManager.default.contents(atPath: folder.appendingPathComponent("config.json").path),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let architectures = object["architectures"] as? [String]
        else { return false }
        return architectures.contains("CLIPTextModelWithProjection")
    }

    /// Copies the weights of each folder into the pipeline's encoder of that place, in its type (strictly: every key
    /// and shape must match, as the model's own encoder). `variant`: a weights variant (`model.fp16.safetensors`).
    public func load(into pipeline: StableDiffusionPipeline, variant: String? = nil) throws {
        if let first { try pipeline.textEncoder.load(try Self.weights(first, variant: variant)) }
        if let second, let encoder = pipeline.textEncoder2 { try encoder.load(try Self.weights(second, variant: variant)) }
    }

    /// A folder's encoder weights, or a single file's (`EncoderFile`).
    static func weights(_ url: URL, variant: String?) throws -> any WeightSource {
        EncoderFile.isFile(url)
            ? try EncoderFile.open(url) : try componentWeights(in: url, baseName: "model", binBaseName: "pytorch_model", variant: variant)
    }

    /// Fresh copies of the encoders in these folders, in the types and on the device of the pipeline's encoders of
    /// those places (nil where a folder is nil: the pipeline's own is kept), for blending and mixing. Strict, as
    /// `load(into:)`.
    public func encoders(for pipeline: StableDiffusionPipeline, variant: String? = nil) throws
        -> (first: CLIPTextModel?, second: CLIPTextModelWithProjection?)
    {
        var result: (first: CLIPTextModel?, second: CLIPTextModelWithProjection?) = (nil, nil)
        if let first, EncoderFile.isFile(first) {
            result.first = try pipeline.loadTextEncoder(file: first)
        } else if let first {
            result.first = try CLIPTextModel.load(
                try componentWeights(in: first, baseName: "model", binBaseName: "pytorch_model", variant: variant),
                configFile: first.appendingPathComponent("config.json"), dtype: pipeline.textEncoder.parameters.first?.dtype,
                device: pipeline.device)
        }
        if let second, pipeline.textEncoder2 != nil, EncoderFile.isFile(second) {
            result.second = try pipeline.loadTextEncoder2(file: second)
        } else if let second, let own = pipeline.textEncoder2 {
            result.second = try CLIPTextModelWithProjection.load(
                try componentWeights(in: second, baseName: "model", binBaseName: "pytorch_model", variant: variant),
                configFile: second.appendingPathComponent("config.json"), dtype: own.parameters.first?.dtype,
                device: pipeline.device)
        }
        // The tokens the pipeline's encoders were given (`addToken`) read in these too.
        result.first?.addedTokenEmbeddings = pipeline.textEncoder.addedTokenEmbeddings
        result.second?.textModel.addedTokenEmbeddings = pipeline.textEncoder2?.textModel.addedTokenEmbeddings
        return result
    }
}
