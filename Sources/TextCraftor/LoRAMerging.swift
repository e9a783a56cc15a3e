import Foundation
import NN
import StableDiffusion
import Torch

/// `--lora FILE[:SCALE]` values, parsed; errors name `key`.
public func loraSpecs(_ values: [String], key: String = "lora") throws -> [LoRASpec] {
    do { return try values.map(LoRASpec.init(spec:)) } catch {
        throw TextCraftorError.invalidSetting(key: key, message: "\(error)")
    }
}

extension StableDiffusionPipeline {
    /// Merges the `--lora` files into the model's text encoder(s) and UNet (`mergeLoRAs`); errors name `key`.
    func applyLoRAs(_ values: [String], key: String = "lora") throws {
        let specs = try loraSpecs(values, key: key)
        guard !specs.isEmpty else { return }
        do { try mergeLoRAs(specs) } catch { throw TextCraftorError.invalidSetting(key: key, message: "\(error)") }
    }
}

/// `textcraftor merge` as a library: the model's text encoder(s) replaced (`text_encoder`), or blended or mixed in
/// weight space (`blend`, `mix`: Σ Wᵢ · θᵢ per parameter, the model's own named `original`, as `generate` names
/// them), then LoRA files merged in; the encoders are written as diffusers lays them out (`OUT/text_encoder/`, and on
/// SDXL `OUT/text_encoder_2/`), and `OUT/unet/` when a LoRA changes the UNet. `generate --text-encoder OUT` (and
/// diffusers, with those folders swapped in) then runs the merged model.
///
/// A weight-space mix is not `generate --mix`'s embedding mix (the encoder is not linear in its weights); a LoRA
/// merged here gives exactly what `generate --lora` gives.
public enum EncoderMerge {
    /// Returns the folders written. Everything is checked and computed before anything is written; each folder is
    /// written beside its place and renamed into it.
    public static func run(model source: ModelSource, textEncoder: String?, blend: String?, mix: [String], lora: [String], out: String,
                           warn: (String, String) -> Void = { _, _ in }) throws -> [URL] {
        let model = source.path
        let recipe = try EncoderRecipe(textEncoder: textEncoder, blend: blend, mix: mix, finetunedSteps: nil)
        let specs = try loraSpecs(lora)
        guard recipe != nil || !specs.isEmpty else {
            throw TextCraftorError.invalidSetting(key: "lora", message: "nothing to merge: give --lora, --text-encoder or --mix")
        }
        let modelURL = source.folder, outURL = URL(fileURLWithPath: out).standardizedFileURL
        guard URL(fileURLWithPath: model).standardizedFileURL.path != outURL.path else {
            throw TextCraftorError.invalidSetting(key: "out", message: "\(out) is the model folder: write the merge elsewhere")
        }
        let pipeline: StableDiffusionPipeline
        do { pipeline = try source.load() } catch {
            throw TextCraftorError.invalidSetting(key: "model", message: "\(model): \(error)")
        }
        if let recipe {
            let sum = recipe.terms.map(\.weight).reduce(0, +)
            if recipe.isMix, abs(sum - 1) > 1e-9 { warn("mix", "weights sum to \(sum), not 1: the weights are scaled by it") }
            try mixWeights(recipe, into: pipeline)
        }
        let files = try specs.map { spec in
            do { return try LoRAFile(URL(fileURLWithPath: spec.path)) } catch {
                throw TextCraftorError.invalidSetting(key: "lora", message: "\(error)")
            }
        }
        try pipeline.applyLoRAs(lora)
        let changesUNet = files.contains { $0.modules.contains { $0.place == .unet } }
        var parts: [(name: String, weights: String, module: any Module)] = [("text_encoder", "model.safetensors", pipeline.textEncoder)]
        if let second = pipeline.textEncoder2 { parts.append(("text_encoder_2", "model.safetensors", second)) }
        if changesUNet { parts.append(("unet", "diffusion_pytorch_model.safetensors", pipeline.unet)) }
        let folder = RunFolder(outURL)
        do { try FileManager.default.createDirectory(at: outURL, withIntermediateDirectories: true) } catch {
            throw TextCraftorError.invalidSetting(key: "out", message: "\(out): cannot write there (\(error.localizedDescription))")
        }
        var written: [URL] = []
        for (name, weights, module) in parts {
            let component = RunFolder.Component(name: name, weights: weights, config: modelURL.appendingPathComponent("\(name)/config.json"))
            let target = outURL.appendingPathComponent(name)
            try folder.replaceFolder(target) { try folder.writeModel(module, component, to: $0) }
            written.append(target)
        }
        return written
    }

    /// Σ Wᵢ · θᵢ of the recipe's encoders, per place (a folder without an encoder for a place gives the model's own
    /// there), copied into the pipeline's encoders.
    static func mixWeights(_ recipe: EncoderRecipe, into pipeline: StableDiffusionPipeline) throws {
        let key = recipe.isMix ? "mix" : "text_encoder"
        var firsts: [(any Module, Double)] = [], seconds: [(any Module, Double)] = []
        for (folder, weight) in recipe.terms {
            var encoders: (first: CLIPTextModel?, second: CLIPTextModelWithProjection?) = (nil, nil)
            if let folder {
                do {
                    encoders = try EncoderFolders.resolve(folder, key: key, architecture: pipeline.architecture).encoders(for: pipeline)
                } catch let error as TextCraftorError { throw error } catch {
                    throw TextCraftorError.invalidSetting(key: key, message: "\(excerpt(folder, limit: 200)): \(error)")
                }
            }
            firsts.append((encoders.first ?? pipeline.textEncoder, weight))
            if let own = pipeline.textEncoder2 { seconds.append((encoders.second ?? own, weight)) }
        }
        func combine(_ terms: [(any Module, Double)], into target: any Module) throws {
            let tables = terms.map { module, weight in
                (Dictionary(uniqueKeysWithValues: module.namedParameters.map { ($0.name, $0.tensor) }), weight)
            }
            var sums: [(tensor: Tensor, sum: Tensor)] = []
            for (name, tensor) in target.namedParameters where tensor.dtype.isFloatingPoint {
                var sum: Tensor?
                for (table, weight) in tables {
                    guard let term = table[name], term.shape == tensor.shape else {
                        throw TextCraftorError.invalidSetting(
                            key: key, message: "the encoders do not have the same architecture: '\(name)' differs from the model's")
                    }
                    sum = sum.map { $0 + term.to(.float32) * weight } ?? term.to(.float32) * weight
                }
                sums.append((tensor, sum!))
            }
            withNoGrad { for (tensor, sum) in sums { tensor.copy_(sum.to(tensor.dtype)) } }
        }
        try combine(firsts, into: pipeline.textEncoder)
        if let own = pipeline.textEncoder2 { try combine(seconds, into: own) }
    }
}
