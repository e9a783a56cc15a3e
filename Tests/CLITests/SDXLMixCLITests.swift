import Foundation
import Testing
import Torch

/// `generate` and `eval` with --blend, --mix and --finetuned-steps on the tiny SDXL, with a "fine-tuned" run folder
/// that holds only text_encoder_2/ (the tiny one with seeded noise added): the first place keeps the model's encoder.
@Suite struct SDXLMixCLITests {
    /// A run folder with a perturbed copy of the tiny SDXL's text_encoder_2.
    static func makeRun() throws -> URL {
        let run = temporaryOutput()
        let source = URL(fileURLWithPath: tinySDXL).appendingPathComponent("text_encoder_2")
        let target = run.appendingPathComponent("text_encoder_2")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: target.appendingPathComponent("config.json"))
        let generator = Generator(seed: 7)
        let weights = try Tensor.load(safetensors: source.appendingPathComponent("model.safetensors"))
        var perturbed: [String: Tensor] = [:]
        for name in weights.keys.sorted() {
            let w = weights[name]!
            perturbed[name] = w.dtype.isFloatingPoint ? w + Tensor.randn(w.shape, generator: generator).to(w.dtype) * 0.05 : w
        }
        try Tensor.save(perturbed, to: target.appendingPathComponent("model.safetensors"))
        return run
    }

    func generate(_ extra: [String], _ folder: URL) throws -> (latents: Tensor, metadata: [String: Any]) {
        let run = try textcraftor(["generate", "--model", tinySDXL, "--prompt", "a red circle", "--negative-prompt", "blurry",
                                   "--steps", "3", "--seed", "3", "--height", "64", "--width", "64",
                                   "--out", folder.path, "--save-latents"] + extra)
        #expect(run.status == 0, "\(run.err)")
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("metadata.json"))) as! [String: Any]
        return (try Tensor.load(safetensors: folder.appendingPathComponent("latents.safetensors"))["latents"]!, metadata)
    }

    @Test func blendMixAndFinetunedStepsOnSDXL() throws {
        let run = try Self.makeRun()
        let out = temporaryOutput()
        defer {
            try? FileManager.default.removeItem(at: run)
            try? FileManager.default.removeItem(at: out)
        }
        let own = try generate([], out.appendingPathComponent("own")).latents
        let tuned = try generate(["--text-encoder", run.path], out.appendingPathComponent("tuned"))
        #expect((own - tuned.latents).abs().max().item() > 0, "the fine-tuned encoder changed nothing")
        let calls = try #require(tuned.metadata["unet_calls"] as? Int)
        func same(_ a: Tensor, _ b: Tensor) -> Bool { a.toArray(Float.self) == b.toArray(Float.self) }
        let one = try generate(["--text-encoder", run.path, "--blend", "1"], out.appendingPathComponent("blend1"))
        #expect(same(one.latents, tuned.latents))
        #expect(one.metadata["blend"] as? Double == 1)
        #expect(same(try generate(["--text-encoder", run.path, "--blend", "0"], out.appendingPathComponent("blend0")).latents, own))
        let half = try generate(["--text-encoder", run.path, "--blend", "0.5"], out.appendingPathComponent("half")).latents
        #expect(!same(half, own) && !same(half, tuned.latents))
        #expect(same(try generate(["--mix", "original=0,\(run.path)=1"], out.appendingPathComponent("mix")).latents, tuned.latents))
        let all = try generate(["--text-encoder", run.path, "--finetuned-steps", "\(calls)"], out.appendingPathComponent("steps"))
        #expect(same(all.latents, tuned.latents))
        #expect(all.metadata["finetuned_steps"] as? Int == calls)
        let some = try generate(["--text-encoder", run.path, "--finetuned-steps", "1"], out.appendingPathComponent("some")).latents
        #expect(!same(some, own) && !same(some, tuned.latents))
        let bad = try textcraftor(["generate", "--model", tinySDXL, "--prompt", "x", "--steps", "3", "--text-encoder", run.path,
                                   "--finetuned-steps", "99", "--out", out.appendingPathComponent("bad").path])
        #expect(bad.status == 1)
        #expect(bad.err.hasPrefix("Error: --finetuned-steps") && bad.err.split(separator: "\n").count == 1, "\(bad.err)")
    }

    @Test func evalBlendsAndMixesOnSDXL() throws {
        let run = try Self.makeRun()
        let out = temporaryOutput()
        let prompts = temporaryOutput().appendingPathExtension("txt")
        defer {
            try? FileManager.default.removeItem(at: run)
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: prompts)
        }
        try Data("a red circle\n".utf8).write(to: prompts)
        let reward = ["--reward", "clip=" + repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf/clip").path]
        let result = try textcraftor(["eval", "--model", tinySDXL, "--prompts", prompts.path, "--steps", "2", "--out", out.path,
                                      "--text-encoder", "tuned=\(run.path)", "--blend", "0.5", "--mix", "original=0.5,tuned=0.5",
                                      "--finetuned-steps", "1"] + reward)
        #expect(result.status == 0, "\(result.err)")
        for variant in ["original", "tuned", "tuned@0.5", "mix"] {
            #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("\(variant)/00000.png").path), "\(variant)")
        }
    }
}
