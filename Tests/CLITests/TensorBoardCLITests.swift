import Foundation
import Rewards
import Testing
import TextCraftor
import Torch

/// `textcraftor train` writes TensorBoard event files beside metrics.jsonl, read back here with the Swift reader
/// (every record's CRCs verified); scripts/check_tensorboard.py does the same with TensorBoard's own.
@Suite(.serialized) struct TensorBoardCLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path

    /// A run in `out`, its prompt file beside it (`--resume` reads the prompts again).
    func train(_ out: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        let prompts = out.appendingPathExtension("prompts.txt")
        try "a red circle\na blue square\n".write(to: prompts, atomically: true, encoding: .utf8)
        return try textcraftor([
            "train", "--model", tinySD15, "--prompts", prompts.path, "--out", out.path,
            "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth", "--reward", "clip=\(rewards)/clip",
            "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-3", "--batch-size", "2",
        ] + extra)
    }

    /// A metrics.jsonl value (decoded with JSONDecoder, whose numbers are correctly rounded).
    enum MetricValue: Decodable {
        case number(Double), flag(Bool)

        init(from decoder: Decoder) throws {
            let value = try decoder.singleValueContainer()
            if let number = try? value.decode(Double.self) { self = .number(number) } else { self = .flag(try value.decode(Bool.self)) }
        }
    }

    /// metrics.jsonl's lines, in order.
    func metrics(_ out: URL) throws -> [[String: MetricValue]] {
        try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n").map {
            try JSONDecoder().decode([String: MetricValue].self, from: Data($0.utf8))
        }
    }

    /// Every number of every metrics.jsonl line is a scalar of its name at its step, equal as float32; each step is
    /// logged once.
    func expectEventsMatchMetrics(_ out: URL) throws -> [TensorBoardEvent] {
        let folder = out.appendingPathComponent("tensorboard")
        let events = try TensorBoardLog.readFolder(folder)
        for file in TensorBoardLog.eventFiles(in: folder) {
            #expect(try TensorBoardLog.read(file).first?.fileVersion == "brain.Event:2", "\(file.lastPathComponent)")
        }
        let steps = events.filter { $0.fileVersion == nil }
        let lines = try metrics(out)
        func number(_ value: MetricValue?) -> Double? { if case .number(let number) = value { number } else { nil } }
        #expect(steps.map(\.step) == lines.map { Int64(number($0["step"]) ?? -1) }, "each step once, in order")
        for (event, line) in zip(steps, lines) {
            var scalars: [String: Float] = [:]
            for value in event.values { if let scalar = value.scalar { scalars[value.tag] = scalar } }
            let numbers = line.compactMapValues(number).filter { $0.key != "step" }
            #expect(Set(scalars.keys) == Set(numbers.keys), "step \(event.step)")
            for (key, value) in numbers { #expect(scalars[key] == Float(value), "step \(event.step) \(key)") }
        }
        return steps
    }

    @Test func trainLogsMetricsAndImagesAndResumesWithoutDuplicates() throws {
        let out = temporaryOutput()
        defer { [out, out.appendingPathExtension("prompts.txt")].forEach { try? FileManager.default.removeItem(at: $0) } }
        let run = try train(out, ["--max-steps", "4", "--save-every", "2", "--tensorboard-images-every", "2"])
        #expect(run.status == 0, "\(run.err)")
        let lines = try metrics(out)
        #expect(lines.count == 4)
        #expect(Set(lines[0].keys) == ["step", "loss", "aesthetic", "clip", "aesthetic_contribution", "clip_contribution", "grad_norm", "lr", "step_time"])
        var steps = try expectEventsMatchMetrics(out)

        // The images: at steps 2 and 4, a grid of the batch's two 64-pixel images side by side, a PNG libpng reads.
        let images = steps.flatMap { event in event.values.compactMap { $0.image.map { (event.step, $0) } } }
        #expect(images.map(\.0) == [2, 4])
        for (_, image) in images {
            #expect((image.width, image.height, image.colorspace) == (2 * 64 + 2, 64, 3))
            let file = out.appendingPathComponent("grid.png")
            try image.encoded.write(to: file)
            #expect(try ImageIO.read(file).shape == [3, 64, 130])
        }

        // Resumed from step 2 (as after a crash in step 4): steps 3 and 4 are done again and logged once, in a
        // second file; the first keeps steps 1 and 2.
        try FileManager.default.removeItem(at: out.appendingPathComponent("checkpoints/step-00000004"))
        let resumed = try textcraftor(["train", "--resume", out.path])
        #expect(resumed.status == 0, "\(resumed.err)")
        let files = TensorBoardLog.eventFiles(in: out.appendingPathComponent("tensorboard"))
        #expect(files.count == 2)
        #expect(try TensorBoardLog.read(files[0]).map(\.step) == [0, 1, 2])
        steps = try expectEventsMatchMetrics(out)
        #expect(steps.map(\.step) == [1, 2, 3, 4])
    }

    /// Data-parallel: rank 0 alone writes events (one file, each step once).
    @Test(.enabled(if: ProcessGroup.isAvailable, "built without Gloo's headers (libgloo-dev)"))
    func onlyRankZeroLogs() throws {
        let out = temporaryOutput()
        defer { [out, out.appendingPathExtension("prompts.txt")].forEach { try? FileManager.default.removeItem(at: $0) } }
        let run = try train(out, ["--max-steps", "2", "--nproc-per-node", "2", "--tensorboard-images-every", "1"])
        #expect(run.status == 0, "\(run.err)")
        #expect(TensorBoardLog.eventFiles(in: out.appendingPathComponent("tensorboard")).count == 1)
        let steps = try expectEventsMatchMetrics(out)
        #expect(steps.map(\.step) == [1, 2])
        // Rank 0's rows of the global batch of 2: one image per grid.
        #expect(steps.compactMap { $0.values.first { $0.image != nil }?.image?.width } == [64, 64])
    }

    @Test func noTensorBoardWritesNoEvents() throws {
        let out = temporaryOutput()
        defer { [out, out.appendingPathExtension("prompts.txt")].forEach { try? FileManager.default.removeItem(at: $0) } }
        let run = try train(out, ["--max-steps", "1", "--no-tensorboard"])
        #expect(run.status == 0, "\(run.err)")
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("tensorboard").path))
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("run.json"))) as! [String: Any]
        #expect((record["tensorBoard"] as? [String: Any])?["enabled"] as? Bool == false)
    }

    @Test func negativeImageIntervalIsRefused() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out.appendingPathExtension("prompts.txt")) }
        let run = try train(out, ["--tensorboard-images-every=-1"])
        #expect(run.status == 1)
        #expect(run.err == "Error: --tensorboard-images-every: expected an integer >= 0, found -1\n")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }
}
