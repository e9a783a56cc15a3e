import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

@Suite struct ModelFolderTests {
    @Test func variantsAndFormatsAreFoundInDiffusersOrder() throws {
        let encoder15 = TinySD.sd15.folder.appendingPathComponent("text_encoder")
        let encoder2 = TinySD.sd2.folder.appendingPathComponent("text_encoder")
        func file(_ source: any WeightSource) -> String { URL(fileURLWithPath: source.origin).lastPathComponent }
        #expect(file(try componentWeights(in: encoder15, baseName: "model", variant: "fp16")) == "model.fp16.safetensors")
        #expect(file(try componentWeights(in: encoder15, baseName: "model")) == "model.safetensors")
        #expect(file(try componentWeights(in: encoder15, baseName: "model", variant: "bf16")) == "model.safetensors")
        #expect(file(try componentWeights(in: encoder2, baseName: "model", binBaseName: "pytorch_model")) == "pytorch_model.bin")

        // safetensors before .bin; a .bin alone is read as a torch.save checkpoint.
        let folder = try temporaryFolder("weights")
        defer { try? FileManager.default.removeItem(at: folder) }
        try FileManager.default.copyItem(
            at: encoder2.appendingPathComponent("pytorch_model.bin"), to: folder.appendingPathComponent("diffusion_pytorch_model.bin"))
        let bin = try componentWeights(in: folder, baseName: "diffusion_pytorch_model")
        #expect(file(bin) == "diffusion_pytorch_model.bin")
        #expect(bin.keys.count > 0)
        try Tensor.save(["x": Tensor.ones([2])], to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        #expect(file(try componentWeights(in: folder, baseName: "diffusion_pytorch_model")) == "diffusion_pytorch_model.safetensors")
    }
}
