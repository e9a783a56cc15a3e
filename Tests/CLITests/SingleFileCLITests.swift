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
        // Without --model-config the published configs are used: a tiny file does not fit them, and the error says so.
        let file = Self.single.appendingPathComponent("tiny-sd15.safetensors").path
        let a = try generate(["--model", file], out: "a")
        #expect(a.status != 0)
        #expect(a.err.hasPrefix("Error: --model: not the shapes of the published stable-diffusion-v1-5 (give --model-config DIR, a diffusers folder of its own configs): \(file) does not fit the model: 'text_model.embeddings.token_embedding.weight' has shape [1000, 32] in the checkpoint, the model expects [49408, 768]"), "\(a.err)")
        #expect(a.err.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: a.out.path))
        let b = try generate(["--model", tinySD15, "--model-config", tinySD15], out: "b")
        #expect(b.err == "Error: --model-config: \(tinySD15): only for a single-file model, and \(tinySD15) is not a file\n", "\(b.err)")
        let unet = tinySD15 + "/unet/diffusion_pytorch_model.safetensors"
        let c = try generate(["--model", unet, "--model-config", tinySD15], out: "c")
        #expect(c.err == "Error: --model: \(unet): one diffusers component's weights, not a whole model: give its folder, or the model's diffusers folder\n", "\(c.err)")
        // A pickle that asks to call os.system is refused by the reader, and nothing runs.
        let evil = Self.single.appendingPathComponent("runs-code.ckpt").path
        let d = try generate(["--model", evil, "--model-config", tinySD15], out: "d")
        #expect(d.status != 0 && d.err.hasPrefix("Error: --model: ") && d.err.contains(evil) && d.err.contains("os"), "\(d.err)")
        #expect(d.err.split(separator: "\n").count == 1 && !d.err.contains("this pickle ran code") && !d.out.path.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: d.out.path))
    }

    /// How the file was read is said: the layout, the configs and the prediction type with its reason.
    @Test func theOutputSaysHowTheFileWasRead() throws {
        let file = Self.single.appendingPathComponent("tiny-sd2.safetensors").path
        let a = try generate(["--model", file, "--model-config", tinySD15 + "/../tiny-sd2", "--prediction-type", "epsilon"], out: "a")
        #expect(a.status == 0, "\(a.err)")
        #expect(a.err.contains("model: tiny-sd2.safetensors: SD 2.x single file\nmodel: configs, tokenizers and scheduler from \(tinySD15)/../tiny-sd2\nmodel: prediction type epsilon (--prediction-type)\n"), "\(a.err)")
        let inspect = try textcraftor(["inspect", file])
        #expect(inspect.out.contains("\n  SD 2.x single-file model: UNet with 4 input channels; prediction type epsilon (the usual SD 2.x test: "), "\(inspect.out.prefix(400))")
        // tokenize takes the file's architecture's tokenizers: SDXL's second pads with "!" (id 0).
        let xl = Self.single.appendingPathComponent("tiny-sdxl.safetensors").path
        let tokens = try textcraftor(["tokenize", "--model", xl, "--pad", "--max-length", "6", "a cat"])
        #expect(tokens.out.contains("\"ids\":[49406,320,2368,49407,49407,49407]") && tokens.out.contains("\"ids_2\":[49406,320,2368,49407,0,0]"), "\(tokens.out) \(tokens.err)")
        let b = try generate(["--model", file, "--prediction-type", "x"], out: "b")
        #expect(b.err == "Error: --prediction-type: expected epsilon, v_prediction or sample, found \"x\"\n", "\(b.err)")
    }

    /// `train --model FILE` trains what `train --model FOLDER` trains, weight for weight.
    @Test func trainingOnTheFileEqualsTrainingOnTheFolder() throws {
        let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path
        let prompts = scratch.appendingPathComponent("prompts.txt")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        try "a red circle\na blue square\n".write(to: prompts, atomically: true, encoding: .utf8)
        func train(_ model: [String], _ name: String) throws -> URL {
            let out = scratch.appendingPathComponent(name)
            let run = try textcraftor(["train", "--prompts", prompts.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                                       "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3", "--max-steps", "2"] + model)
            #expect(run.status == 0, "\(run.err)")
            return out.appendingPathComponent("text_encoder/model.safetensors")
        }
        let file = Self.single.appendingPathComponent("tiny-sd15.safetensors").path
        let a = try Data(contentsOf: train(["--model", file, "--model-config", tinySD15], "file"))
        let b = try Data(contentsOf: train(["--model", tinySD15], "folder"))
        #expect(!a.isEmpty && a == b)
    }
}

/// `textcraftor convert FILE --model-config DIR --out OUT`: the tiny single files become diffusers folders whose every
/// tensor is the original folder's, byte for byte (float32 throughout).
@Suite final class ConvertCLITests {
    let scratch = temporaryOutput()

    deinit { try? FileManager.default.removeItem(at: scratch) }

    func tensors(_ url: URL) throws -> [String: Data] { try safetensorsEntries(url) }

    @Test(arguments: [("tiny-sd15", tinySD15), ("tiny-sdxl", tinySDXL)])
    func convertedFolderHoldsTheFolderTensors(name: String, folder: String) throws {
        let file = SingleFileCLITests.single.appendingPathComponent(name + ".safetensors").path
        let out = scratch.appendingPathComponent(name)
        let run = try textcraftor(["convert", file, "--model-config", folder, "--out", out.path])
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains(name == "tiny-sdxl" ? "SDXL as a diffusers folder" : "SD 1.x as a diffusers folder"))
        var components = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]
        if name == "tiny-sdxl" { components.append("text_encoder_2/model.safetensors") }
        for component in components {
            let a = try tensors(out.appendingPathComponent(component))
            let b = try tensors(URL(fileURLWithPath: folder).appendingPathComponent(component))
            #expect(a.count == b.count && !a.isEmpty, "\(component)")
            #expect(a == b, "\(component)")
        }
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("tokenizer/vocab.json").path))
        // The folder exists now: a second conversion is refused and leaves it alone.
        let again = try textcraftor(["convert", file, "--model-config", folder, "--out", out.path])
        #expect(again.status != 0 && again.err.hasSuffix("Error: --out: \(out.path): already exists\n"), "\(again.err)")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.contains("partial") }
        #expect(leftovers.isEmpty)
    }
}
