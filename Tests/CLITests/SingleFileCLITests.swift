import Foundation
import Testing

/// `generate --model FILE --model-config DIR`: one original-LDM checkpoint of the tiny SD 1.5, SD 2 and SDXL (Fixtures/single,
/// scripts/parity/make_single_file_fixtures.py) generates exactly what its folder does.
@Suite final class SingleFileCLITests {
    static let single = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/single")
    let scratch = temporaryOutput()

    deinit { try? FileManager.default.removeItem(at: scratch) }

    func generate(_ model: [String], out name: String) throws -> (status: Int32, err: String, out: URL) {
        let out = scratch.appendingPathComponent(name)
        let run = try textcraftor(["generate", "--prompt", "a red circle", "--negative-prompt", "blurry", "--steps", "3", "--seed", "7",
                                   "--scheduler", "ddim", "--save-latents", "--out", out.path] + model)
        return (run.status, run.err, out)
    }

    @Test(arguments: [("tiny-sd15", tinySD15), ("tiny-sd2", tinySD15 + "/../tiny-sd2"), ("tiny-sdxl", tinySDXL)])
    func singleFileGeneratesAsItsFolder(name: String, folder: String) throws {
        let file = Self.single.appendingPathComponent(name + ".safetensors").path
        let a = try generate(["--model", file, "--model-config", folder], out: "file")
        let b = try generate(["--model", folder], out: "folder")
        #expect(a.status == 0 && b.status == 0, "\(a.err) \(b.err)")
        for name in ["latents.safetensors", "0000.png"] {
            let x = try Data(contentsOf: a.out.appendingPathComponent(name)), y = try Data(contentsOf: b.out.appendingPathComponent(name))
            #expect(!x.isEmpty && x == y, "\(name)")
        }
    }

    @Test func aFileWithoutItsConfigOrAConfigWithoutAFileIsOneLine() throws {
        let file = Self.single.appendingPathComponent("tiny-sd15.safetensors").path
        let a = try generate(["--model", file], out: "a")
        #expect(a.status != 0)
        #expect(a.err == "Error: --model-config: \(file) is a single file: give a diffusers folder of its architecture for its configs, tokenizers and scheduler\n", "\(a.err)")
        #expect(!FileManager.default.fileExists(atPath: a.out.path))
        let b = try generate(["--model", tinySD15, "--model-config", tinySD15], out: "b")
        #expect(b.err == "Error: --model-config: \(tinySD15): only for a single-file model, and \(tinySD15) is not a file\n", "\(b.err)")
        let unet = tinySD15 + "/unet/diffusion_pytorch_model.safetensors"
        let c = try generate(["--model", unet, "--model-config", tinySD15], out: "c")
        #expect(c.err == "Error: --model: \(unet): one diffusers component's weights, not a whole model: give its folder, or the model's diffusers folder\n", "\(c.err)")
    }
}
