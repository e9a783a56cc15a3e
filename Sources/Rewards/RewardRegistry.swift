import Foundation
import NN
import StableDiffusion
import Torch

/// Rewards by the names the command line uses, loaded from the files people download for them.
public enum RewardRegistry {
    public static let names = ["aesthetic", "pickscore", "hpsv2", "clip", "hpsv2.1", "aesthetic25", "imagereward"]

    /// `paths`: aesthetic takes a CLIP ViT-L/14 (a transformers folder or an open_clip checkpoint) and the MLP head;
    /// aesthetic25 a SigLIP folder and the v2.5 head; the others take one folder or file (hpsv2.1: HPSv2's loader).
    /// Without a `dtype`, models run in float32 on the CPU (where half precision is slow and less exact; ShapesWorld's
    /// bundle stores float16) and in the file's type on other devices.
    public static func load(name: String, paths: [String], dtype: DType? = nil, device: Device = .cpu) throws -> any Reward {
        let dtype = dtype ?? (device == .cpu ? DType.float32 : nil)
        let urls = paths.map { URL(fileURLWithPath: $0) }
        func expect(_ count: Int, _ form: String) throws {
            guard urls.count == count else {
                throw RewardError.invalidArgument("--reward \(name) takes \(form), got \(urls.count) path(s)")
            }
            for url in urls where !FileManager.default.fileExists(atPath: url.path) {
                throw RewardError.invalidModel(file: url.path, message: "no such file or folder")
            }
        }
        switch name {
        case "pickscore":
            try expect(1, "a PickScore folder")
            return try PickScoreReward(folder: urls[0], dtype: dtype, device: device)
        case "clip":
            try expect(1, "a CLIP folder or checkpoint")
            return CLIPScoreReward(model: try embedder(urls[0], dtype: dtype, device: device))
        case "aesthetic":
            try expect(2, "a CLIP ViT-L/14 and the predictor head: aesthetic=CLIP,HEAD")
            return try AestheticReward(embedder: try embedder(urls[0], dtype: dtype, device: device), weights: urls[1],
                                       dtype: dtype, device: device)
        case "hpsv2", "hpsv2.1":
            try expect(1, "an HPSv2 checkpoint")
            return try openCLIPReward(name: name, urls[0], dtype: dtype, device: device)
        case "aesthetic25":
            try expect(2, "a SigLIP folder and the v2.5 head: aesthetic25=SIGLIP,HEAD")
            return try Aesthetic25Reward(siglipFolder: urls[0], headFile: urls[1], dtype: dtype, device: device)
        case "imagereward":
            // ImageReward.pt (or safetensors) with med_config.json beside it; vocab.txt given second or beside it.
            try expect(urls.count == 2 ? 2 : 1, "ImageReward.pt and optionally its vocab.txt: imagereward=CKPT[,VOCAB]")
            return try ImageRewardReward.load(
                checkpoint: urls[0], vocabulary: urls.count == 2 ? urls[1] : nil, dtype: dtype ?? .float32, device: device)
        default:
            throw RewardError.unknownReward(name, known: names)
        }
    }

    /// A transformers CLIP folder, or an open_clip checkpoint file.
    static func embedder(_ url: URL, dtype: DType?, device: Device) throws -> any CLIPEmbedder {
        var isFolder: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder)
        if isFolder.boolValue { return try CLIPModel.load(folder: url, dtype: dtype, device: device) }
        return try openCLIPEmbedder(url, dtype: dtype, device: device)
    }
}

extension RewardRegistry {
    /// The presets an open_clip checkpoint without a config beside it is matched against.
    static let openCLIPPresets: [(name: String, config: OpenCLIPConfig)] = [
        ("ViT-H-14", .vitH14), ("ViT-g-14", .vitG14), ("ViT-L-14", .vitL14), ("ViT-bigG-14", .vitBigG14),
    ]

    /// The config of an open_clip checkpoint: `open_clip_config.json` beside it, else the preset whose image and
    /// text projections have the checkpoint's shapes (`visual.proj`, `text_projection`; a `module.` prefix allowed).
    static func openCLIPConfig(for url: URL, default fallback: OpenCLIPConfig? = nil) throws -> OpenCLIPConfig {
        let beside = url.deletingLastPathComponent().appendingPathComponent("open_clip_config.json")
        if FileManager.default.fileExists(atPath: beside.path) { return try OpenCLIPConfig.load(from: beside) }
        if let fallback { return fallback }
        let weights = try Weights.open(url)
        func shape(_ key: String) -> [Int]? { (weights.info(key) ?? weights.info("module." + key))?.shape }
        guard let visual = shape("visual.proj"), let text = shape("text_projection") else {
            throw RewardError.invalidModel(file: url.path, message: "not an open_clip checkpoint (no visual.proj or text_projection)")
        }
        guard let match = openCLIPPresets.first(where: {
            [$0.config.vision_cfg.width, $0.config.embed_dim] == visual && [$0.config.text_cfg.width, $0.config.embed_dim] == text
        }) else {
            throw RewardError.invalidModel(file: url.path, message: """
                no open_clip_config.json beside it, and its projections (\(visual), \(text)) fit none of \
                \(openCLIPPresets.map(\.name).joined(separator: ", "))
                """)
        }
        return match.config
    }

    /// A `tokenizer/` folder beside an open_clip checkpoint, for models with their own vocabulary.
    static func tokenizerFolder(besides url: URL) -> URL? {
        let folder = url.deletingLastPathComponent().appendingPathComponent("tokenizer")
        return FileManager.default.fileExists(atPath: folder.appendingPathComponent("vocab.json").path) ? folder : nil
    }

    static func openCLIPEmbedder(_ url: URL, dtype: DType?, device: Device) throws -> any CLIPEmbedder {
        let model = try OpenCLIPModel.load(
            checkpoint: url, config: try openCLIPConfig(for: url), tokenizerFolder: tokenizerFolder(besides: url),
            dtype: dtype, device: device)
        model.setTrainable(false)
        return model
    }

    /// HPSv2 is an open_clip ViT-H-14 whatever the file is called.
    static func openCLIPReward(name: String, _ url: URL, dtype: DType?, device: Device) throws -> any Reward {
        try HPSv2Reward.load(
            checkpoint: url, config: try openCLIPConfig(for: url, default: .vitH14), tokenizerFolder: tokenizerFolder(besides: url),
            dtype: dtype ?? .float32, device: device, name: name)
    }
}
