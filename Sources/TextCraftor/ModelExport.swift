import Foundation
import NN
import StableDiffusion
import Torch

/// `textcraftor export` and `convert` as a library: a whole model written as one original-layout single file
/// (what AUTOMATIC1111, ComfyUI and diffusers' `from_single_file` load) or as a diffusers folder, with fine-tuned text
/// encoders swapped in and LoRAs merged, everything else copied unchanged (tensor for tensor, in the base's dtype
/// unless `dtype` is given). The base is a diffusers folder or a single file (`ModelSource`).
///
/// From a single-file base, every key of the file is kept (EMA copies, the last OpenCLIP block SD 2.x does not use,
/// `logit_scale`, ...) and only the changed components' keys are replaced, mapped back to the file's names
/// (`SingleFileLayoutWriter`); a LoRA that changes the UNet drops the `model_ema.*` copy, so that every loader reads
/// the merged UNet. From a folder, every component is mapped back. Before anything is written, the file's keys are
/// read back through `SingleFileCheckpoint`'s maps and must give each component's keys and shapes exactly. Written
/// to a temporary name and renamed.
public enum ModelExport {
    public enum Format: String, CaseIterable, Sendable {
        case singleFile = "single-file", diffusers
    }

    public struct Request {
        public var model: ModelSource
        /// Fine-tuned encoders: a run folder, an encoder folder or a bare state dict (`EncoderFolders`).
        public var textEncoder: String?
        /// `FILE[:SCALE]` each, merged into the encoders and UNet.
        public var lora: [String] = []
        public var out: String
        /// The floating-point tensors' type (nil: each as the base stores it; changed components in the base's).
        public var dtype: DType?
        public var format: Format

        public init(model: ModelSource, textEncoder: String? = nil, lora: [String] = [], out: String, dtype: DType? = nil,
                    format: Format = .singleFile) {
            (self.model, self.textEncoder, self.lora, self.out, self.dtype, self.format) = (model, textEncoder, lora, out, dtype, format)
        }
    }

    public struct Summary {
        public let out: URL
        public let layout: SingleFileCheckpoint.Layout
        /// The components whose weights changed (`text_encoder`, `text_encoder_2`, `unet`).
        public let changed: [String]
        public let tensors: Int
        public let droppedEMA: Bool
    }

    /// The single-file layout of a model: a single file's own, or a folder's from its architecture and text encoder.
    public static func layout(of model: ModelSource) throws -> SingleFileCheckpoint.Layout {
        if let file = model.singleFile { return file.layout }
        if try model.architecture == .sdxl { return .sdxl }
        let text = try decodeConfig(CLIPTextConfig.self, from: model.folder.appendingPathComponent("text_encoder/config.json"))
        // OpenCLIP ViT-H (SD 2.x: gelu) or OpenAI's CLIP ViT-L (SD 1.x: quick_gelu).
        return text.hidden_act == "gelu" || text.hidden_size == 1024 ? .sd2 : .sd1
    }

    public static func run(_ request: Request, say: (String) -> Void = { _ in }) throws -> Summary {
        let model = request.model
        let out = URL(fileURLWithPath: request.out).standardizedFileURL
        func fail(_ key: String, _ message: String) -> TextCraftorError { .invalidSetting(key: key, message: message) }
        guard !FileManager.default.fileExists(atPath: out.path) else { throw fail("out", "\(request.out): already exists") }
        if request.format == .singleFile, out.pathExtension != "safetensors" {
            throw fail("out", "\(request.out): a single file is written as .safetensors (or give --format diffusers and a folder)")
        }
        guard out.path != URL(fileURLWithPath: model.path).standardizedFileURL.path else { throw fail("out", "\(request.out) is the model") }
        let layout = try layout(of: model)
        let architecture = try model.architecture
        do { try FileManager.default.createDirectory(at: out.deletingLastPathComponent(), withIntermediateDirectories: true) } catch {
            throw fail("out", "\(request.out): cannot write there (\(error.localizedDescription))")
        }

        // What changes: fine-tuned encoders, LoRAs (by place).
        let fineTuned = try request.textEncoder.map { try EncoderFolders.resolve($0, key: "text_encoder", architecture: architecture) }
        let specs = try loraSpecs(request.lora)
        var places = Set<LoRAPlace>()
        for spec in specs {
            do { places.formUnion(try LoRAFile(URL(fileURLWithPath: spec.path)).modules.map(\.place)) } catch {
                throw fail("lora", "\(error)")
            }
        }
        var modules: [String: any Module] = [:]
        func loadEncoder(_ name: String, replacement: URL?) throws {
            let (weights, configFile) = try model.weights(name)
            let module: any Module = name == "text_encoder"
                ? try CLIPTextModel.load(weights, configFile: configFile, dtype: .float32)
                : try CLIPTextModelWithProjection.load(weights, configFile: configFile, dtype: .float32)
            if let replacement {
                do { try module.load(try EncoderFolders.weights(replacement, variant: nil)) } catch {
                    throw fail("text_encoder", "\(replacement.path): not the \(name) of \(model.name): \(error)")
                }
            }
            modules[name] = module
        }
        if fineTuned?.first != nil || places.contains(.textEncoder) { try loadEncoder("text_encoder", replacement: fineTuned?.first) }
        if fineTuned?.second != nil || places.contains(.textEncoder2) { try loadEncoder("text_encoder_2", replacement: fineTuned?.second) }
        if places.contains(.unet) {
            let (weights, configFile) = try model.weights("unet")
            modules["unet"] = try UNet2DConditionModel.load(
                folder: configFile.deletingLastPathComponent(), dtype: .float32, weights: { _ in weights })
        }
        if !specs.isEmpty {
            let targets = LoRATargets(textEncoder: modules["text_encoder"], textEncoder2: modules["text_encoder_2"], unet: modules["unet"],
                                      architecture: architecture)
            do {
                var updates: [(weight: Tensor, delta: Tensor)] = []
                for spec in specs { updates += try targets.updates(try LoRAFile(URL(fileURLWithPath: spec.path)), scale: spec.scale) }
                LoRATargets.apply(updates)
            } catch { throw fail("lora", "\(error)") }
        }
        let changed = modules.keys.sorted()

        // Each component's weights under diffusers' names: the changed ones from their modules, in the base's type.
        let names = architecture == .sdxl ? ["text_encoder", "text_encoder_2", "unet", "vae"] : ["text_encoder", "unet", "vae"]
        var components: [(name: String, weights: any WeightSource)] = []
        for name in names {
            let (base, _) = try model.weights(name)
            guard let module = modules[name] else {
                components.append((name, base))
                continue
            }
            // Every key of the base's component, the module's value where it has one (not: position ids).
            let state = module.stateDict()
            var tensors: [String: Tensor] = [:]
            for key in base.keys {
                tensors[key] = try state[key].map { $0.to(dtype: base.info(key)!.dtype, device: .cpu) } ?? base.tensor(key)
            }
            components.append((name, TensorDictionary(tensors, origin: "\(name) (changed)")))
        }
        func cast(_ tensor: Tensor) -> Tensor {
            guard let dtype = request.dtype, tensor.dtype.isFloatingPoint else { return tensor }
            return tensor.to(dtype: dtype, device: .cpu)
        }

        switch request.format {
        case .diffusers:
            try ModelWriter.writeDiffusersFolder(configFolder: model.folder, components: components, to: out, transform: cast) { folder in
                // A prediction type given or found for a single file goes into the folder's scheduler.
                guard let type = model.predictionType else { return }
                let file = folder.appendingPathComponent("scheduler/scheduler_config.json")
                var scheduler = try decodeConfig(SchedulerConfig.self, from: file)
                guard scheduler.predictionType != type else { return }
                scheduler.predictionType = type
                try ModelWriter.writeScheduler(scheduler, to: file.deletingLastPathComponent())
            }
            say("\(out.path): \(layout.rawValue) as a diffusers folder" + (changed.isEmpty ? "" : " (\(changed.joined(separator: ", ")) changed)"))
            return Summary(out: out, layout: layout, changed: changed, tensors: components.reduce(0) { $0 + $1.weights.keys.count },
                           droppedEMA: false)
        case .singleFile:
            let writer = SingleFileLayoutWriter(layout: layout)
            let configs = try Configs(model.folder, architecture: architecture)
            var file = LazyWeights(origin: out.path)
            var droppedEMA = false
            if let base = model.singleFile {
                let source = base.weights
                for key in source.keys {
                    guard let info = source.info(key) else { continue }
                    file.entries[key] = LazyWeights.Entry(dtype: info.dtype, shape: info.shape) { try source.tensor(key) }
                }
                for (name, weights) in components where modules[name] != nil {
                    for (key, entry) in try writer.originalWeights(name, weights, unet: configs.unet, vae: configs.vae).entries {
                        if file.entries[key] == nil, key.hasSuffix(".embeddings.position_ids") { continue }  // not the base's: not added
                        guard file.entries[key] != nil else {
                            throw fail("model", "\(base.url.path): has no '\(excerpt(key, limit: 100))' for the changed \(name)")
                        }
                        file.entries[key] = entry
                    }
                }
                if modules["unet"] != nil {
                    let ema = file.entries.keys.filter { $0.hasPrefix("model_ema.") }
                    droppedEMA = !ema.isEmpty
                    for key in ema { file.entries[key] = nil }
                }
            } else {
                for (name, weights) in components {
                    for (key, entry) in try writer.originalWeights(name, weights, unet: configs.unet, vae: configs.vae).entries {
                        file.entries[key] = entry
                    }
                }
            }
            try SingleFileCheckpoint.verifyRoundTrip(
                file, url: out, expected: components, unet: configs.unet, vae: configs.vae, text: configs.text, text2: configs.text2)
            let entries = file.entries.map { key, entry in
                (name: key, dtype: request.dtype.flatMap { entry.dtype.isFloatingPoint ? $0 : nil } ?? entry.dtype, shape: entry.shape)
            }
            try SafeTensors.write(entries: entries, metadata: ["format": "pt", "textcraftor.base": model.name], to: out) { key in
                cast(try file.entries[key]!.make()).contiguous().tensorData()
            }
            say("\(out.path): \(layout.rawValue) single file, \(entries.count) tensors" + (changed.isEmpty ? "" : " (\(changed.joined(separator: ", ")) changed)")
                + (droppedEMA ? "; the UNet's model_ema.* copy dropped (the merged UNet is the one every loader reads)" : ""))
            return Summary(out: out, layout: layout, changed: changed, tensors: entries.count, droppedEMA: droppedEMA)
        }
    }

    /// A model's component configs.
    struct Configs {
        let unet: UNet2DConditionConfig, vae: AutoencoderKLConfig, text: CLIPTextConfig, text2: CLIPTextConfig?
        init(_ folder: URL, architecture: ModelArchitecture) throws {
            func read<C: Decodable>(_ type: C.Type, _ path: String) throws -> C {
                try decodeConfig(type, from: folder.appendingPathComponent(path))
            }
            unet = try read(UNet2DConditionConfig.self, "unet/config.json")
            vae = try read(AutoencoderKLConfig.self, "vae/config.json")
            text = try read(CLIPTextConfig.self, "text_encoder/config.json")
            text2 = architecture == .sdxl ? try read(CLIPTextConfig.self, "text_encoder_2/config.json") : nil
        }
    }
}
