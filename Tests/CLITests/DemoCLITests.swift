import Foundation
import Testing

/// `textcraftor demo` and `shapes eval` on the shipped bundle, cut to a few seconds (the real demo's numbers are in
/// the README and come from `make demo`).
@Suite(.serialized) struct DemoCLITests {
    static let quick = ["--steps", "2", "--eval-prompts", "2", "--images-per-prompt", "1", "--grid-rows", "2",
                        "--batch-size", "2", "--sampling-steps", "3", "--grad-window", "1"]

    func json(_ url: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }

    @Test func demoWritesTheReportAndReplacesItsOwnOutput() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["demo", "--out", out.path] + Self.quick)
        #expect(run.status == 0, "\(run.err)")
        for file in ["grid.png", "curves.svg", "metrics.json", "report.html", "run/text_encoder/model.safetensors"] {
            #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent(file).path), "\(file)")
        }
        #expect(run.out.contains("original") && run.out.contains("fine-tuned") && run.out.contains("blend 0.5"))
        #expect(run.out.contains("aesthetic reward") && run.out.contains("oracle alignment"))
        #expect(run.err.contains("train 100%") || run.err.contains("train "), "a progress bar for training")

        let metrics = try json(out.appendingPathComponent("metrics.json"))
        #expect(metrics["clip_constraint"] as? Bool == true)
        let rewards = try #require(metrics["rewards"] as? [[String: Any]])
        #expect(rewards.map { $0["name"] as? String } == ["aesthetic", "clip"])
        let baseline = try #require(metrics["baseline"] as? [String: Double])
        let finetuned = try #require(metrics["finetuned"] as? [String: Double])
        let change = try #require(metrics["change"] as? [String: Double])
        #expect(abs(change["aesthetic_relative"]! - (finetuned["aesthetic"]! / baseline["aesthetic"]! - 1)) < 1e-12)
        #expect(abs(change["alignment_pp"]! - 100 * (finetuned["alignment"]! - baseline["alignment"]!)) < 1e-9)
        #expect((metrics["training"] as? [String: Any])?["history"].map { ($0 as! [Any]).count } == 2)
        #expect((metrics["training_prompts"] as? [String: Any])?.count == 2)
        #expect(Set((metrics["blends"] as? [String: Any])?.keys ?? [:].keys) == ["0.25", "0.5", "0.75"])
        // The report stands alone: images inline, the chart inline.
        let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
        #expect(html.contains("data:image/png;base64,") && html.contains("<svg") && !html.contains("src=\"grid.png\""))

        // A second run replaces the first one's folder; with no CLIP constraint it trains on the aesthetic alone.
        let again = try textcraftor(["demo", "--out", out.path, "--no-clip-constraint"] + Self.quick)
        #expect(again.status == 0, "\(again.err)")
        let second = try json(out.appendingPathComponent("metrics.json"))
        #expect(second["clip_constraint"] as? Bool == false)
        #expect((second["rewards"] as? [[String: Any]])?.map { $0["name"] as? String } == ["aesthetic"])
        #expect(again.out.contains("no CLIP constraint"))

        // shapes eval reads the demo's encoder.
        let table = temporaryOutput().appendingPathExtension("json")
        defer { try? FileManager.default.removeItem(at: table) }
        let eval = try textcraftor(["shapes", "eval", "--text-encoder", out.appendingPathComponent("run").path,
                                    "--prompts", "2", "--images-per-prompt", "1", "--steps", "3", "--json", table.path])
        #expect(eval.status == 0, "\(eval.err)")
        #expect(eval.out.contains("original") && eval.out.contains("alignment"))
        let encoders = try #require(try json(table)["encoders"] as? [[String: Any]])
        #expect(encoders.count == 2)
    }

    @Test func demoLeavesOtherFoldersAlone() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: out.appendingPathComponent("notes.txt"))
        let run = try textcraftor(["demo", "--out", out.path] + Self.quick)
        #expect(run.status == 1)
        #expect(run.err.contains("exists and is not an earlier demo's output"))
        #expect(try String(contentsOf: out.appendingPathComponent("notes.txt"), encoding: .utf8) == "mine")
    }

    @Test(arguments: [
        (["demo", "--rewards", "pickscore"], "Error: --rewards: unknown reward \"pickscore\" (ShapesWorld has aesthetic and clip)"),
        (["demo", "--steps", "0"], "Error: --steps: expected an integer >= 1, found 0"),
        (["demo", "--grad-window", "12"], "Error: --grad-window: 12 is more than sampling_steps (10)"),
        (["demo", "--model", "/nonexistent/bundle"], "Error: /nonexistent/bundle: no such file or folder"),
        (["shapes", "eval", "--split", "test"], "Error: --split test: expected train or held-out"),
        (["shapes", "eval", "--text-encoder", "/nonexistent/te"], "Error: --text-encoder /nonexistent/te:"),
        (["shapes", "pretrain", "--out", "/tmp", "--scale", "0"], "Error: --scale must be positive (got 0.0)"),
    ])
    func badFlagsFailInOneLine(arguments: [String], message: String) throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let extra = arguments[0] == "demo" ? ["--out", out.path] : []
        let run = try textcraftor(arguments + extra)
        #expect(run.status != 0)
        #expect(run.err.hasPrefix(message), "\(run.err)")
        #expect(run.err.split(separator: "\n").count == 1, "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }
}

/// `demo --adapter lora|token` and `--compare-adapters`, cut to a few seconds.
@Suite(.serialized) struct DemoAdapterCLITests {
    func json(_ url: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }

    @Test func loraWritesItsFileAndChangesTheImages() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["demo", "--out", out.path, "--adapter", "lora"] + DemoCLITests.quick)
        #expect(run.status == 0, "\(run.err)")
        let files = FileManager.default
        #expect(files.fileExists(atPath: out.appendingPathComponent("run/lora.safetensors").path))
        #expect(!files.fileExists(atPath: out.appendingPathComponent("run/text_encoder").path), "the encoder stays frozen")
        let metrics = try json(out.appendingPathComponent("metrics.json"))
        #expect(metrics["adapter"] as? String == "lora")
        #expect((metrics["settings"] as? [String: Any])?["learning_rate"] as? Double == 1e-3, "the LoRA learning rate")
        // The pipeline's encoder carries the adapters in evaluation: the images, so the scores, moved.
        let baseline = try #require(metrics["baseline"] as? [String: Double])
        let finetuned = try #require(metrics["finetuned"] as? [String: Double])
        #expect(abs(finetuned["aesthetic"]! - baseline["aesthetic"]!) > 1e-6)
        #expect(Set((metrics["blends"] as? [String: Any])?.keys ?? [:].keys) == ["0.25", "0.5", "0.75"])
        #expect((metrics["adapters"] as? [Any])?.isEmpty == true)
    }

    @Test func tokenHasNoBlendsAndWritesItsFile() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["demo", "--out", out.path, "--adapter", "token", "--token-lr", "0.05"] + DemoCLITests.quick)
        #expect(run.status == 0, "\(run.err)")
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("run/token/shapes.safetensors").path))
        let metrics = try json(out.appendingPathComponent("metrics.json"))
        #expect(metrics["adapter"] as? String == "token")
        #expect((metrics["blends"] as? [String: Any])?.isEmpty == true)
        #expect(!run.out.contains("blend"))
        let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
        #expect(!html.contains("blend") && html.contains("&lt;shapes&gt;"))
        // Evaluated with ", <shapes>" appended: the trained row changes the images.
        let baseline = try #require(metrics["baseline"] as? [String: Double])
        let finetuned = try #require(metrics["finetuned"] as? [String: Double])
        #expect(abs(finetuned["aesthetic"]! - baseline["aesthetic"]!) > 1e-6)
    }

    @Test func compareModeListsTheThreeAdapters() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["demo", "--out", out.path, "--compare-adapters"] + DemoCLITests.quick)
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains("adapters compared"))
        let metrics = try json(out.appendingPathComponent("metrics.json"))
        let adapters = try #require(metrics["adapters"] as? [[String: Any]])
        #expect(adapters.map { $0["adapter"] as? String } == ["full", "lora", "token"])
        let trained = adapters.map { $0["trained_parameters"] as? Int ?? 0 }
        let bytes = adapters.map { $0["file_bytes"] as? Int ?? 0 }
        #expect(trained[2] > 0 && trained[2] < trained[1] && trained[1] < trained[0], "\(trained)")
        #expect(bytes[2] > 0 && bytes[2] < bytes[1] && bytes[1] < bytes[0], "\(bytes)")
        // The token run trains one row of the encoder's width.
        #expect(trained[2] == 64, "\(trained[2])")
        for file in ["run/text_encoder/model.safetensors", "run-lora/lora.safetensors", "run-token/token/shapes.safetensors"] {
            #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent(file).path), "\(file)")
        }
        let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
        #expect(html.contains("Full, LoRA and token training"))
    }

    @Test func aBadInitWordFailsBeforeWriting() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["demo", "--out", out.path, "--adapter", "token", "--init-word", "red circle"] + DemoCLITests.quick)
        #expect(run.status != 0)
        #expect(run.err.hasPrefix("Error: --init-word"), "\(run.err)")
        #expect(run.err.split(separator: "\n").count == 1, "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.path))
        #expect(!FileManager.default.fileExists(atPath: out.path + ".partial"))
    }
}
