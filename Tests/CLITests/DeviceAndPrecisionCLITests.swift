import Foundation
import Testing
import TextCraftor
import Torch

/// `--device` on every command that computes, and `train --mixed-precision`.
@Suite struct DeviceAndPrecisionCLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path
    var aesthetic: String { "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth" }

    func prompts() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("device-prompts-\(UUID().uuidString).txt")
        try "a red circle\na blue square\n".write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    /// Without CUDA, CUDA asked for is a one-line error that says why and what to do; nothing is written.
    @Test(.enabled(if: !Torch.isCUDAAvailable, "CUDA is available here"), arguments: ["generate", "score", "train", "eval", "bench train", "bench generate"])
    func cudaWithoutCUDAIsAOneLineError(command: String) throws {
        let file = try prompts()
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: file) }
        let arguments: [String] = switch command {
        case "generate": ["generate", "--model", tinySD15, "--prompt", "a cat", "--out", out.path, "--device", "cuda"]
        case "score": ["score", "--images", repository.path, "--reward", aesthetic, "--device", "cuda:0"]
        case "train": ["train", "--model", tinySD15, "--prompts", file.path, "--reward", aesthetic, "--out", out.path, "--device", "cuda"]
        case "eval": ["eval", "--model", tinySD15, "--prompts", file.path, "--reward", aesthetic, "--out", out.path, "--device", "cuda"]
        case "bench train": ["bench", "train", "--device", "cuda"]
        default: ["bench", "generate", "--device", "cuda"]
        }
        let run = try textcraftor(arguments)
        #expect(run.status == 1)
        let lines = run.err.split(separator: "\n")
        #expect(lines.count == 1, "\(run.err)")
        // A CPU-only libtorch says so; a CUDA build on a machine without a GPU says that none was found.
        #expect(run.err.hasPrefix("Error: torch.cuda: ")
                && (run.err.contains("libtorch_cuda.so does not exist: this libtorch is CPU-only")
                    || run.err.contains("device cuda:0 was asked for, 0 CUDA device(s) found")), "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }

    @Test func unknownDeviceOrPrecisionIsNamed() throws {
        let file = try prompts()
        defer { try? FileManager.default.removeItem(at: file) }
        let base = ["train", "--model", tinySD15, "--prompts", file.path, "--reward", aesthetic, "--out", temporaryOutput().path]
        let device = try textcraftor(base + ["--device", "gpu"])
        #expect(device.status == 1 && device.err == "Error: --device gpu: expected cpu, cuda or cuda:N\n")
        let precision = try textcraftor(base + ["--mixed-precision", "fp8"])
        #expect(precision.status == 1 && precision.err == "Error: The value 'fp8' is invalid for '--mixed-precision <mixed-precision>'. Please provide one of 'no', 'bf16' or 'fp16'.\n")
    }

    /// bf16 and fp16 runs take the steps of the float32 run within half precision's rounding and save the text
    /// encoder in float32 (its master weights), recording the choice for --resume. fp16 scales the loss: its first
    /// step overflows at 65536 on this model and is skipped with the scale halved, as torch's GradScaler does.
    @Test func mixedPrecisionTrainsFloat32MasterWeights() throws {
        let file = try prompts()
        var runs: [String: URL] = [:]
        defer { runs.values.forEach { try? FileManager.default.removeItem(at: $0) } }
        var metrics: [String: [[String: Any]]] = [:]
        for precision in ["no", "bf16", "fp16"] {
            let out = temporaryOutput()
            runs[precision] = out
            let run = try textcraftor(["train", "--model", tinySD15, "--prompts", file.path, "--reward", aesthetic,
                                       "--out", out.path, "--sampling-steps", "4", "--grad-window", "2", "--batch-size", "2",
                                       "--max-steps", "3", "--lr", "1e-3", "--mixed-precision", precision])
            #expect(run.status == 0, "\(run.err)")
            metrics[precision] = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
                .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
            let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("run.json"))) as! [String: Any]
            #expect(record["mixedPrecision"] as? String == precision)
            let weights = try Tensor.load(safetensors: out.appendingPathComponent("text_encoder/model.safetensors"))
            #expect(weights.values.allSatisfy { $0.dtype == .float32 })
        }
        func loss(_ precision: String, _ step: Int) -> Double { metrics[precision]![step]["loss"] as! Double }
        // The first step starts from the same weights: its loss differs only by half precision's rounding.
        for precision in ["bf16", "fp16"] {
            #expect(abs(loss(precision, 0) - loss("no", 0)) <= 0.01 * abs(loss("no", 0)), "\(precision)")
        }
        // bf16 takes every step: the mean change of the weights from the float32 run's is a small part of how far
        // three steps at lr 1e-3 move them (AdamW moves nearly every weight by about lr per step).
        let original = try Tensor.load(safetensors: URL(fileURLWithPath: tinySD15).appendingPathComponent("text_encoder/model.safetensors"))
        let reference = try Tensor.load(safetensors: runs["no"]!.appendingPathComponent("text_encoder/model.safetensors"))
        let bf16 = try Tensor.load(safetensors: runs["bf16"]!.appendingPathComponent("text_encoder/model.safetensors"))
        func meanDistance(_ a: [String: Tensor], _ b: [String: Tensor]) -> Double {
            let count = a.values.reduce(0) { $0 + $1.elementCount }
            return a.keys.reduce(0.0) { $0 + (a[$1]!.to(.float64) - b[$1]!.to(.float64)).abs().sum().item() } / Double(count)
        }
        let moved = meanDistance(reference, original)
        #expect(moved > 3e-4)
        #expect(meanDistance(bf16, reference) < 0.25 * moved, "bf16 vs float32 \(meanDistance(bf16, reference)), moved \(moved)")
        #expect(metrics["bf16"]!.allSatisfy { $0["loss_scale"] == nil && $0["skipped"] == nil })
        // fp16: the overflowed step is recorded as skipped, with the halved scale; the others step.
        let fp16 = metrics["fp16"]!
        #expect(fp16[0]["skipped"] as? Bool == true && fp16[0]["loss_scale"] as? Double == 32768)
        #expect(fp16.dropFirst().allSatisfy { $0["skipped"] == nil && ($0["grad_norm"] as? Double ?? 0) > 0 })
    }

    @Test func lossScalerHalvesOnOverflowAndDoublesAfterAGoodStretch() {
        var scaler = LossScaler()
        #expect(scaler.scale == 65536)
        let overflowed = scaler.update(gradientsFinite: false)
        #expect(!overflowed)
        #expect(scaler.scale == 32768 && scaler.goodSteps == 0)
        var stepped = 0
        for _ in 0..<(LossScaler.growthInterval - 1) where scaler.update(gradientsFinite: true) { stepped += 1 }
        #expect(stepped == LossScaler.growthInterval - 1)
        #expect(scaler.scale == 32768 && scaler.goodSteps == LossScaler.growthInterval - 1)
        let last = scaler.update(gradientsFinite: true)
        #expect(last)
        #expect(scaler.scale == 65536 && scaler.goodSteps == 0)
    }

    /// synth-model's flags (the presets' keys, shapes and configs are checked in ModelPresetTests; writing one takes
    /// 0.9 to 2.6 GB, so it is not done here).
    @Test func synthModelRefusesBadFlagsInOneLine() throws {
        let existing = temporaryOutput()
        try FileManager.default.createDirectory(at: existing, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: existing) }
        let cases: [([String], String)] = [
            (["--preset", "sd3", "--out", "/tmp/never"], "Error: --preset sd3: expected sd15, sd21, sdxl, pickscore, hpsv2, aesthetic, aesthetic25, imagereward"),
            (["--preset", "sd15", "--out", "/tmp/never", "--dtype", "int8"], "Error: --dtype int8: expected float16, bfloat16 or float32"),
            (["--preset", "sd15", "--out", existing.path], "Error: \(existing.path) already exists: choose another --out or remove it"),
        ]
        for (flags, message) in cases {
            let run = try textcraftor(["synth-model"] + flags)
            #expect(run.status == 1 && run.err == message + "\n", "\(run.err)")
        }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/never") && !FileManager.default.fileExists(atPath: "/tmp/never.partial"))
        let help = try textcraftor(["synth-model", "--help"])
        // One column for every preset, wide enough for the longest name (aesthetic25, imagereward) and two spaces.
        #expect(help.out.contains("  sd21         Stable Diffusion 2.1") && help.out.contains("  hpsv2        HPSv2"))
        #expect(help.out.contains("  aesthetic25  Aesthetic Predictor v2.5") && help.out.contains("  imagereward  ImageReward v1.0"))
    }

    /// `bench train --reference-precision` chooses the reference's precision apart from ours (the targets are
    /// stated against the authors' float32); by default it follows --mixed-precision. A stand-in Python records the
    /// arguments it is given and answers with fixed numbers, which the table prints beside ours with their ratio.
    @Test func benchTrainPassesTheReferencePrecision() throws {
        let folder = temporaryOutput()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let python = folder.appendingPathComponent("python")
        let log = folder.appendingPathComponent("arguments")
        try """
            #!/bin/sh
            echo "$*" >> \(log.path)
            echo '{"train_step_s": 1000, "peak_rss_kb": 1048576000}'
            """.write(to: python, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: python.path)
        func bench(_ flags: [String]) throws -> (out: String, arguments: String) {
            try? FileManager.default.removeItem(at: log)
            let run = try textcraftor(["bench", "train", "--repeats", "1", "--python", python.path] + flags)
            #expect(run.status == 0, "\(run.err)")
            return (run.out, (try? String(contentsOf: log, encoding: .utf8)) ?? "")
        }
        let same = try bench(["--mixed-precision", "bf16"])
        #expect(same.arguments.contains("--precision bf16") && same.out.contains("mixed precision bf16 (reference bf16)"), "\(same)")
        let authors = try bench(["--mixed-precision", "bf16", "--reference-precision", "fp32"])
        #expect(authors.arguments.contains("--precision fp32") && authors.out.contains("mixed precision bf16 (reference fp32)"), "\(authors)")
        // 1000 s and 1,024,000 MB on the reference's side: ours is far better on both, so both ratios are large.
        let row = try #require(authors.out.split(separator: "\n").first { $0.hasPrefix("one training step") })
        #expect(row.contains("1000.000 s"), "\(row)")
        let memory = try #require(authors.out.split(separator: "\n").first { $0.hasPrefix("peak resident memory") })
        #expect(memory.contains("1024000.000 MB"), "\(memory)")
        #expect(try bench([]).arguments.contains("--precision fp32"))
        let bad = try textcraftor(["bench", "train", "--reference-precision", "fp16"])
        #expect(bad.status == 1 && bad.err == "Error: --reference-precision fp16: expected fp32 or bf16\n", "\(bad.err)")
    }

    /// `bench tokenize` hands the reference script the same tokenizer folder and prompts, prints its numbers beside
    /// ours, and compares the ids through a checksum. A stand-in Python records what it was given and answers fixed
    /// numbers with the checksum of the ids the fixtures check against transformers: "wow!!!" is 2781 995, so both
    /// prompts are [49406, 2781, 995, 49407] at --max-length 4, and Σ id × (position + 1) over the 8 ids is 921518.
    @Test func benchTokenizeComparesWithTheReference() throws {
        let folder = temporaryOutput()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let promptFile = folder.appendingPathComponent("prompts.txt")
        try "wow!!!\nwow!!! wow!!!\n".write(to: promptFile, atomically: true, encoding: .utf8)
        let python = folder.appendingPathComponent("python")
        let log = folder.appendingPathComponent("arguments"), copy = folder.appendingPathComponent("prompts.json")
        func standIn(checksum: Int) throws {
            try """
                #!/bin/sh
                echo "$*" > \(log.path)
                while [ $# -gt 0 ]; do
                  [ "$1" = --prompts-file ] && cp "$2" \(copy.path)
                  [ "$1" = --tokenizer ] && ls "$2" >> \(log.path)
                  shift
                done
                echo '{"load_ms": 1000, "cold_prompts_per_s": 2, "warm_prompts_per_s": 4, "ids_checksum": \(checksum), "transformers_major": 4, "ftfy": 1}'
                """.write(to: python, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: python.path)
        }
        func bench() throws -> String {
            let run = try textcraftor([
                "bench", "tokenize", "--prompts", promptFile.path, "--max-length", "4", "--repeats", "1",
                "--python", python.path, "--script", repository.appendingPathComponent("scripts/bench/clip_tokenizer.py").path,
            ])
            #expect(run.status == 0, "\(run.err)")
            return run.out
        }
        try standIn(checksum: 921518)
        let same = try bench()
        #expect(same.contains("ids: the same as transformers 4's CLIPTokenizer (with ftfy) for all 2 prompts"), "\(same)")
        let load = try #require(same.split(separator: "\n").first { $0.hasPrefix("load vocab.json and merges.txt") })
        #expect(load.contains("1000.000 ms"), "\(load)")
        let warm = try #require(same.split(separator: "\n").first { $0.hasPrefix("2 prompts, words cached") })
        #expect(warm.contains("4.000 prompts/s"), "\(warm)")
        // The script got the prompts as a JSON list, and the bundled tokenizer written out as a transformers folder.
        let given = try JSONSerialization.jsonObject(with: Data(contentsOf: copy)) as? [String]
        #expect(given == ["wow!!!", "wow!!! wow!!!"])
        let arguments = try String(contentsOf: log, encoding: .utf8)
        #expect(arguments.contains("--max-length 4 --repeats 1"), "\(arguments)")
        for file in ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"] {
            #expect(arguments.contains("\n\(file)\n"), "\(arguments)")
        }
        try standIn(checksum: 7)
        #expect(try bench().contains("ids: differ from transformers 4's CLIPTokenizer (with ftfy): checksum 921518 here, 7 there"))
        let bad = try textcraftor(["bench", "tokenize", "--repeats", "0"])
        #expect(bad.status == 1 && bad.err == "Error: --repeats must be at least 1 (got 0)\n", "\(bad.err)")
    }

    /// The benchmarks run on the tiny pipeline and print their tables (here without a reference Python).
    @Test func benchmarksPrintTheirTablesOnTheTinyPipeline() throws {
        let generate = try textcraftor(["bench", "generate", "--model", tinySD15, "--repeats", "1", "--python", "/nonexistent/python"])
        #expect(generate.status == 0, "\(generate.err)")
        for row in ["images per second", "pipeline, 2 prompt(s), 10 steps", "UNet forward, batch 4", "achieved TFLOP/s"] {
            #expect(generate.out.contains(row), "\(generate.out)")
        }
        // The reference's failure, in one line: its last line on stderr.
        #expect(generate.out.contains("(no reference: /nonexistent/python scripts/bench/sd.py failed: ")
            && generate.out.contains("No such file or directory"), "\(generate.out)")
        let train = try textcraftor(["bench", "train", "--model", tinySD15, "--clip", "\(rewards)/clip",
                                     "--aesthetic", "\(rewards)/aesthetic.pth", "--repeats", "1", "--json", "--mixed-precision", "bf16"])
        #expect(train.status == 0, "\(train.err)")
        let numbers = try JSONSerialization.jsonObject(with: Data(train.out.utf8)) as! [String: Double]
        // The tiny step's products: a few GFLOP, done in well under a minute.
        #expect(numbers["step_tflop"]! > 1e-4 && numbers["step_tflop"]! < 1e-2, "\(numbers)")
        #expect(abs(numbers["tflops"]! * numbers["train_step_s"]! - numbers["step_tflop"]!) < 1e-9 * max(1, numbers["step_tflop"]!) + 1e-12)
        #expect(numbers["peak_rss_mb"]! > 50)
    }
}
