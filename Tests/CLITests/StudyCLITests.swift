import Foundation
import Testing
import TextCraftor

/// `textcraftor study` on the shipped bundle with tiny settings: two cheap arms end to end, resume, bad input.
@Suite(.serialized) struct StudyCLITests {
    static let tiny = ["--quick", "--steps", "1", "--batch-size", "2", "--eval-prompts", "2", "--images-per-prompt", "1",
                       "--probe-every", "1", "--probe-prompts", "1", "--sampling-steps", "3", "--grad-window", "1",
                       "--finetuned-steps", "2", "--strip-images", "2"]

    func json(_ url: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }

    @Test func quickStudyOfTwoArmsWritesTheReportAndResumes() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let first = try textcraftor(["study", "--out", out.path, "--arms", "textcraftor,aesthetic-only"] + Self.tiny)
        #expect(first.status == 0, "\(first.err)")
        // The baseline is always measured; the two arms trained once each.
        #expect(first.out.contains("study: 3 arms x 1 seed (baseline, textcraftor, aesthetic-only)"))
        #expect(first.out.contains("2 training runs, 0 arm-seeds reused"), "\(first.out)")
        #expect(first.out.contains("| finding | paper | ours (A − B, 95% interval) | verdict |"))
        #expect(first.out.contains("| The CLIP constraint prevents collapse |"))
        #expect(first.err.contains("train textcraftor"), "a progress bar for training")
        for file in ["study.json", "report.html", "verdicts.md", "settings.json", "arms/baseline/seed-0.json",
                     "arms/textcraftor/seed-0.json", "arms/aesthetic-only/seed-0.json", "runs/textcraftor/seed-0/text_encoder/model.safetensors"] {
            #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent(file).path), "\(file)")
        }
        let study = try json(out.appendingPathComponent("study.json"))
        let arms = try #require(study["arms"] as? [String: Any])
        #expect(Set(arms.keys) == ["baseline", "textcraftor", "aesthetic-only"])
        let main = try #require(arms["textcraftor"] as? [String: Any])
        let perSeed = try #require(main["per_seed"] as? [[String: Any]])
        #expect(perSeed.count == 1)
        let labels = (perSeed[0]["variants"] as? [[String: Any]])?.compactMap { $0["label"] as? String }
        #expect(labels == ["fine-tuned", "blend 0.25", "blend 0.5", "blend 0.75", "finetuned-steps"])
        #expect((perSeed[0]["history"] as? [Any])?.count == 1)
        #expect((perSeed[0]["probes"] as? [[String: Any]])?.compactMap { $0["step"] as? Int } == [0, 1])
        let findings = try #require(study["findings"] as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: findings.map { ($0["id"] as! String, $0) })
        // Findings whose arms ran get a judged verdict; the others say not run.
        #expect(["reproduced", "not reproduced", "mixed"].contains(byID["clip-constraint"]?["verdict"] as? String))
        #expect(["reproduced", "not reproduced", "mixed"].contains(byID["interpolation"]?["verdict"] as? String))
        #expect(byID["prompt-vs-direct"]?["verdict"] as? String == "not run")
        let constraint = try #require((byID["clip-constraint"]?["primary"] as? [[String: Any]])?.first)
        let difference = try #require(constraint["difference"] as? [String: Any])
        #expect(difference["basis"] as? String == "images (n=1 seed)" && difference["n"] as? Int == 2)
        let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
        #expect(html.contains("<svg") && html.contains("data:image/png;base64,") && html.contains("The verdict rule"))
        #expect(!html.contains("<script"))

        // The rerun trains nothing and gives the same numbers.
        let again = try textcraftor(["study", "--out", out.path, "--arms", "textcraftor,aesthetic-only"] + Self.tiny)
        #expect(again.status == 0, "\(again.err)")
        #expect(again.out.contains("0 training runs, 3 arm-seeds reused"), "\(again.out)")
        #expect(again.out.contains("textcraftor seed 0: reused"))
        let second = try json(out.appendingPathComponent("study.json"))
        #expect(NSDictionary(dictionary: second["arms"] as! [String: Any]).isEqual(to: arms))

        // Other settings in the same folder: one line, nothing touched.
        let other = try textcraftor(["study", "--out", out.path, "--arms", "textcraftor"] + Self.tiny + ["--steps", "2"])
        #expect(other.status == 1)
        #expect(other.err.hasPrefix("Error: --out: \(out.path) holds a study with other settings (steps 1 there, 2 here)"), "\(other.err)")
        #expect(other.err.split(separator: "\n").count == 1)
    }

    @Test func everyArmRunsEndToEndAndEveryFindingIsJudged() throws {
        // The whole of `study --quick`, every arm and finding, at tiny settings (the timed run is in the README).
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["study", "--out", out.path, "--direct-images", "4"] + Self.tiny)
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains("study: \(StudyArm.all.count) arms x 1 seed"), "\(run.out)")
        let study = try json(out.appendingPathComponent("study.json"))
        let arms = try #require(study["arms"] as? [String: Any])
        #expect(Set(arms.keys) == Set(StudyArm.all.map(\.name)))
        let findings = try #require(study["findings"] as? [[String: Any]])
        #expect(findings.count == StudyFinding.all.count)
        for finding in findings {
            let verdict = finding["verdict"] as? String
            #expect(["reproduced", "not reproduced", "mixed", "no claim"].contains(verdict), "\(finding["id"] ?? "?"): \(verdict ?? "nil")")
        }
        let guards = try #require(findings.first { $0["id"] as? String == "guards" })
        #expect((guards["guards"] as? [Any])?.count == StudyArm.guards.count + 2, "every guard, the CLIP constraint and no guard")
        let best = try #require(guards["best_guard_vs_clip_constraint"] as? [String: Any])
        #expect(StudyArm.guards.map(\.name).contains(best["a"] as? String ?? ""), "\(best)")
        let verdicts = try String(contentsOf: out.appendingPathComponent("verdicts.md"), encoding: .utf8)
        #expect(verdicts.contains(" − textcraftor, oracle quality: "))
    }

    @Test(arguments: [
        (["study", "--arms", "textcraftor,bogus"], "Error: --arms: unknown arm \"bogus\" (known: baseline, textcraftor, direct,"),
        (["study", "--seeds", "0"], "Error: --seeds: expected an integer >= 1, found 0"),
        (["study", "--grad-window", "12"], "Error: --grad-window: 12 is more than sampling_steps (10)"),
        (["study", "--finetuned-steps", "11"], "Error: --finetuned-steps: 11 is more than sampling_steps (10)"),
        (["study", "--steps", "x"], "Error: The value 'x' is invalid for '--steps <steps>'"),
    ])
    func badFlagsAreOneLineErrors(arguments: [String], message: String) throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(arguments + ["--out", out.path])
        #expect(run.status == 1)
        #expect(run.err.hasPrefix(message), "\(run.err)")
        #expect(run.err.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }

    /// Every key of `StudyConfig` is a flag of the same name; `--help` lists the arms.
    @Test func everyStudyKeyHasItsFlag() throws {
        let help = try textcraftor(["study", "--help"]).out
        for key in StudyConfig.keys {
            let flag = "--" + key.replacingOccurrences(of: "_", with: "-")
            #expect(help.contains(flag + " ") || help.contains(flag + "\n"), "\(flag)")
        }
        #expect(help.contains("textcraftor+unet"))
    }

    @Test func aFolderThatIsNotAStudyIsLeftAlone() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: out.appendingPathComponent("notes.txt"))
        let run = try textcraftor(["study", "--out", out.path] + Self.tiny)
        #expect(run.status == 1)
        #expect(run.err.contains("exists and is not a study's folder"), "\(run.err)")
    }
}
