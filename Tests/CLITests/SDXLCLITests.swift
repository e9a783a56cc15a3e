import Foundation
import Testing
import Torch

let tinySDXL = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl").path

/// Every command that takes a model takes an SDXL folder (scripts/parity/make_sdxl_fixtures.py's tiny one); what is
/// not supported on it (refiners) says so in one line.
@Suite struct SDXLCLITests {
    /// The script's "clip_skip" setting through the command line: the same latents as diffusers.
    @Test func generateMatchesDiffusersAndRecordsTheSDXLSettings() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor([
            "generate", "--model", tinySDXL, "--prompt", "a red circle on a blue background", "--prompt", "two small squares, photo!",
            "--negative-prompt", "blurry", "--negative-prompt", "", "--clip-skip", "1", "--steps", "8", "--guidance", "5",
            "--seed", "42", "--height", "64", "--width", "64", "--out", out.path, "--save-latents",
        ])
        #expect(run.status == 0, "\(run.err)")
        let saved = try SafeTensorsFile(url: out.appendingPathComponent("latents.safetensors"))
        let expected = try SafeTensorsFile(
            url: repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sdxl/outputs_sdxl.safetensors"))
            .tensor("clip_skip.latents")
        let latents = try saved.tensor("latents").to(.float64), reference = expected.to(.float64)
        let error = (latents - reference).square().sum().item().squareRoot() / reference.square().sum().item().squareRoot()
        #expect(error <= 1e-4, "latents differ by \(error) relative L2")
        #expect(try saved.tensor("pooled_prompt_embeds").shape == [2, 40])
        #expect(try saved.tensor("negative_pooled_prompt_embeds").shape == [2, 40])
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["architecture"] as? String == "sdxl")
        #expect(metadata["clip_skip"] as? Int == 1)
        #expect(metadata["add_time_ids"] as? [Int] == [64, 64, 0, 0, 64, 64])
        #expect(metadata["scheduler_class"] as? String == "EulerDiscreteScheduler")
    }

    @Test func promptTwoAndCropReachTheSizeConditioning() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor([
            "generate", "--model", tinySDXL, "--prompt", "a circle", "--prompt-2", "a painting", "--negative-prompt-2", "noisy",
            "--crop", "16,8", "--steps", "2", "--seed", "1", "--height", "48", "--out", out.path,
        ])
        #expect(run.status == 0, "\(run.err)")
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["add_time_ids"] as? [Int] == [48, 64, 16, 8, 48, 64])
        #expect(metadata["prompts_2"] as? [String] == ["a painting"])
        #expect(metadata["negative_prompts_2"] as? [String] == ["noisy"])
    }

    @Test(arguments: [
        ([tinySD15, "--prompt-2", "x"],
         "Error: --prompt-2 is for SDXL models (a second text encoder and size conditioning); this is a Stable Diffusion 1.x/2.x model"),
        ([tinySD15, "--crop", "8,8"],
         "Error: --crop is for SDXL models (a second text encoder and size conditioning); this is a Stable Diffusion 1.x/2.x model"),
        ([tinySDXL, "--crop", "8"], "Error: The value '8' is invalid for '--crop <TOP,LEFT>': 8: expected two pixel offsets TOP,LEFT"),
        ([tinySDXL, "--crop", "8,9000"], "Error: --crop: expected two pixel offsets TOP,LEFT, each between 0 and 8192, found 8,9000"),
        ([tinySDXL, "--clip-skip", "3"],
         "Error: --clip-skip must be between 0 and 2 (the text encoders' layers less the penultimate one); got 3"),
        ([tinySDXL, "--mix", "original=1", "--finetuned-steps", "9"],
         "Error: --finetuned-steps must be between 0 and 2 (the scheduler's UNet calls); got 9"),
        ([tinySDXL, "--text-encoder", tinySD15 + "/tokenizer"],
         "Error: --text-encoder: \(tinySD15)/tokenizer: neither a text encoder folder (config.json) nor a folder holding text_encoder/ or text_encoder_2/"),
    ])
    func whatAModelCannotTakeFailsInOneLineAndWritesNothing(model: [String], message: String) throws {
        let out = temporaryOutput()
        let run = try textcraftor(["generate", "--model"] + model + ["--prompt", "x", "--steps", "2", "--out", out.path])
        #expect(run.status == 1)
        #expect(run.err.trimmingCharacters(in: .whitespacesAndNewlines) == message)
        #expect(!FileManager.default.fileExists(atPath: out.path), "the output folder was created")
    }

    @Test func refinersAreRefusedInOneLine() throws {
        let out = temporaryOutput()
        let refiner = temporaryOutput()
        try FileManager.default.createDirectory(at: refiner, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: refiner) }
        for item in ["text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"] {
            try FileManager.default.copyItem(atPath: tinySDXL + "/" + item, toPath: refiner.appendingPathComponent(item).path)
        }
        let index: [String: Any] = [
            "_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": true,
            "force_zeros_for_empty_prompt": false, "text_encoder": [NSNull(), NSNull()], "tokenizer": [NSNull(), NSNull()],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        ]
        try JSONSerialization.data(withJSONObject: index).write(to: refiner.appendingPathComponent("model_index.json"))
        let run = try textcraftor(["generate", "--model", refiner.path, "--prompt", "x", "--out", out.path])
        #expect(run.status == 1)
        #expect(run.err == "Error: \(refiner.path)/model_index.json: an SDXL refiner (text_encoder_2 without text_encoder): refiners are not supported, use an SDXL base model\n")
    }

    /// tokenize prints both tokenizers' ids; the second pads with "!" (id 0).
    @Test func tokenizePrintsBothTokenizers() throws {
        let run = try textcraftor(["tokenize", "--model", tinySDXL, "--pad", "a red circle!"])
        #expect(run.status == 0, "\(run.err)")
        let row = try JSONSerialization.jsonObject(with: Data(run.out.utf8)) as! [String: Any]
        let ids = try #require(row["ids"] as? [Int]), ids2 = try #require(row["ids_2"] as? [Int])
        #expect(ids.count == 77 && ids2.count == 77)
        #expect(ids.last == 999 && ids2.last == 0)
        #expect((row["tokens_2"] as? [String])?.last == "!")
    }

    @Test func inspectAndBenchTakeAnSDXLFolder() throws {
        let inspect = try textcraftor(["inspect", tinySDXL])
        #expect(inspect.status == 0, "\(inspect.err)")
        #expect(inspect.out.contains("text_encoder_2/model.safetensors") && inspect.out.contains("text_projection.weight"))
        let bench = try textcraftor(["bench", "generate", "--model", tinySDXL, "--steps", "2", "--batch", "1", "--repeats", "1",
                                     "--python", "/nonexistent/python"])
        #expect(bench.status == 0, "\(bench.err)")
        #expect(bench.out.contains("images per second"))
    }

    @Test func evalTakesAnSDXLFolderAndRefusesANonEncoderFolder() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let prompts = temporaryOutput().appendingPathExtension("txt")
        try Data("a red circle\n".utf8).write(to: prompts)
        defer { try? FileManager.default.removeItem(at: prompts) }
        let reward = ["--reward", "clip=" + repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf/clip").path]
        let common = ["eval", "--model", tinySDXL, "--prompts", prompts.path, "--steps", "2", "--out", out.path] + reward
        let refused = try textcraftor(common + ["--text-encoder", tinySD15 + "/tokenizer"])
        #expect(refused.status == 1)
        #expect(refused.err.hasPrefix("Error: --text-encoder: ") && refused.err.split(separator: "\n").count == 1, "\(refused.err)")
        let run = try textcraftor(common + ["--clip-skip", "1", "--crop", "8,8"])
        #expect(run.status == 0, "\(run.err)")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("eval.json"))) as! [String: Any]
        let sampling = try #require(record["sampling"] as? [String: Any])
        #expect(sampling["clipSkip"] as? Int == 1 && sampling["crop"] as? [Int] == [8, 8])
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("original/00000.png").path))
    }
}

/// `train` on the tiny SDXL from the command line: every --train choice, the run folder in diffusers' layout,
/// resume, the UNet stage on the fine-tuned encoders, data parallel and mixed precision.
@Suite(.serialized) struct SDXLTrainCLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path

    func promptFile() throws -> URL {
        let url = temporaryOutput().appendingPathExtension("txt")
        try "a red circle\na blue square\na green cat\na small dog\n".write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    /// `prompts` must outlive the run: `--resume` reads the file again.
    func train(_ out: URL, _ prompts: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        try textcraftor(["train", "--model", tinySDXL, "--prompts", prompts.path,
                                "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth", "--reward", "clip=\(rewards)/clip:0.5",
                                "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3", "--batch-size", "2",
                                "--seed", "5"] + extra)
    }

    func weights(_ run: URL, _ component: String) throws -> [String: Tensor] {
        try Tensor.load(safetensors: run.appendingPathComponent("\(component)/model.safetensors"))
    }

    func maxDifference(_ a: [String: Tensor], _ b: [String: Tensor]) -> Double {
        #expect(Set(a.keys) == Set(b.keys))
        return a.keys.map { (a[$0]!.to(.float64) - b[$0]!.to(.float64)).abs().max().item() }.max() ?? .infinity
    }

    /// Both encoders: text_encoder/ and text_encoder_2/ with the model's configs, resume to more steps, then the UNet
    /// stage conditioned on the run's encoders, and `generate --text-encoder RUN` with them.
    @Test func textEncodersTrainResumeAndFeedTheUNetStage() throws {
        let out = temporaryOutput(), stage2 = temporaryOutput(), images = temporaryOutput(), prompts = try promptFile()
        defer { [out, stage2, images, prompts].forEach { try? FileManager.default.removeItem(at: $0) } }
        let run = try train(out, prompts, ["--train", "text-encoders", "--max-steps", "2", "--save-every", "1"])
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains("weights in \(out.path)/text_encoder and \(out.path)/text_encoder_2"), "\(run.out)")
        for component in ["text_encoder", "text_encoder_2"] {
            #expect(try Data(contentsOf: out.appendingPathComponent("\(component)/config.json"))
                    == Data(contentsOf: URL(fileURLWithPath: tinySDXL).appendingPathComponent("\(component)/config.json")))
            let model = try Tensor.load(safetensors: URL(fileURLWithPath: tinySDXL).appendingPathComponent("\(component)/model.safetensors"))
            #expect(maxDifference(try weights(out, component), model) > 1e-4, "\(component) did not train")
        }
        #expect(try weights(out, "text_encoder_2")["text_projection.weight"] != nil)
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("run.json"))) as! [String: Any]
        #expect(record["train"] as? String == "text-encoders")

        let resumed = try textcraftor(["train", "--resume", out.path, "--max-steps", "3"])
        #expect(resumed.status == 0, "\(resumed.err)")
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 3)

        let unet = try train(stage2, prompts, ["--train", "unet", "--text-encoder", out.path, "--max-steps", "1"])
        #expect(unet.status == 0, "\(unet.err)")
        #expect(FileManager.default.fileExists(atPath: stage2.appendingPathComponent("unet/diffusion_pytorch_model.safetensors").path))
        #expect(!FileManager.default.fileExists(atPath: stage2.appendingPathComponent("text_encoder").path))

        // generate --text-encoder RUN gives the latents of the model folder with the run's encoders swapped in, as
        // diffusers would load it.
        let swapped = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: swapped) }
        try FileManager.default.copyItem(atPath: tinySDXL, toPath: swapped.path)
        for component in ["text_encoder", "text_encoder_2"] {
            try FileManager.default.removeItem(at: swapped.appendingPathComponent(component))
            try FileManager.default.copyItem(at: out.appendingPathComponent(component), to: swapped.appendingPathComponent(component))
        }
        func generate(_ model: String, _ extra: [String], _ folder: URL) throws -> Tensor {
            let run = try textcraftor(["generate", "--model", model, "--prompt", "a red circle", "--steps", "3", "--seed", "3",
                                       "--out", folder.path, "--save-latents"] + extra)
            #expect(run.status == 0, "\(run.err)")
            return try Tensor.load(safetensors: folder.appendingPathComponent("latents.safetensors"))["latents"]!
        }
        let fineTuned = try generate(tinySDXL, ["--text-encoder", out.path], images)
        let reference = try generate(swapped.path, [], images.appendingPathComponent("swapped"))
        #expect(fineTuned.toArray(Float.self) == reference.toArray(Float.self))
        let own = try generate(tinySDXL, [], images.appendingPathComponent("own"))
        #expect((own - fineTuned).abs().max().item() > 0, "the run's encoders changed nothing")
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: images.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["text_encoder"] as? String == out.path)
        // One encoder's folder goes to its place: text_encoder_2/ alone, or an SD 1.x encoder (CLIP ViT-L) as the first.
        #expect(try generate(tinySDXL, ["--text-encoder", out.appendingPathComponent("text_encoder_2").path],
                             images.appendingPathComponent("second")).shape == own.shape)
        #expect(try generate(tinySDXL, ["--text-encoder", tinySD15 + "/text_encoder"], images.appendingPathComponent("sd15")).shape == own.shape)
    }

    /// bench train on SDXL: the encoders --train names train (the step's count of products grows with the second
    /// encoder's backward); a choice the model cannot take is one line naming --train.
    @Test func benchTrainTakesSDXLAndItsEncoderChoices() throws {
        func bench(_ model: String, _ train: String) throws -> (status: Int32, err: String, json: [String: Double]) {
            let run = try textcraftor(["bench", "train", "--model", model, "--clip", "\(rewards)/clip", "--aesthetic",
                                       "\(rewards)/aesthetic.pth", "--train", train, "--batch", "1", "--steps", "2",
                                       "--window", "1", "--repeats", "1", "--json"])
            let json = run.status == 0
                ? try JSONSerialization.jsonObject(with: Data(run.out.utf8)) as! [String: Double] : [:]
            return (run.status, run.err, json)
        }
        let first = try bench(tinySDXL, "text-encoder"), both = try bench(tinySDXL, "text-encoders")
        #expect(first.status == 0 && both.status == 0, "\(first.err)\(both.err)")
        #expect(first.json["train_step_s"]! > 0 && first.json["peak_rss_mb"]! > 0)
        #expect(both.json["step_tflop"]! > first.json["step_tflop"]!, "training text_encoder_2 too adds its backward")
        let sd = try bench(tinySD15, "text-encoder-2")
        #expect(sd.status == 1)
        #expect(sd.err == "Error: --train: text-encoder-2 needs a second text encoder (SDXL), and \(tinySD15) is a Stable Diffusion 1.x/2.x model: use text-encoder or unet\n")
        let unet = try bench(tinySDXL, "unet")
        #expect(unet.status == 1)
        #expect(unet.err == "Error: --train unet: bench train times the text-encoder step\n")
    }

    /// Direct fine-tuning (images and captions) on SDXL trains both encoders.
    @Test func directModeTrainsBothEncoders() throws {
        let folder = try captionedImagesFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("out")
        let run = try textcraftor(["train", "--mode", "direct", "--data", folder.path, "--model", tinySDXL, "--train", "text-encoders",
                                   "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth", "--out", out.path,
                                   "--max-steps", "2", "--batch-size", "2", "--t-range", "100,600", "--lr", "1e-3"])
        #expect(run.status == 0, "\(run.err)")
        for component in ["text_encoder", "text_encoder_2"] {
            let model = try Tensor.load(safetensors: URL(fileURLWithPath: tinySDXL).appendingPathComponent("\(component)/model.safetensors"))
            #expect(maxDifference(try weights(out, component), model) > 1e-4, "\(component) did not train")
        }
    }

    /// Two ranks take the steps of one process with the whole batch, for both encoders.
    @Test(.enabled(if: ProcessGroup.isAvailable, "built without Gloo's headers (libgloo-dev)"))
    func twoRanksStepAsOneProcess() throws {
        let one = temporaryOutput(), two = temporaryOutput(), prompts = try promptFile()
        defer { [one, two, prompts].forEach { try? FileManager.default.removeItem(at: $0) } }
        // lr 1e-5: AdamW moves an element by about lr whatever its gradient, so one whose gradient is at rounding
        // level (the mean over 2 rows, or of 2 ranks' single rows) may move by up to lr either way; at 1e-4 such
        // elements differed by 3e-6 after 2 steps.
        let single = try train(one, prompts, ["--train", "text-encoders", "--max-steps", "2", "--lr", "1e-5"])
        #expect(single.status == 0, "\(single.err)")
        let parallel = try train(two, prompts, ["--train", "text-encoders", "--max-steps", "2", "--lr", "1e-5", "--nproc-per-node", "2"])
        #expect(parallel.status == 0, "\(parallel.err)")
        for component in ["text_encoder", "text_encoder_2"] {
            let model = try Tensor.load(safetensors: URL(fileURLWithPath: tinySDXL).appendingPathComponent("\(component)/model.safetensors"))
            #expect(maxDifference(try weights(one, component), model) > 1e-5, "\(component) did not train")
            let difference = maxDifference(try weights(two, component), try weights(one, component))
            #expect(difference <= 1e-6, "\(component): 2 ranks vs 1 process, max |Δparameter| \(difference)")
        }
    }

    /// Mixed precision: the trained encoder keeps float32 weights (the frozen models, the VAE under fp16 excepted
    /// by force_upcast, are half precision).
    @Test(arguments: ["bf16", "fp16"])
    func mixedPrecisionTrains(precision: String) throws {
        let out = temporaryOutput(), prompts = try promptFile()
        defer { [out, prompts].forEach { try? FileManager.default.removeItem(at: $0) } }
        let run = try train(out, prompts, ["--train", "text-encoder-2", "--max-steps", "2", "--mixed-precision", precision])
        #expect(run.status == 0, "\(run.err)")
        #expect(try weights(out, "text_encoder_2").values.allSatisfy { $0.dtype == .float32 })
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("text_encoder").path))
        let lines = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
    }
}
