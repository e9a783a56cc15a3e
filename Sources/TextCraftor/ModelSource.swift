import Foundation
import NN
import StableDiffusion
import Torch

/// Where a job's Stable Diffusion model comes from, decided once for every command: a diffusers folder, or one
/// original-layout checkpoint (`SingleFileCheckpoint`) read with the configs, tokenizers and scheduler of a
/// diffusers folder given as `model_config`, or, without one, of the published model of its architecture, built in
/// (`ModelPreset.publishedConfigs`). `predictionType` overrides the scheduler's (a flag, or for a single file of SD
/// 2.x without `model_config`, the usual test of its weights); `notes` say what was decided, for the output.
public struct ModelSource {
    /// The configs, tokenizers and scheduler (and, without `singleFile`, the weights).
    public let folder: URL
    public let singleFile: SingleFileCheckpoint?
    /// The scheduler's prediction type, where it is not the folder's.
    public let predictionType: String?
    /// One line each: how a single file was read (layout, configs, EMA, prediction type and why).
    public let notes: [String]
    /// The published model whose configs (built in) a single file is read with, nil with a folder or `model_config`.
    public let publishedConfigs: String?

    /// A diffusers folder as it is.
    public init(folder: URL) {
        self.folder = folder
        singleFile = nil
        predictionType = nil
        notes = []
        publishedConfigs = nil
    }

    /// `model` (a folder or a single file), `modelConfig` (a diffusers folder for a single file's configs),
    /// `noEMA`, `predictionType` (epsilon, v_prediction or sample; nil: the config's or the file's). Errors name
    /// the key.
    public init(model: String, modelConfig: String?, noEMA: Bool = false, predictionType: String? = nil) throws {
        let url = URL(fileURLWithPath: model)
        if let predictionType, !["epsilon", "v_prediction", "sample"].contains(predictionType) {
            throw TextCraftorError.invalidSetting(key: "prediction_type", message: "expected epsilon, v_prediction or sample, found \"\(excerpt(predictionType, limit: 60))\"")
        }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder), !isFolder.boolValue else {
            if let modelConfig {
                throw TextCraftorError.invalidSetting(
                    key: "model_config", message: "\(excerpt(modelConfig, limit: 200)): only for a single-file model, and \(excerpt(model, limit: 200)) is not a file")
            }
            folder = url
            singleFile = nil
            publishedConfigs = nil
            self.predictionType = predictionType
            notes = predictionType.map { ["prediction type \($0) (--prediction-type)"] } ?? []
            return
        }
        let checkpoint: SingleFileCheckpoint
        do { checkpoint = try SingleFileCheckpoint(url: url, useEMA: !noEMA) } catch {
            throw TextCraftorError.invalidSetting(key: "model", message: "\(error)")
        }
        singleFile = checkpoint
        var notes = ["\(url.lastPathComponent): \(checkpoint.layout.rawValue) single file\(checkpoint.usesEMA ? ", the UNet's EMA weights" : "")"]
        if let modelConfig {
            folder = URL(fileURLWithPath: modelConfig)
            do { try checkpoint.checkConfigFolder(folder) } catch {
                throw TextCraftorError.invalidSetting(key: "model_config", message: "\(error)")
            }
            publishedConfigs = nil
            notes.append("configs, tokenizers and scheduler from \(modelConfig)")
            self.predictionType = predictionType
            if let predictionType { notes.append("prediction type \(predictionType) (--prediction-type)") }
        } else {
            let hint = checkpoint.predictionTypeHint()
            let type = predictionType ?? hint.type
            let published = try ModelPreset.publishedConfigs(
                for: checkpoint.layout, vPrediction: type == "v_prediction", inChannels: checkpoint.unetInChannels ?? 4)
            folder = published.folder
            publishedConfigs = published.name
            notes.append("the published configs of \(published.name) (built in; --model-config DIR to use others)")
            notes.append("prediction type \(type) (\(predictionType != nil ? "--prediction-type" : hint.reason))")
            self.predictionType = type
        }
        self.notes = notes
    }

    public var architecture: ModelArchitecture {
        get throws { try StableDiffusionPipeline.architecture(of: folder) }
    }

    /// The model's name for reports and file metadata: the file's or the folder's.
    public var name: String { (singleFile?.url ?? folder).lastPathComponent }

    /// What `model` names in messages: the file, or the folder.
    public var path: String { (singleFile?.url ?? folder).path }

    /// The pipeline (`StableDiffusionPipeline.load`'s types), with the prediction type set.
    public func load(
        dtype: DType = .float32, device: Device = .cpu, variant: String? = nil, textEncoderDType: DType? = nil,
        textEncoder2DType: DType? = nil, unetDType: DType? = nil, vaeDType: DType? = nil
    ) throws -> StableDiffusionPipeline {
        do {
            return try StableDiffusionPipeline.load(
                folder: folder, dtype: dtype, device: device, variant: variant, textEncoderDType: textEncoderDType,
                textEncoder2DType: textEncoder2DType, unetDType: unetDType, vaeDType: vaeDType, singleFile: singleFile,
                predictionType: predictionType)
        } catch {
            guard let publishedConfigs else { throw error }
            throw TextCraftorError.invalidSetting(
                key: "model", message: "not the shapes of the published \(publishedConfigs) (give --model-config DIR, a diffusers folder of its own configs): \(error)")
        }
    }

    /// A component's weights under diffusers' names (`text_encoder`, `text_encoder_2`, `unet`, `vae`) and its
    /// config file.
    public func weights(_ component: String, variant: String? = nil) throws -> (weights: any WeightSource, configFile: URL) {
        let configFile = folder.appendingPathComponent("\(component)/config.json")
        guard let singleFile else {
            let base = component.hasPrefix("text_encoder") ? ("model", "pytorch_model") : ("diffusion_pytorch_model", "diffusion_pytorch_model")
            return (try componentWeights(in: folder.appendingPathComponent(component), baseName: base.0, binBaseName: base.1, variant: variant), configFile)
        }
        switch component {
        case "text_encoder": return (try singleFile.textEncoder(config: decodeConfig(CLIPTextConfig.self, from: configFile)), configFile)
        case "text_encoder_2": return (try singleFile.textEncoder2(config: decodeConfig(CLIPTextConfig.self, from: configFile)), configFile)
        case "unet": return (try singleFile.unet(config: decodeConfig(UNet2DConditionConfig.self, from: configFile)), configFile)
        default: return (try singleFile.vae(config: decodeConfig(AutoencoderKLConfig.self, from: configFile)), configFile)
        }
    }
}

/// A job that loads a model (`ModelSource`): the keys `model`, `model_config`, `no_ema` and `prediction_type`.
public protocol ModelConfiguration: Configuration {
    var model: String? { get set }
    /// With a single-file `model`: the diffusers folder whose configs, tokenizers and scheduler it is read with
    /// (nil: the published ones of its architecture, built in).
    var modelConfig: String? { get set }
    /// With a single-file `model`: its UNet's weights rather than its `model_ema.*` copy.
    var noEma: Bool { get set }
    /// The scheduler's prediction type (nil: the model's config, or for an SD 2.x single file the usual test).
    var predictionType: String? { get set }
}

extension ModelConfiguration {
    static var modelFields: [ConfigField<Self>] {
        [.path("model", \.model), .path("model_config", \.modelConfig), .flag("no_ema", \.noEma),
         .string("prediction_type", \.predictionType)]
    }

    /// Where the model is (`ModelSource`); errors name the key.
    public func modelSource() throws -> ModelSource {
        guard let model else { throw TextCraftorError.invalidSetting(key: "model", message: "no model given") }
        return try ModelSource(model: model, modelConfig: modelConfig, noEMA: noEma, predictionType: predictionType)
    }
}

extension ModelPreset {
    /// Bump when the configs written change, so a cached folder is not reused.
    static let publishedConfigsVersion = 1

    /// A folder with the published configs, tokenizers and scheduler (no weights) of a single file's architecture:
    /// SD 1.x as runwayml/stable-diffusion-v1-5, SD 2.x as stabilityai/stable-diffusion-2-1 (768, v-prediction) or
    /// -2-1-base (512, epsilon), SDXL as stable-diffusion-xl-base-1.0; the UNet's input channels as the file's. Written
    /// once into the user's cache (`~/.cache/textcraftor/configs/`), under a temporary name and renamed.
    public static func publishedConfigs(
        for layout: SingleFileCheckpoint.Layout, vPrediction: Bool, inChannels: Int
    ) throws -> (folder: URL, name: String) {
        let preset: ModelPreset, name: String
        var unet: UNet2DConditionConfig, vae = Self.vae, text: CLIPTextConfig
        var scheduler: SchedulerConfig
        switch layout {
        case .sd1:
            (preset, name, unet, text) = (.sd15, "stable-diffusion-v1-5", Self.sd15UNet, Self.vitL14Text)
            scheduler = Self.scheduler(.sd15)
        case .sd2:
            (preset, unet, text) = (.sd21, Self.sd21UNet, Self.sd21Text)
            scheduler = Self.scheduler(vPrediction ? .sd21 : .sd15)
            if !vPrediction { unet.sample_size = 64 }
            vae.sample_size = vPrediction ? 768 : 512
            name = vPrediction ? "stable-diffusion-2-1" : "stable-diffusion-2-1-base"
        case .sdxl:
            (preset, name, unet, text, vae) = (.sdxl, "stable-diffusion-xl-base-1.0", Self.sdxlUNet, Self.vitL14Text, Self.sdxlVAE)
            scheduler = Self.scheduler(.sdxl)
        }
        unet.in_channels = inChannels
        scheduler.predictionType = vPrediction ? "v_prediction" : "epsilon"
        let suffix = (vPrediction && layout != .sd2 ? "-v" : "") + (inChannels != 4 ? "-in\(inChannels)" : "")
        let caches = FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask).first
            ?? FileManager.default.temporaryDirectory
        let root = caches.appendingPathComponent("textcraftor/configs")
        let folder = root.appendingPathComponent("\(name)\(suffix)-v\(publishedConfigsVersion)")
        let fm = FileManager.default
        if fm.fileExists(atPath: folder.appendingPathComponent("model_index.json").path) { return (folder, name) }
        try fm.createDirectory(at: root, withIntermediateDirectories: true)
        let partial = root.appendingPathComponent(".\(folder.lastPathComponent).partial-\(UUID().uuidString)")
        do {
            func write(_ config: some Encodable, _ component: String, className: String, transformers: Bool = false) throws {
                let dir = partial.appendingPathComponent(component)
                try fm.createDirectory(at: dir, withIntermediateDirectories: true)
                let file = dir.appendingPathComponent("config.json")
                if transformers {
                    try ModelWriter.writeTransformersConfig(config, architecture: className, modelType: "clip_text_model", dtype: .float32, to: file)
                } else {
                    try ModelWriter.writeConfig(config, adding: ["_class_name": className, "_diffusers_version": "0.39.0"], to: file)
                }
            }
            try write(text, "text_encoder", className: "CLIPTextModel", transformers: true)
            if layout == .sdxl { try write(Self.bigGText, "text_encoder_2", className: "CLIPTextModelWithProjection", transformers: true) }
            try write(unet, "unet", className: "UNet2DConditionModel")
            try write(vae, "vae", className: "AutoencoderKL")
            try preset.writeSchedulerAndTokenizer(to: partial)
            try ModelWriter.writeScheduler(scheduler, to: partial.appendingPathComponent("scheduler"))
            try ModelWriter.writeModelIndex(scheduler: scheduler.className, architecture: layout.architecture, to: partial)
            if rename(partial.path, folder.path) != 0 { try? fm.removeItem(at: partial) }  // another process was first
        } catch {
            try? fm.removeItem(at: partial)
            throw error
        }
        return (folder, name)
    }
}
