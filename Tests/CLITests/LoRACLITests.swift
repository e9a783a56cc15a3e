import Foundation
import Testing
import Torch

/// `train --adapter lora`, `generate --lora`, `merge` and `inspect` on LoRA files, end to end.
@Suite(.serialized) struct LoRACLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path
    let loraFixtures = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/lora").path

    func train(_ model: String, _ out: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        let prompts = temporaryOutput().appendingPathExtension("txt")
        try "a red circle\na blue square\n".write(to: prompts, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: prompts) }
        return try textcraftor(["train", "--model", model, "--prompts", prompts.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                                "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-2", "--max-steps", "1",
                                "--adapter", "lora", "--lora-rank", "2"] + extra)
    }

    /// SDXL, both encoders: one file with lora_te1_ and lora_te2_ names (the targets asked for), which `generate
    /// --lora` takes and `inspect` describes.
    @Test func sdxlRunWritesOneFileForBothEncoders() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try train(tinySDXL, out, ["--train", "text-encoders", "--lora-targets", "q_proj,v_proj", "--lora-dtype", "float32"])
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains("weights in \(out.path)/lora.safetensors"), "\(run.out)")
        let inspect = try textcraftor(["inspect", out.appendingPathComponent("lora.safetensors").path])
        #expect(inspect.out.contains("LoRA: kohya names, 12 modules, for stable-diffusion-xl-v1-base"), "\(inspect.out)")
        #expect(inspect.out.contains("text_encoder: q_proj (3), v_proj (3)"))
        #expect(inspect.out.contains("text_encoder_2: q_proj (3), v_proj (3)"))
        let row = inspect.out.split(separator: "\n").first { $0.hasPrefix("lora_te2_text_model_encoder_layers_0_self_attn_v_proj.lora_up.weight ") }
        #expect(row?.contains("float32") == true, "\(inspect.out)")
        let images = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: images) }
        let generate = try textcraftor(["generate", "--model", tinySDXL, "--prompt", "x", "--steps", "1",
                                        "--lora", out.appendingPathComponent("lora.safetensors").path + ":0.5", "--out", images.path])
        #expect(generate.status == 0, "\(generate.err)")
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: images.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["loras"] as? [String] == [out.appendingPathComponent("lora.safetensors").path + ":0.5"])
    }

    /// `merge --lora` then `generate --text-encoder` gives the images and embeddings of `generate --lora`, exactly;
    /// a merged LoRA changes them.
    @Test func mergeThenGenerateEqualsGenerateWithLoRA() throws {
        let merged = temporaryOutput(), a = temporaryOutput(), b = temporaryOutput(), c = temporaryOutput()
        defer { [merged, a, b, c].forEach { try? FileManager.default.removeItem(at: $0) } }
        let lora = "\(loraFixtures)/sd15_peft.safetensors:0.7"
        let merge = try textcraftor(["merge", "--model", tinySD15, "--lora", lora, "--out", merged.path])
        #expect(merge.status == 0, "\(merge.err)")
        // The fixture has UNet parts too, so unet/ is written beside text_encoder/.
        #expect(merge.out == "wrote \(merged.path)/text_encoder and \(merged.path)/unet\n")
        let common = ["generate", "--model", tinySD15, "--prompt", "a red circle", "--steps", "2", "--seed", "3", "--save-latents"]
        let textOnly = "\(loraFixtures)/sd15_old.safetensors:0.7"
        #expect(try textcraftor(["merge", "--model", tinySD15, "--lora", textOnly, "--out", c.path]).status == 0)
        #expect(try textcraftor(common + ["--lora", textOnly, "--out", a.path]).status == 0)
        #expect(try textcraftor(common + ["--text-encoder", c.path, "--out", b.path]).status == 0)
        let x = try Tensor.load(safetensors: a.appendingPathComponent("latents.safetensors"))
        let y = try Tensor.load(safetensors: b.appendingPathComponent("latents.safetensors"))
        #expect(x["prompt_embeds"]!.toArray(Float.self) == y["prompt_embeds"]!.toArray(Float.self))
        #expect(x["latents"]!.toArray(Float.self) == y["latents"]!.toArray(Float.self))
        let plain = try textcraftor(common + ["--out", merged.appendingPathComponent("plain").path])
        #expect(plain.status == 0)
        let z = try Tensor.load(safetensors: merged.appendingPathComponent("plain/latents.safetensors"))
        #expect(z["prompt_embeds"]!.toArray(Float.self) != x["prompt_embeds"]!.toArray(Float.self))
    }

    /// `merge --mix` in weight space: original=1 is the model's encoder, bit for bit.
    @Test func mergeMixOfTheOriginalAloneIsTheModel() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["merge", "--model", tinySD15, "--mix", "original=1", "--out", out.path])
        #expect(run.status == 0, "\(run.err)")
        let merged = try Tensor.load(safetensors: out.appendingPathComponent("text_encoder/model.safetensors"))
        let original = try Tensor.load(safetensors: URL(fileURLWithPath: tinySD15).appendingPathComponent("text_encoder/model.safetensors"))
        for (name, tensor) in original where tensor.dtype.isFloatingPoint {
            #expect(merged[name]!.to(.float32).toArray(Float.self) == tensor.to(.float32).toArray(Float.self), "\(name)")
        }
    }

    /// Bad input: one line naming the file or flag, status 1, nothing written.
    @Test func badInputIsOneLine() throws {
        let out = temporaryOutput()
        let missing = try textcraftor(["generate", "--model", tinySD15, "--prompt", "x", "--lora", "/nope.safetensors", "--out", out.path])
        #expect(missing.status == 1)
        #expect(missing.err == "Error: --lora: /nope.safetensors: no such LoRA file\n")
        let other = try textcraftor(["generate", "--model", tinySDXL, "--prompt", "x", "--lora", "\(loraFixtures)/sd15_kohya.safetensors", "--out", out.path])
        #expect(other.err == "Error: --lora: \(loraFixtures)/sd15_kohya.safetensors is a LoRA for stable-diffusion-v1 (lora_te_ keys: one text encoder), and the model is Stable Diffusion XL\n")
        let nothing = try textcraftor(["merge", "--model", tinySD15, "--out", out.path])
        #expect(nothing.err == "Error: --lora: nothing to merge: give --lora, --text-encoder or --mix\n")
        let unet = try train(tinySD15, out, ["--train", "unet"])
        #expect(unet.err == "Error: --adapter: lora trains text encoders: use --adapter full with --train unet\n")
        let targets = try train(tinySD15, out, ["--lora-targets", "q_proj,to_q"])
        #expect(targets.err == "Error: --lora-targets: \"to_q\" is not one of q_proj, k_proj, v_proj, out_proj, fc1, fc2\n")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }
}
