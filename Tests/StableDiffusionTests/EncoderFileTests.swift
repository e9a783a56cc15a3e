import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// `--text-encoder FILE`: a bare CLIP text-model state dict in one file, as the TextCraftor authors released theirs.
/// Fixtures (scripts/parity/make_single_file_fixtures.py): tiny-sd15's encoder perturbed, as an authors'-style
/// `module.text_model.*` `.pth` (with the old `position_ids` buffer) and as a transformers folder.
@Suite final class EncoderFileTests {
    static let single = fixturesURL.appendingPathComponent("single")
    static let pth = single.appendingPathComponent("tc_text_tiny_sd15.pth")
    static let folder = single.appendingPathComponent("tc_text_tiny_sd15")

    let pipeline: StableDiffusionPipeline
    let scratch: URL

    init() throws {
        pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        scratch = try temporaryFolder("encoder-file")
    }

    deinit { try? FileManager.default.removeItem(at: scratch) }

    func latents(_ encoder: CLIPTextModel?) throws -> Tensor {
        try pipeline.generate(singleFileRequest(), mix: encoder.map { .mix([($0, 1)]) }).latents
    }

    /// The folder's encoder's state dict, renamed by `rename` (nil drops a key), saved as safetensors.
    func write(_ name: String, extra: [String: Tensor] = [:], _ rename: (String) -> String?) throws -> URL {
        let encoder = try pipeline.loadTextEncoder(folder: Self.folder)
        var tensors: [String: Tensor] = [:]
        for (key, tensor) in encoder.stateDict() { if let new = rename(key) { tensors[new] = tensor } }
        tensors.merge(extra) { $1 }
        let url = scratch.appendingPathComponent(name)
        try Tensor.save(tensors, to: url)
        return url
    }

    func error(_ body: () throws -> Any) -> String {
        do { _ = try body() } catch { return "\(error)" }
        return "no error"
    }

    @Test func authorsPthGeneratesTheFolderLatentsExactly() throws {
        let fromFile = try pipeline.loadTextEncoder(folder: Self.pth), fromFolder = try pipeline.loadTextEncoder(folder: Self.folder)
        #expect(fromFile.namedParameters.map(\.name) == fromFolder.namedParameters.map(\.name))
        for ((name, a), (_, b)) in zip(fromFile.namedParameters, fromFolder.namedParameters) {
            #expect(maxAbsDifference(a, b) == 0, "\(name)")
        }
        let file = try latents(fromFile), folder = try latents(fromFolder), original = try latents(nil)
        #expect(maxAbsDifference(file, folder) == 0)
        #expect(maxAbsDifference(file, original) > 1e-3, "the perturbed encoder changes the image")
    }

    @Test func prefixFormsAreNormalised() throws {
        let ids = pipeline.tokenize(["two small squares"]).ids
        let reference = try pipeline.loadTextEncoder(folder: Self.folder)(ids).lastHiddenState
        // `module.` + `embeddings...` (DDP around the bare tower), and plain `embeddings...`.
        for (name, prefix) in [("ddp-tower.safetensors", "module."), ("tower.safetensors", "")] {
            let url = try write(name) { prefix + $0.dropFirst("text_model.".count) }
            #expect(maxAbsDifference(try pipeline.loadTextEncoder(file: url)(ids).lastHiddenState, reference) == 0, "\(name)")
        }
    }

    @Test func badStateDictsAreOneLineErrorsNamingFileAndKey() throws {
        let missing = try write("missing.safetensors") { $0 == "text_model.final_layer_norm.bias" ? nil : $0 }
        let m = error { try self.pipeline.loadTextEncoder(file: missing) }
        #expect(m.hasPrefix(missing.path) && m.contains("text_model.final_layer_norm.bias") && !m.contains("\n"), "\(m)")

        let extra = try write("extra.safetensors", extra: ["text_model.encoder.layers.9.mlp.fc1.weight": .zeros([4])]) { $0 }
        let e = error { try self.pipeline.loadTextEncoder(file: extra) }
        #expect(e.hasPrefix(extra.path) && e.contains("text_model.encoder.layers.9.mlp.fc1.weight"), "\(e)")

        let wide = try write("wide.safetensors", extra: ["text_model.final_layer_norm.weight": .zeros([48])]) { $0 }
        let w = error { try self.pipeline.loadTextEncoder(file: wide) }
        #expect(w.contains("'text_model.final_layer_norm.weight' has shape [48] in the checkpoint, the model expects [32]"), "\(w)")

        let unet = TinySD.sd15.folder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")
        let u = error { try self.pipeline.loadTextEncoder(file: unet) }
        #expect(u.hasPrefix("\(unet.path): not a CLIP text model state dict"), "\(u)")

        let text = scratch.appendingPathComponent("encoder.txt")
        try Data("x".utf8).write(to: text)
        #expect(error { try self.pipeline.loadTextEncoder(file: text) }.hasSuffix("a text encoder file is a .pth, .pt, .bin or .safetensors state dict (or give a folder)"))
    }
}
