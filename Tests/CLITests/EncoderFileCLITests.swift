import Foundation
import Testing

/// `generate --text-encoder FILE`: the authors'-style `.pth` (SD 1.5) and a `module.`-prefixed text_encoder_2
/// `.safetensors` (SDXL) generate the same image and latents as the same encoders saved as folders
/// (Fixtures/single, scripts/parity/make_single_file_fixtures.py).
@Suite final class EncoderFileCLITests {
    static let single = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/single")
    let scratch = temporaryOutput()

    deinit { try? FileManager.default.removeItem(at: scratch) }

    /// (the run, latents.safetensors' `latents` bytes, the first image's bytes)
    func generate(_ model: String, _ flags: [String], out name: String) throws -> (status: Int32, err: String, latents: Data, image: Data) {
        let out = scratch.appendingPathComponent(name)
        let run = try textcraftor(["generate", "--model", model, "--prompt", "a red circle", "--negative-prompt", "blurry",
                                   "--steps", "3", "--seed", "7", "--scheduler", "ddim", "--save-latents", "--out", out.path] + flags)
        guard run.status == 0 else { return (run.status, run.err, Data(), Data()) }
        let data = try Data(contentsOf: out.appendingPathComponent("latents.safetensors"))
        let (base, header) = try safetensorsHeader(data)
        let offsets = (header["latents"] as! [String: Any])["data_offsets"] as! [Int]
        return (run.status, run.err, data.subdata(in: base + offsets[0]..<base + offsets[1]),
                try Data(contentsOf: out.appendingPathComponent("0000.png")))
    }

    @Test(arguments: [
        (tinySD15, "tc_text_tiny_sd15.pth", "tc_text_tiny_sd15", [String]()),
        (tinySD15, "tc_text_tiny_sd15.pth", "tc_text_tiny_sd15", ["--blend", "0.5"]),
        (tinySDXL, "tc_text2_tiny_sdxl.safetensors", "tc_text2_tiny_sdxl", [String]()),
        (tinySDXL, "tc_text2_tiny_sdxl.safetensors", "tc_text2_tiny_sdxl", ["--blend", "0.5"]),
    ])
    func fileGeneratesAsItsFolder(model: String, file: String, folder: String, flags: [String]) throws {
        let a = try generate(model, ["--text-encoder", Self.single.appendingPathComponent(file).path] + flags, out: "file")
        let b = try generate(model, ["--text-encoder", Self.single.appendingPathComponent(folder).path] + flags, out: "folder")
        let original = try generate(model, [], out: "original")
        #expect(a.status == 0 && b.status == 0, "\(a.err) \(b.err)")
        #expect(!a.latents.isEmpty && a.latents == b.latents)
        #expect(a.image == b.image)
        #expect(a.latents != original.latents, "the fine-tuned encoder changes the latents")
    }

    @Test func anSDXLSecondEncoderOnSD15IsOneLineNamingTheFile() throws {
        let file = Self.single.appendingPathComponent("tc_text2_tiny_sdxl.safetensors").path
        let run = try generate(tinySD15, ["--text-encoder", file], out: "bad")
        #expect(run.status != 0)
        #expect(run.err.hasPrefix("Error: \(file)") && run.err.contains("text_projection.weight"), "\(run.err)")
        #expect(run.err.trimmingCharacters(in: .newlines).split(separator: "\n").count == 1, "\(run.err)")
    }
}
