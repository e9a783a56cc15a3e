import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// One prompt with a negative, 3 steps at 64x64, seed 42: what the single-file tests generate with.
func singleFileRequest() -> GenerationRequest {
    var r = GenerationRequest(prompts: ["a red circle on a blue background"])
    r.negativePrompts = ["blurry"]
    r.steps = 3
    r.seed = 42
    r.height = 64
    r.width = 64
    return r
}

/// A whole model in one original-LDM checkpoint (Fixtures/single, scripts/parity/make_single_file_fixtures.py, which
/// checks that diffusers' from_single_file loads each to the folder's weights), read with the folder's configs.
@Suite struct SingleFileModelTests {
    static let single = fixturesURL.appendingPathComponent("single")

    func expectSameWeights(_ a: some Module, _ b: some Module, _ what: String) {
        let x = a.namedParameters, y = b.namedParameters
        #expect(x.map(\.name) == y.map(\.name), "\(what)")
        for ((name, s), (_, t)) in zip(x, y) where s.dtype == t.dtype {
            #expect(maxAbsDifference(s, t) == 0, "\(what).\(name)")
        }
    }

    @Test(arguments: [
        ("tiny-sd15.safetensors", "sd/tiny-sd15", SingleFileCheckpoint.Layout.sd1),
        ("tiny-sd2.safetensors", "sd/tiny-sd2", .sd2), ("tiny-sdxl.safetensors", "sdxl/tiny-sdxl", .sdxl),
    ])
    func singleFileLoadsAndGeneratesAsItsFolder(file: String, folder: String, layout: SingleFileCheckpoint.Layout) throws {
        let config = fixturesURL.appendingPathComponent(folder)
        let checkpoint = try SingleFileCheckpoint(url: Self.single.appendingPathComponent(file))
        #expect(checkpoint.layout == layout)
        let fromFile = try StableDiffusionPipeline.load(folder: config, singleFile: checkpoint)
        let fromFolder = try StableDiffusionPipeline.load(folder: config)
        expectSameWeights(fromFile.unet, fromFolder.unet, "unet")
        expectSameWeights(fromFile.vae, fromFolder.vae, "vae")
        expectSameWeights(fromFile.textEncoder, fromFolder.textEncoder, "text_encoder")
        if let a = fromFile.textEncoder2, let b = fromFolder.textEncoder2 { expectSameWeights(a, b, "text_encoder_2") }
        #expect(maxAbsDifference(try fromFile.generate(singleFileRequest()).latents, try fromFolder.generate(singleFileRequest()).latents) == 0)
    }

    /// A file with `model_ema.*` copies of the UNet (each tensor + 1, named as diffusers reads them: the key past
    /// `model.` with its dots removed) reads them unless asked not to.
    @Test func emaWeightsAreUsedWhenPresent() throws {
        let scratch = try temporaryFolder("single-ema")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let whole = try SafeTensorsFile(url: Self.single.appendingPathComponent("tiny-sd15.safetensors"))
        var tensors: [String: Tensor] = [:]
        for key in whole.names {
            let t = try whole.tensor(key)
            tensors[key] = t
            if key.hasPrefix("model.diffusion_model.") {
                tensors["model_ema." + key.split(separator: ".").dropFirst().joined()] = t + 1
            }
        }
        let url = scratch.appendingPathComponent("ema.safetensors")
        try Tensor.save(tensors, to: url)
        let folder = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder).unet
        let ema = try SingleFileCheckpoint(url: url), plain = try SingleFileCheckpoint(url: url, useEMA: false)
        #expect(ema.usesEMA && !plain.usesEMA)
        let withEMA = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder, singleFile: ema).unet
        let without = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder, singleFile: plain).unet
        for ((name, a), ((_, b), (_, c))) in zip(folder.namedParameters, zip(withEMA.namedParameters, without.namedParameters)) {
            #expect(maxAbsDifference(b - 1, a) < 1e-6, "\(name)")
            #expect(maxAbsDifference(c, a) == 0, "\(name)")
        }
    }

    func error(_ body: () throws -> Any) -> String {
        do { _ = try body() } catch { return "\(error)" }
        return "no error"
    }

    @Test func badSingleFilesAreOneLineErrors() throws {
        let scratch = try temporaryFolder("single-bad")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let whole = try SafeTensorsFile(url: Self.single.appendingPathComponent("tiny-sd15.safetensors"))
        func write(_ name: String, _ keep: (String) -> String?) throws -> URL {
            var tensors: [String: Tensor] = [:]
            for key in whole.names { if let new = keep(key) { tensors[new] = try whole.tensor(key) } }
            let url = scratch.appendingPathComponent(name)
            try Tensor.save(tensors, to: url)
            return url
        }
        let unetOnly = try write("unet.safetensors") { $0.hasPrefix("model.diffusion_model.") ? $0 : nil }
        #expect(error { try SingleFileCheckpoint(url: unetOnly) }
            == "\(unetOnly.path): holds only a UNet (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* or conditioner.*): a single-file model needs all three")
        let vaeOnly = try write("vae.safetensors") { $0.hasPrefix("first_stage_model.") ? $0 : nil }
        #expect(error { try SingleFileCheckpoint(url: vaeOnly) }.hasPrefix("\(vaeOnly.path): holds only a VAE"))
        let lora = try write("lora.safetensors") { $0.hasSuffix("attn1.to_q.weight") ? "lora_unet_" + $0.replacingOccurrences(of: ".", with: "_") + ".lora_down.weight" : nil }
        #expect(error { try SingleFileCheckpoint(url: lora) }.hasPrefix("\(lora.path): a LoRA file, not a model"))
        let other = try write("other.safetensors") { $0.hasPrefix("first_stage_model.") ? "foo." + $0 : nil }
        #expect(error { try SingleFileCheckpoint(url: other) }.hasPrefix("\(other.path): unknown architecture: not an SD 1.x, SD 2.x or SDXL checkpoint (\(whole.names.filter { $0.hasPrefix("first_stage_model.") }.count) keys, e.g. 'foo.first_stage_model."))
        let truncated = scratch.appendingPathComponent("truncated.safetensors")
        let bytes = try Data(contentsOf: whole.url)
        try bytes.prefix(bytes.count / 2).write(to: truncated)
        let t = error { try SingleFileCheckpoint(url: truncated) }
        #expect(t.hasPrefix("invalid safetensors file \(truncated.path): tensor ") && t.contains("extend beyond the") && !t.contains("\n"), "\(t)")
        // A key the layout does not know names itself.
        let odd = try write("odd.safetensors") { $0 == "model.diffusion_model.out.2.bias" ? "model.diffusion_model.out.9.bias" : $0 }
        let checkpoint = try SingleFileCheckpoint(url: odd)
        let o = error { try StableDiffusionPipeline.load(folder: TinySD.sd15.folder, singleFile: checkpoint) }
        #expect(o.hasPrefix("\(odd.path): 'model.diffusion_model.out.9.bias' does not fit the UNet of the config"), "\(o)")
        // An SD 1.x file with an SDXL folder's configs.
        let s = error { try StableDiffusionPipeline.load(folder: fixturesURL.appendingPathComponent("sdxl/tiny-sdxl"), singleFile: try SingleFileCheckpoint(url: whole.url)) }
        #expect(s.hasSuffix("is an SD 1.x checkpoint, and the config folder \(fixturesURL.appendingPathComponent("sdxl/tiny-sdxl").path) is a Stable Diffusion XL model"), "\(s)")
    }
}
