import Foundation
import Testing
import TextCraftor
import Torch

/// The `textcraftor` binary beside this test bundle, run with arguments; returns exit status, stdout and stderr.
func textcraftor(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    var products = Bundle.main.bundleURL
    while !FileManager.default.fileExists(atPath: products.appendingPathComponent("textcraftor").path), products.path != "/" {
        products.deleteLastPathComponent()
    }
    let process = Process()
    process.executableURL = products.appendingPathComponent("textcraftor")
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// The repository root (this file is Tests/CLITests/CLITests.swift).
let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let tinySD15 = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15").path

/// A folder for direct fine-tuning: two fixture images (PNG and JPEG) with captions in metadata.jsonl.
func captionedImagesFolder() throws -> URL {
    let folder = temporaryOutput()
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    let images = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/images")
    for name in ["rgb.png", "rgb.jpg"] {
        try FileManager.default.copyItem(at: images.appendingPathComponent(name), to: folder.appendingPathComponent(name))
    }
    try """
        {"file_name": "rgb.png", "text": "noise in colour"}
        {"file_name": "rgb.jpg", "text": "the same, compressed"}
        """.write(to: folder.appendingPathComponent("metadata.jsonl"), atomically: true, encoding: .utf8)
    return folder
}

func temporaryOutput() -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)")
}

@Suite struct CLITests {
    @Test(arguments: [
        (["--steps", "0"], "Error: --steps: expected an integer >= 1, found 0"),
        (["--guidance=-1"], "Error: --guidance: expected a number >= 0, found -1.0"),
        (["--height", "60"], "Error: --height must be a positive multiple of 8 (got 60)"),
        (["--scheduler", "heun"], "Error: --scheduler \"heun\" is not supported (supported: ddim, euler, euler-ancestral, dpm, dpm-sde, pndm)"),
        (["--scheduler", "ddim", "--karras"], "Error: --karras: ddim has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)"),
        (["--scheduler", "euler-ancestral", "--karras"],
         "Error: --karras: euler-ancestral has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)"),
        (["--karras"], "Error: --karras: the model's scheduler (PNDMScheduler) has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)"),
        (["--dtype", "int8"], "Error: The value 'int8' is invalid for '--dtype <dtype>'. Please provide one of 'float32', 'float16' or 'bfloat16'."),
    ])
    func badGenerateFlagsFailInOneLineAndWriteNothing(flags: [String], message: String) throws {
        let out = temporaryOutput()
        let run = try textcraftor(["generate", "--model", tinySD15, "--prompt", "x", "--out", out.path] + flags)
        #expect(run.status == 1)
        #expect(run.err.trimmingCharacters(in: .whitespacesAndNewlines) == message)
        #expect(!FileManager.default.fileExists(atPath: out.path), "the output folder was created")
    }

    @Test func missingModelFolderIsNamed() throws {
        let out = temporaryOutput()
        let run = try textcraftor(["generate", "--model", "/nonexistent/sd", "--prompt", "x", "--out", out.path])
        #expect(run.status == 1)
        #expect(run.err == "Error: /nonexistent/sd: no such file or folder\n")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }

    @Test func generateWritesImagesMetadataAndLatents() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor([
            "generate", "--model", tinySD15, "--prompt", "a red circle", "--prompt", "a square", "--images-per-prompt", "2",
            "--steps", "3", "--seed", "7", "--scheduler", "ddim", "--out", out.path, "--save-latents",
        ])
        #expect(run.status == 0, "\(run.err)")
        let files = try FileManager.default.contentsOfDirectory(atPath: out.path).sorted()
        #expect(files == ["0000.png", "0001.png", "0002.png", "0003.png", "latents.safetensors", "metadata.json"])
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["seed"] as? Int == 7)
        #expect(metadata["steps"] as? Int == 3)
        #expect(metadata["scheduler_class"] as? String == "DDIMScheduler")
        #expect(metadata["prompts"] as? [String] == ["a red circle", "a square"])
        #expect(run.err.contains("generate 100% 3/3"))
    }

    /// `--scheduler dpm-sde --karras` end to end: the latents the command saves are diffusers' for the same seed
    /// (scripts/parity/make_sampler_fixtures.py), so the flags reach the scheduler and the noise comes from the seed.
    @Test func samplerFlagsGiveDiffusersLatents() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor([
            "generate", "--model", tinySD15, "--prompt", "a red circle on a blue background", "--prompt", "two small squares, photo",
            "--negative-prompt", "blurry", "--negative-prompt", "", "--steps", "12", "--seed", "42", "--height", "64", "--width", "64",
            "--scheduler", "dpm-sde", "--karras", "--out", out.path, "--save-latents",
        ])
        #expect(run.status == 0, "\(run.err)")
        let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("metadata.json"))) as! [String: Any]
        #expect(metadata["scheduler"] as? String == "dpm-sde" && metadata["karras"] as? Bool == true)
        #expect(metadata["scheduler_class"] as? String == "DPMSolverMultistepScheduler")
        let saved = try Tensor.load(safetensors: out.appendingPathComponent("latents.safetensors"))["latents"]!.to(.float64)
        let fixtures = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sd/outputs_samplers.safetensors")
        let expected = try Tensor.load(safetensors: fixtures)["dpm_sde_karras.latents"]!.to(.float64)
        let relative = (saved - expected).pow(2).sum().sqrt().item() / expected.pow(2).sum().sqrt().item()
        #expect(relative <= 1e-4, "latents differ by \(relative) relative L2")
    }

    @Test func tokenizePrintsIdsAndTokens() throws {
        let run = try textcraftor(["tokenize", "a photo of an astronaut riding a horse"])
        #expect(run.status == 0)
        #expect(run.out.contains(#""ids":[49406,320,1125,539,550,18376,6765,320,4558,49407]"#))
        #expect(run.out.contains(#""tokens":["<|startoftext|>","a</w>","photo</w>""#))
    }

    @Test func tokenizeRefusesAnEnormousMaxLength() throws {
        // Padded to 2^31 ids, this tried to allocate 8.6 GB and aborted.
        let run = try textcraftor(["tokenize", "--max-length", "2147483648", "--pad", "x"])
        #expect(run.status == 1)
        #expect(run.err == "Error: --max-length must be at most 65536 (got 2147483648)\n", "\(run.err)")
        let bench = try textcraftor(["bench", "tokenize", "--max-length", "65537"])
        #expect(bench.status == 1)
        #expect(bench.err == "Error: --max-length must be at most 65536 (got 65537)\n", "\(bench.err)")
        let largest = try textcraftor(["tokenize", "--max-length", "65536", "--pad", "x"])
        #expect(largest.status == 0, "\(largest.err)")
        #expect(largest.out.contains(#""ids":[49406,343,49407,49407"#), "\(largest.out.prefix(200))")
    }

    @Test func inspectListsAFolder() throws {
        let run = try textcraftor(["inspect", tinySD15 + "/unet"])
        #expect(run.status == 0)
        #expect(run.out.contains("conv_in.weight"))
        #expect(run.out.contains("[8, 4, 3, 3]"))
    }

    /// Tensor names are the file's bytes: the table shows them escaped (a terminal escape code in a name does not
    /// reach the terminal) and cuts very long ones.
    @Test func inspectEscapesTensorNames() throws {
        let folder = temporaryOutput()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("names.safetensors")
        let long = String(repeating: "x", count: 300)
        let tensor = try TensorData(dtype: .uint8, shape: [1], bytes: [7])
        try SafeTensors.write([("red\u{1B}[31mtext", tensor), (long, tensor)], to: file)
        let run = try textcraftor(["inspect", file.path])
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains("red\\u{1b}[31mtext"), "\(run.out)")
        #expect(!run.out.utf8.contains(0x1B))
        #expect(run.out.contains(String(repeating: "x", count: 200) + "…(100 more characters)"))
        #expect(!run.out.contains(String(repeating: "x", count: 201)))
    }
}

@Suite struct ScoreCommandTests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures").path

    func generated() throws -> URL {
        let out = temporaryOutput()
        let run = try textcraftor(["generate", "--model", tinySD15, "--prompt", "a red circle", "--prompt", "a square",
                                   "--steps", "2", "--seed", "3", "--out", out.path])
        #expect(run.status == 0, "\(run.err)")
        return out
    }

    @Test func scoresAGeneratedFolderWithItsOwnPrompts() throws {
        let out = try generated()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["score", "--images", out.path, "--reward", "clip=\(rewards)/hf/clip:0.5",
                                   "--reward", "pickscore=\(rewards)/hf/pickscore", "--json"])
        #expect(run.status == 0, "\(run.err)")
        let rows = run.out.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(rows.count == 3)
        #expect(rows.last?["image"] as? String == "mean")
        for row in rows {
            let clip = row["clip"] as! Double, pick = row["pickscore"] as! Double, total = row["total"] as! Double
            #expect(abs(total - (0.5 * 100 * clip + pick)) < 1e-4, "total is gamma x scale x score summed")
        }
    }

    @Test func promptCountMustMatchTheImages() throws {
        let out = try generated()
        defer { try? FileManager.default.removeItem(at: out) }
        let prompts = out.appendingPathComponent("prompts.txt")
        try "only one\n".write(to: prompts, atomically: true, encoding: .utf8)
        let run = try textcraftor(["score", "--images", out.appendingPathComponent("0000.png").path,
                                   out.appendingPathComponent("0001.png").path, "--prompts", prompts.path,
                                   "--reward", "clip=\(rewards)/hf/clip"])
        #expect(run.status == 1)
        #expect(run.err == "Error: \(prompts.path) has 1 prompts for 2 images: give one line per image\n")
    }

    @Test(arguments: ["inf", "nan"])
    func anInfiniteRewardWeightIsRefusedNotACrash(weight: String) throws {
        // score --json crashed on try! writing an inf total; the weight is now refused where it is parsed.
        let images = "\(rewards)/images/rgb.png"
        let run = try textcraftor(["score", "--images", images, "--prompt", "x", "--reward", "clip=\(rewards)/hf/clip:\(weight)", "--json"])
        #expect(run.status == 1)
        #expect(run.err.hasPrefix("Error: clip=") && run.err.hasSuffix(": the weight \(weight) is not a finite number\n"), "\(run.err)")
        #expect(run.err.split(separator: "\n").count == 1)
        #expect(run.out.isEmpty)
    }

    @Test func notAnImageIsNamed() throws {
        let bad = "\(rewards)/images/not-an-image.png"
        let run = try textcraftor(["score", "--images", bad, "--prompt", "x", "--reward", "clip=\(rewards)/hf/clip"])
        #expect(run.status == 1)
        #expect(run.err == "Error: \(bad): not a PNG or JPEG image\n")
    }
}

@Suite(.serialized) struct TrainCommandTests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path

    func promptFile(_ text: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("prompts-\(UUID().uuidString).txt")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    func train(_ out: URL, _ extra: [String], prompts: URL? = nil) throws -> (status: Int32, out: String, err: String) {
        let file = try prompts ?? promptFile("a red circle\na blue square\n")
        return try textcraftor(["train", "--model", tinySD15, "--prompts", file.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                                "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3"] + extra)
    }

    @Test(arguments: [
        (["--grad-window", "3"], "Error: --grad-window: 3 is more than sampling_steps (2)"),
        (["--reward", "vibes=/tmp"], "Error: unknown reward \"vibes\" (known: aesthetic, pickscore, hpsv2, clip, hpsv2.1, aesthetic25, imagereward)"),
        (["--batch-size", "0"], "Error: --batch-size: expected an integer >= 1, found 0"),
        (["--train", "text_encoder"],
         "Error: The value 'text_encoder' is invalid for '--train <train>'. Please provide one of 'text-encoder', 'text-encoder-2', 'text-encoders' or 'unet'."),
        (["--train", "text-encoder-2"],
         "Error: --train: text-encoder-2 needs a second text encoder (SDXL), and \(tinySD15) is a Stable Diffusion 1.x/2.x model: use text-encoder or unet"),
        (["--train", "text-encoders"],
         "Error: --train: text-encoders needs a second text encoder (SDXL), and \(tinySD15) is a Stable Diffusion 1.x/2.x model: use text-encoder or unet"),
    ])
    func badFlagsFailInOneLineAndWriteNothing(flags: [String], message: String) throws {
        let out = temporaryOutput()
        let run = try train(out, flags)
        #expect(run.status == 1)
        #expect(run.err.trimmingCharacters(in: .whitespacesAndNewlines) == message)
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }

    /// Guidance at 1 or less (no unconditional half) trains; it died with a fatal error after writing run.json.
    @Test(arguments: ["1", "0"])
    func unguidedTrainingRuns(guidance: String) throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try train(out, ["--guidance", guidance, "--max-steps", "2"])
        #expect(run.status == 0, "\(run.err)")
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(metrics.count == 2)
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("run.json"))) as! [String: Any]
        #expect(record["guidanceScale"] as? Double == Double(guidance))
    }

    @Test func promptFilesMustExistAndHoldPrompts() throws {
        let out = temporaryOutput()
        let empty = try promptFile("\n\n")
        var run = try train(out, [], prompts: empty)
        #expect(run.err == "Error: \(empty.path): no prompts\n")
        run = try train(out, [], prompts: URL(fileURLWithPath: "/nonexistent/prompts.txt"))
        #expect(run.err == "Error: /nonexistent/prompts.txt: no such file\n")
        #expect(run.status == 1)
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }

    @Test func rewardFileOfTheWrongKindIsNamed() throws {
        let out = temporaryOutput()
        let run = try train(out, ["--reward", "pickscore=\(rewards)/aesthetic.pth"])
        #expect(run.status == 1)
        #expect(run.err.hasPrefix("Error: \(rewards)/aesthetic.pth"), "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }

    @Test func unwritableOutputIsRefused() throws {
        let run = try train(URL(fileURLWithPath: "/proc/textcraftor-run"), [])
        #expect(run.status == 1)
        #expect(run.err.hasPrefix("Error: --out: /proc/textcraftor-run: cannot write there"), "\(run.err)")
    }

    @Test func resumeNeedsARun() throws {
        let folder = temporaryOutput()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let run = try textcraftor(["train", "--resume", folder.path])
        #expect(run.status == 1)
        #expect(run.err == "Error: \(folder.path): not a training run (no run.json)\n")
    }

    /// A run killed with SIGKILL mid-training and resumed ends with the weights of an uninterrupted run.
    @Test func killedAndResumedRunMatchesAStraightRun() throws {
        let straight = temporaryOutput(), killed = temporaryOutput()
        defer { [straight, killed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let steps = ["--max-steps", "6", "--save-every", "1", "--seed", "5"]
        #expect(try train(straight, steps).status == 0)

        var products = Bundle.main.bundleURL
        while !FileManager.default.fileExists(atPath: products.appendingPathComponent("textcraftor").path) { products.deleteLastPathComponent() }
        let prompts = try promptFile("a red circle\na blue square\n")
        let process = Process()
        process.executableURL = products.appendingPathComponent("textcraftor")
        process.arguments = ["train", "--model", tinySD15, "--prompts", prompts.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                             "--out", killed.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3"] + steps
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let third = killed.appendingPathComponent("checkpoints/step-00000003/state.json")
        while !FileManager.default.fileExists(atPath: third.path) && process.isRunning { usleep(20_000) }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal, "the run finished before it could be killed")

        let resumed = try textcraftor(["train", "--resume", killed.path])
        #expect(resumed.status == 0, "\(resumed.err)")
        let a = try Data(contentsOf: straight.appendingPathComponent("text_encoder/model.safetensors"))
        let b = try Data(contentsOf: killed.appendingPathComponent("text_encoder/model.safetensors"))
        #expect(a == b, "the resumed run's weights differ from the uninterrupted run's")
        let metrics = try String(contentsOf: killed.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 6)
    }
}

@Suite(.serialized) struct TrainModesTests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path

    /// A TOML config gives the run; flags override it; the run records both in run.json.
    @Test func configFileWithFlagOverrides() throws {
        let folder = temporaryOutput()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        try "a red circle\na blue square\n".write(to: folder.appendingPathComponent("prompts.txt"), atomically: true, encoding: .utf8)
        try """
            model = "\(tinySD15)"
            prompts = "prompts.txt"
            max_steps = 5
            sampling_steps = 2
            grad_window = 1
            lr = 1e-3

            [[reward]]
            name = "aesthetic"
            paths = ["\(rewards)/clip", "\(rewards)/aesthetic.pth"]
            """.write(to: folder.appendingPathComponent("run.toml"), atomically: true, encoding: .utf8)
        let out = folder.appendingPathComponent("out")
        let run = try textcraftor(["train", "--config", folder.appendingPathComponent("run.toml").path, "--max-steps", "2", "--out", out.path,
                                   "--no-vae-checkpoint"])
        #expect(run.status == 0, "\(run.err)")
        let lines = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2, "--max-steps 2 overrides the file's 5")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("run.json"))) as! [String: Any]
        #expect(record["maxSteps"] as? Int == 2)
        #expect(record["learningRate"] as? Double == 1e-3)
        #expect(record["vaeCheckpoint"] as? Bool == false)
    }

    /// Every key of a command's configuration can be given as a flag of the same name.
    @Test(arguments: [
        (["train"], TrainingConfig.keys), (["eval"], EvalConfig.keys), (["generate"], GenerationConfig.keys),
        (["demo"], DemoConfig.keys),
    ])
    func everyConfigKeyHasItsFlag(command: [String], keys: [String]) throws {
        let help = try textcraftor(command + ["--help"]).out
        for key in keys {
            let flag = "--" + key.replacingOccurrences(of: "_", with: "-")
            #expect(help.contains(flag + " ") || help.contains(flag + "\n") || help.contains(flag + "/"), "\(command) \(flag)")
        }
    }

    @Test func unetStageWritesADiffusersUNet() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let prompts = out.deletingLastPathComponent().appendingPathComponent("unet-prompts-\(UUID().uuidString).txt")
        try "a red circle\n".write(to: prompts, atomically: true, encoding: .utf8)
        let run = try textcraftor(["train", "--train", "unet", "--model", tinySD15, "--prompts", prompts.path,
                                   "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth", "--out", out.path,
                                   "--max-steps", "1", "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3"])
        #expect(run.status == 0, "\(run.err)")
        let files = try FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("unet").path).sorted()
        #expect(files == ["config.json", "diffusion_pytorch_model.safetensors"])
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("text_encoder").path))
    }

    @Test func directModeTrainsOnCaptionedImages() throws {
        let folder = try captionedImagesFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let out = folder.appendingPathComponent("out")
        let run = try textcraftor(["train", "--mode", "direct", "--data", folder.path, "--model", tinySD15,
                                   "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth", "--out", out.path,
                                   "--max-steps", "2", "--batch-size", "2", "--t-range", "100,600", "--lr", "1e-3"])
        #expect(run.status == 0, "\(run.err)")
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("text_encoder/model.safetensors").path))
        let missing = try textcraftor(["train", "--mode", "direct", "--model", tinySD15, "--reward", "clip=\(rewards)/clip",
                                       "--out", folder.appendingPathComponent("out2").path])
        #expect(missing.err == "Error: --mode direct needs --data (images with metadata.jsonl or metadata.csv)\n")
    }
}

@Suite(.serialized) struct TrainingMemoryTests {
    func peak(_ arguments: [String]) throws -> Double {
        let run = try textcraftor(["bench", "train", "--model", tinySD15,
                                   "--clip", repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf/clip").path,
                                   "--aesthetic", repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf/aesthetic.pth").path,
                                   "--size", "256", "--steps", "5", "--repeats", "1", "--json"] + arguments)
        #expect(run.status == 0, "\(run.err)")
        let object = try JSONSerialization.jsonObject(with: Data(run.out.utf8)) as! [String: Double]
        return object["peak_rss_mb"]!
    }

    /// Peak memory does not grow with the window (each configuration in its own process, 256x256 so that
    /// activations matter); plain backprop through the same window does, so the measure can tell.
    @Test func peakMemoryDoesNotGrowWithTheWindow() throws {
        let one = try peak(["--window", "1"]), five = try peak(["--window", "5"])
        let full = try peak(["--window", "5", "--gradient", "full"])
        #expect(five <= 1.3 * one, "window 5 peaks at \(five) MB, window 1 at \(one) MB")
        #expect(full > five + 50, "full backprop (\(full) MB) should need more than the windowed walk-back (\(five) MB)")
    }
}
