import Foundation
import Testing

/// `textcraftor eval` on the shipped ShapesWorld bundle, cut to a few prompts and steps.
@Suite(.serialized) struct EvalCLITests {
    static let bundle = repository.appendingPathComponent("Sources/ShapesWorld/Resources/ShapesWorld")
    /// The bundle's own encoder under another name: a variant equal to the original.
    static let sameEncoder = "same=" + bundle.appendingPathComponent("text_encoder").path
    static let quick = ["--demo", "--limit", "3", "--images-per-prompt", "2", "--steps", "3", "--grid-prompts", "2"]

    func modificationDates(_ folder: URL) throws -> [String: Date] {
        var dates: [String: Date] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: folder.path) {
            dates[name] = try FileManager.default.attributesOfItem(atPath: folder.appendingPathComponent(name).path)[.modificationDate] as? Date
        }
        return dates
    }

    @Test func equalVariantWinsNothingAndAnInterruptedEvalResumes() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["eval", "--out", out.path, "--text-encoder", Self.sameEncoder, "--blend", "0.5"] + Self.quick)
        #expect(run.status == 0, "\(run.err)")
        #expect(run.err.contains("3 variants x 3 prompts x 2 images: 18 to generate, 0 already"))
        for file in ["eval.json", "summary.json", "table.md", "results.csv", "report.html", "same/00005.png", "same@0.5/00000.png"] {
            #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent(file).path), "\(file)")
        }
        // The same encoder draws the same images, scores the same and wins on no prompt.
        for i in 0..<6 {
            let name = String(format: "%05d.png", i)
            let a = try Data(contentsOf: out.appendingPathComponent("original/\(name)"))
            #expect(a == (try Data(contentsOf: out.appendingPathComponent("same/\(name)"))))
        }
        let summaryURL = out.appendingPathComponent("summary.json")
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: summaryURL)) as! [String: Any]
        let variants = summary["variants"] as! [[String: Any]]
        #expect(variants.map { $0["name"] as! String } == ["original", "same", "same@0.5"])
        #expect(summary["rewards"] as? [String] == ["aesthetic", "clip", "alignment", "quality"])
        let original = variants[0]["rewards"] as! [String: [String: Any]], same = variants[1]["rewards"] as! [String: [String: Any]]
        for reward in ["aesthetic", "clip", "alignment", "quality"] {
            #expect(same[reward]!["win_rate"] as? Double == 0, "\(reward)")
            #expect(NSDictionary(dictionary: same[reward]!["overall"] as! [String: Any])
                    == NSDictionary(dictionary: original[reward]!["overall"] as! [String: Any]), "\(reward)")
        }
        // One CSV row per image and reward.
        let csv = try String(contentsOf: out.appendingPathComponent("results.csv"), encoding: .utf8)
        #expect(csv.split(separator: "\n").count == 1 + 3 * 6 * 4)
        // table.md: one row per variant, one column per reward.
        let table = try String(contentsOf: out.appendingPathComponent("table.md"), encoding: .utf8)
        #expect(table.contains("| variant | aesthetic | clip | alignment | quality |"))
        #expect(table.components(separatedBy: "\n\n")[1].split(separator: "\n").count == 2 + 3)
        let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
        #expect(html.contains("<svg") && html.contains("data:image/png;base64,") && !html.contains("src=\"same/"))
        try screenshotIfChromium(out.appendingPathComponent("report.html"))

        // Interrupted: prompt 1's images of one variant and the results are gone. The rerun draws only those two.
        let before = try Data(contentsOf: summaryURL)
        let untouched = try modificationDates(out.appendingPathComponent("same@0.5"))
        for name in ["00002.png", "00003.png"] { try FileManager.default.removeItem(at: out.appendingPathComponent("same@0.5/\(name)")) }
        try FileManager.default.removeItem(at: summaryURL)
        let again = try textcraftor(["eval", "--out", out.path, "--text-encoder", Self.sameEncoder, "--blend", "0.5"] + Self.quick)
        #expect(again.status == 0, "\(again.err)")
        #expect(again.err.contains("2 to generate, 16 already"), "\(again.err)")
        #expect(try Data(contentsOf: summaryURL) == before)
        let after = try modificationDates(out.appendingPathComponent("same@0.5"))
        for (name, date) in untouched where !["00002.png", "00003.png"].contains(name) { #expect(after[name] == date, "\(name)") }

        // Another run's images are refused, then replaced with --overwrite.
        let other = try textcraftor(["eval", "--out", out.path, "--text-encoder", Self.sameEncoder] + Self.quick + ["--steps", "2"])
        #expect(other.status != 0)
        #expect(other.err.split(separator: "\n").count == 1 && other.err.contains("holds images of a different run"), "\(other.err)")
        #expect(other.err.contains("--overwrite"))
        let replaced = try textcraftor(["eval", "--out", out.path, "--text-encoder", Self.sameEncoder, "--overwrite"] + Self.quick + ["--steps", "2"])
        #expect(replaced.status == 0, "\(replaced.err)")
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("same@0.5").path))
    }

    /// Where Chromium is installed, the report draws in it headless (scripts/eval/screenshot-report.sh): a screenshot of
    /// some size comes back. Skipped without Chromium (CI does not install it).
    func screenshotIfChromium(_ report: URL) throws {
        guard ["/usr/bin/chromium", "/usr/bin/chromium-browser"].contains(where: FileManager.default.fileExists) else { return }
        let shot = temporaryOutput().appendingPathExtension("png")
        defer { try? FileManager.default.removeItem(at: shot) }
        let process = Process()
        process.executableURL = repository.appendingPathComponent("scripts/eval/screenshot-report.sh")
        process.arguments = [report.path, shot.path, "900x1200"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let size = (try? FileManager.default.attributesOfItem(atPath: shot.path)[.size] as? Int) ?? 0
        #expect(size > 20_000, "screenshot of \(size) bytes")
    }

    @Test(arguments: [
        (["--parti", "--category", "Dinosaurs"], "no prompts with Category \"Dinosaurs\""),
        (["--text-encoder", "x=/nonexistent/encoder"], "--text-encoder: x=/nonexistent/encoder: not a text encoder folder"),
        (["--limit", "0"], "--limit: expected an integer >= 1, found 0"),
        (["--blend", "0.5"], "--blend: needs text_encoder"),
        // The bundle's scheduler is DDIM; errors about the schedulers come after the demo's encoder is found.
        (["--text-encoder", sameEncoder, "--karras"],
         "Error: --karras: the model's scheduler (DDIMScheduler) has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)"),
        (["--text-encoder", sameEncoder, "--scheduler", "dpm", "--scheduler", "trainer", "--karras"],
         "Error: --karras: trainer (DDIM) has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)"),
        (["--text-encoder", sameEncoder, "--scheduler", "lms"],
         "Error: --scheduler \"lms\" is not supported (supported: ddim, euler, euler-ancestral, dpm, dpm-sde, pndm)"),
    ])
    func badInputsFailInOneLine(flags: [String], message: String) throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["eval", "--demo", "--out", out.path] + flags)
        #expect(run.status != 0)
        #expect(run.err.split(separator: "\n").count == 1 && run.err.contains(message), "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("eval.json").path))
    }

    @Test func emptyPromptFileAndForeignFolderAreRefused() throws {
        let folder = temporaryOutput()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let empty = folder.appendingPathComponent("empty.txt")
        try Data("\n  \n".utf8).write(to: empty)
        let rewards = ["--reward", "clip=" + Self.bundle.appendingPathComponent("rewards/clip").path]
        let run = try textcraftor(["eval", "--model", Self.bundle.path, "--prompts", empty.path, "--out", folder.appendingPathComponent("o").path] + rewards)
        #expect(run.status != 0 && run.err.split(separator: "\n").count == 1 && run.err.contains("empty.txt: no prompts"), "\(run.err)")
        // A folder with other things in it and no eval.json is never written to.
        let prompts = folder.appendingPathComponent("p.txt")
        try Data("a large red circle on the left on a blue background\n".utf8).write(to: prompts)
        let foreign = try textcraftor(["eval", "--model", Self.bundle.path, "--prompts", prompts.path, "--out", folder.path, "--overwrite"] + rewards)
        #expect(foreign.status != 0 && foreign.err.contains("holds no eval.json"), "\(foreign.err)")
        #expect(!FileManager.default.fileExists(atPath: folder.appendingPathComponent("eval.json").path))
    }
}
