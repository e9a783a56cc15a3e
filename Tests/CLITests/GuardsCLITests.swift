import Foundation
import Testing
import Torch

/// `train`'s guards against reward hacking, run as a user would on the ShapesWorld bundle.
@Suite(.serialized) struct GuardsCLITests {
    let bundle = repository.appendingPathComponent("Sources/ShapesWorld/Resources/ShapesWorld").path
    var clip: String { bundle + "/rewards/clip" }
    var aesthetic: String { "aesthetic=\(clip),\(bundle)/rewards/aesthetic.safetensors" }

    func file(_ lines: [String]) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("guards-\(UUID().uuidString).txt")
        try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    /// A short run; the prompt file stays (a resume reads it again) in the temporary folder.
    func train(_ out: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        let prompts = try file(["a red circle, on a blue background", "a small green square on the left over a white background",
                                "a yellow triangle at the top against a black backdrop", "a large cyan circle in the centre, on a red background"])
        return try textcraftor(["train", "--model", bundle, "--prompts", prompts.path, "--reward", aesthetic, "--out", out.path,
                                "--sampling-steps", "4", "--grad-window", "2", "--guidance", "5", "--batch-size", "2",
                                "--lr", "3e-3", "--save-every", "100"] + extra)
    }

    func metrics(_ run: URL) throws -> [[String: Any]] {
        try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    /// Early stopping on CLIP score while training aesthetic: held_out at step 0 and every step, the run stops where
    /// the logged values run out of patience, and OUT/best/ holds the best step's encoder.
    @Test func earlyStoppingOnShapesWorld() throws {
        let out = temporaryOutput()
        let held = try file(["a magenta circle on the right, on a white background", "a blue triangle over a yellow background"])
        defer { try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: held) }
        let run = try train(out, ["--max-steps", "8", "--early-stop", "clip=\(clip)", "--early-stop-every", "1",
                                  "--early-stop-patience", "2", "--held-out-prompts", held.path, "--proximity-weight", "1",
                                  "--random-window"])
        #expect(run.status == 0, "\(run.err)")
        let lines = try metrics(out)
        #expect(lines.first?["step"] as? Int == 0 && lines.first?["held_out"] is Double)
        // The patience rule over the logged values.
        var best = -Double.infinity, bestStep = 0, since = 0, stopStep: Int? = nil
        for line in lines {
            let value = line["held_out"] as! Double, step = line["step"] as! Int
            if value > best { (best, bestStep, since) = (value, step, 0) } else { since += 1 }
            if since == 2 { stopStep = step; break }
        }
        let last = lines.last!["step"] as! Int
        if let stopStep {
            #expect(last == stopStep)
            #expect(run.out.contains("stopped early at step \(stopStep): held-out clip did not improve for 2 evaluations; best step \(bestStep)"), "\(run.out)")
        } else {
            #expect(last == 8)
            #expect(run.out.contains("best step \(bestStep)"), "\(run.out)")
        }
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("best/best.json"))) as! [String: Any]
        #expect(record["step"] as? Int == bestStep)
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("best/text_encoder/model.safetensors").path))
        // The other guards are logged too.
        for line in lines.dropFirst() {
            #expect(line["proximity"] is Double)
            #expect((1...2).contains(line["grad_window"] as? Int ?? 0))
        }
        // Resuming a run that stopped does not train further.
        if stopStep != nil {
            let again = try textcraftor(["train", "--resume", out.path])
            #expect(again.status == 0, "\(again.err)")
            #expect(again.err.contains("this run stopped early"))
            #expect(try metrics(out).count == lines.count)
        }
    }

    /// Data-parallel (a group of one over Gloo): the held-out value and the proximity go through the all-reduce and
    /// come back as they were.
    @Test(.enabled(if: ProcessGroup.isAvailable, "built without Gloo's headers (libgloo-dev)"))
    func aProcessGroupAveragesTheGuards() throws {
        let alone = temporaryOutput(), grouped = temporaryOutput()
        let held = try file(["a blue triangle over a yellow background"])
        defer { [alone, grouped, held].forEach { try? FileManager.default.removeItem(at: $0) } }
        let flags = ["--max-steps", "2", "--early-stop", "clip=\(clip)", "--early-stop-every", "1", "--held-out-prompts", held.path,
                     "--proximity-weight", "1"]
        let a = try train(alone, flags), b = try train(grouped, flags + ["--dist-backend", "gloo"])
        #expect(a.status == 0 && b.status == 0, "\(a.err) \(b.err)")
        func guards(_ run: URL) throws -> [[Double?]] {
            try metrics(run).map { [$0["held_out"] as? Double, $0["proximity"] as? Double] }
        }
        #expect(try guards(alone) == guards(grouped))
        #expect(try guards(alone).count == 3)
    }

    @Test(arguments: [
        (["--proximity-weight=-1"], "Error: --proximity-weight: expected a number >= 0, found -1.0"),
        (["--early-stop-every", "0", "--early-stop", "clip=/x"], "Error: --early-stop-every: expected an integer >= 1, found 0"),
        (["--early-stop", "aesthetic=/a,/b"],
         "Error: --early-stop: aesthetic is a trained reward: early stopping needs a signal the run does not optimise (e.g. clip when training aesthetic)"),
        (["--early-stop", "clip=/nonexistent/clip", "--held-out-prompts", "HELD"], "Error: --early-stop: /nonexistent/clip"),
        (["--early-stop", "oracle"], "Error: --held-out-prompts: early stopping holds out every tenth prompt, and the prompt file has 4: give held-out prompts"),
        (["--proximity-weight", "1", "--train", "unet"],
         "Error: --proximity-weight: the UNet stage trains no text encoder: there is no embedding to keep close"),
    ])
    func badValuesFailInOneLineAndWriteNothing(flags: [String], message: String) throws {
        let out = temporaryOutput()
        let held = try file(["a blue triangle over a yellow background"])
        defer { try? FileManager.default.removeItem(at: held) }
        let run = try train(out, flags.map { $0 == "HELD" ? held.path : $0 })
        #expect(run.status == 1)
        #expect(run.err.hasPrefix(message), "\(run.err)")
        #expect(run.err.split(separator: "\n").count == 1, "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }
}
