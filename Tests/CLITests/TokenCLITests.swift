import Foundation
import Testing
import Torch

/// `train --adapter token`, `generate --embedding` and `inspect` on its files, end to end on tiny-sd15.
@Suite(.serialized) struct TokenCLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path
    let fixtures = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/token")

    func train(_ out: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        let prompts = out.deletingLastPathComponent().appendingPathComponent("\(out.lastPathComponent).txt")
        try "a red circle\na blue square\n".write(to: prompts, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: prompts) }
        return try textcraftor(["train", "--model", tinySD15, "--prompts", prompts.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                                "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-2"] + extra)
    }

    func latents(_ out: URL) throws -> Tensor { try SafeTensorsFile(url: out.appendingPathComponent("latents.safetensors")).tensor("prompt_embeds") }

    @Test func trainedTokenLoadsInGenerateFromEachFile() throws {
        let run = temporaryOutput(), a = temporaryOutput(), b = temporaryOutput(), plain = temporaryOutput()
        defer { [run, a, b, plain].forEach { try? FileManager.default.removeItem(at: $0) } }
        let trained = try train(run, ["--max-steps", "1", "--adapter", "token", "--token", "<aes>", "--init-word", "red", "--vectors", "2"])
        #expect(trained.status == 0, "\(trained.err)")
        #expect(trained.out.contains("weights in \(run.path)/token"))
        let folder = run.appendingPathComponent("token")
        let generate = ["generate", "--model", tinySD15, "--steps", "2", "--seed", "1", "--height", "64", "--width", "64", "--save-latents"]
        let fromPT = try textcraftor(generate + ["--embedding", folder.appendingPathComponent("aes.pt").path, "--prompt", "a red circle, aes", "--out", a.path])
        #expect(fromPT.status == 0, "\(fromPT.err)")
        let fromDiffusers = try textcraftor(generate + ["--embedding", folder.appendingPathComponent("learned_embeds.safetensors").path,
                                                        "--prompt", "a red circle, <aes>", "--out", b.path])
        #expect(fromDiffusers.status == 0, "\(fromDiffusers.err)")
        let without = try textcraftor(generate + ["--prompt", "a red circle, aes", "--out", plain.path])
        #expect(without.status == 0, "\(without.err)")
        #expect(maxDifference(try latents(a), try latents(b)) == 0)  // the same rows under either token
        #expect(maxDifference(try latents(a), try latents(plain)) > 1e-4)  // and they condition the prompt
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: a.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["embeddings"] as? [String] == [folder.appendingPathComponent("aes.pt").path])

        let inspect = try textcraftor(["inspect", folder.appendingPathComponent("aes.pt").path])
        #expect(inspect.status == 0, "\(inspect.err)")
        #expect(inspect.out.contains("textual-inversion embedding (a1111-pt): token aes, 2 vectors, fits a text encoder 32 wide"), "\(inspect.out)")
    }

    /// bf16: the frozen models in bfloat16, the token's rows float32 (AdamW's master weights), and they train.
    @Test func mixedPrecisionTrainsTheToken() throws {
        let run = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: run) }
        let trained = try train(run, ["--max-steps", "1", "--adapter", "token", "--token", "<aes>", "--init-word", "red",
                                      "--mixed-precision", "bf16"])
        #expect(trained.status == 0, "\(trained.err)")
        let file = try SafeTensorsFile(url: run.appendingPathComponent("token/aes.safetensors"))
        #expect(file.info("emb_params")?.dtype == .float32 && file.info("emb_params")?.shape == [1, 32])
        let rows = try file.tensor("emb_params")
        let red = try SafeTensorsFile(url: URL(fileURLWithPath: tinySD15).appendingPathComponent("text_encoder/model.safetensors"))
            .tensor("text_model.embeddings.token_embedding.weight").narrow(dim: 0, start: 736, length: 1)
        #expect(maxDifference(rows, red) > 1e-4)
    }

    @Test func inspectNamesTheModelAnEmbeddingFits() throws {
        let xl = try textcraftor(["inspect", fixtures.appendingPathComponent("xl.safetensors").path])
        #expect(xl.out.contains("textual-inversion embedding (sdxl): token xl, 2 vectors, fits SDXL (clip_l 32 wide, clip_g 48 wide)"), "\(xl.out)")
        let file = temporaryOutput().appendingPathExtension("safetensors")
        defer { try? FileManager.default.removeItem(at: file) }
        try Tensor.save(["<wide>": Tensor.zeros([3, 1024])], to: file)
        let wide = try textcraftor(["inspect", file.path, "--json"])
        #expect(wide.out.contains(#""embedding":{"fits":"SD 2.x (1024 wide)","format":"diffusers","token":"<wide>","vectors":3,"widths":[1024]}"#), "\(wide.out)")
    }

    @Test func badTokenFlagsFailInOneLineAndWriteNothing() throws {
        let cases: [([String], String)] = [
            (["--token", "<x>"], "Error: --token: is for adapter token (add --adapter token)"),
            (["--adapter", "token", "--init-word", "red"], "Error: --token: adapter token needs the new token, e.g. --token \"<aesthetic>\""),
            (["--adapter", "token", "--token", "red", "--init-word", "red"],
             "Error: --token: token \"red\" is already in the tokenizer's vocabulary: choose another, e.g. <red>"),
            (["--adapter", "token", "--token", "<x>", "--init-word", "redcircle"],
             "Error: --init-word: init word \"redcircle\" is 6 tokens in tokenizer (re | d | c | ir | c | le): give a word that is one token"),
            (["--adapter", "token", "--token", "<x>", "--init-word", "red", "--vectors", "0"], "Error: --vectors: expected an integer >= 1, found 0"),
        ]
        for (flags, message) in cases {
            let out = temporaryOutput()
            let run = try train(out, flags)
            #expect(run.status == 1)
            #expect(run.err.trimmingCharacters(in: .whitespacesAndNewlines) == message)
            #expect(!FileManager.default.fileExists(atPath: out.path), "\(flags): the run folder was created")
        }
    }

    @Test func badEmbeddingsAreNamed() throws {
        let xl = fixtures.appendingPathComponent("xl.safetensors").path
        let learned = fixtures.appendingPathComponent("learned_embeds.safetensors").path
        let cases: [(String, [String], String)] = [
            (tinySD15, ["--embedding", "/nonexistent/gone.pt"], "Error: --embedding: /nonexistent/gone.pt: no such file or folder"),
            (tinySD15, ["--embedding", xl],
             "Error: --embedding: \(xl): an SDXL embedding (clip_l and clip_g) does not fit this SD 1.x/2.x model; use an embedding 32 wide"),
            (tinySDXL, ["--embedding", learned],
             "Error: --embedding: \(learned): an embedding for one text encoder (32 wide) does not fit this SDXL model, which needs clip_l (32 wide) and clip_g (48 wide)"),
            (tinySD15, ["--embedding", learned + ":red"],
             "Error: --embedding: \(learned): token \"red\" is already in the tokenizer's vocabulary: choose another, e.g. <red>"),
        ]
        for (model, flags, message) in cases {
            let out = temporaryOutput()
            let run = try textcraftor(["generate", "--model", model, "--prompt", "x", "--steps", "1", "--out", out.path] + flags)
            #expect(run.status == 1)
            #expect(run.err.trimmingCharacters(in: .whitespacesAndNewlines) == message)
            #expect(!FileManager.default.fileExists(atPath: out.path))
        }
    }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> Double { (a.to(.float64) - b.to(.float64)).abs().max().item() }
}

/// Data parallel with a token: 2 ranks train the rows as one process does.
@Suite(.serialized, .enabled(if: ProcessGroup.isAvailable, "built without Gloo's headers (libgloo-dev)"))
struct TokenDistributedCLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path

    @Test func twoRanksTrainTheTokenAsOneProcess() throws {
        let prompts = FileManager.default.temporaryDirectory.appendingPathComponent("dp-token-\(UUID().uuidString).txt")
        try "a red circle\na blue square\na green cat\na small dog\n".write(to: prompts, atomically: true, encoding: .utf8)
        let one = temporaryOutput(), two = temporaryOutput()
        defer { [prompts, one, two].forEach { try? FileManager.default.removeItem(at: $0) } }
        func train(_ out: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
            try textcraftor(["train", "--model", tinySD15, "--prompts", prompts.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                             "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3", "--batch-size", "4",
                             "--max-steps", "2", "--adapter", "token", "--token", "<aes>", "--init-word", "red"] + extra)
        }
        let single = try train(one, [])
        #expect(single.status == 0, "\(single.err)")
        let parallel = try train(two, ["--nproc-per-node", "2"])
        #expect(parallel.status == 0, "\(parallel.err)")
        let a = try Tensor.load(safetensors: one.appendingPathComponent("token/aes.safetensors"))["emb_params"]!
        let b = try Tensor.load(safetensors: two.appendingPathComponent("token/aes.safetensors"))["emb_params"]!
        let initial = try Tensor.load(safetensors: tinySD15Weights())["text_model.embeddings.token_embedding.weight"]!.narrow(dim: 0, start: 736, length: 1)
        #expect((a - b).abs().max().item() < 1e-6)
        #expect((a - initial).abs().max().item() > 1e-4)  // they trained
    }

    func tinySD15Weights() -> URL { URL(fileURLWithPath: tinySD15).appendingPathComponent("text_encoder/model.safetensors") }
}
