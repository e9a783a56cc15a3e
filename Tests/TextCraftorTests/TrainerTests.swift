import Foundation
import NN
import Testing
import Torch

@testable import TextCraftor

func temporaryRun() -> URL { FileManager.default.temporaryDirectory.appendingPathComponent("run-\(UUID().uuidString)") }

/// The trainer tests' run: batch 2 of 3 shuffled prompts, 3 sampling steps with a window of 2, seed 7.
func smallRunConfig(maxSteps: Int, saveEvery: Int, lr: Double) -> TrainingConfig {
    var config = TrainingConfig()
    config.learningRate = lr
    config.maxSteps = maxSteps
    config.saveEvery = saveEvery
    config.batchSize = 2
    config.seed = 7
    config.samplingSteps = 3
    config.gradientWindow = 2
    return config
}

func smallRunPrompts() throws -> SampledBatches<String> {
    try SampledBatches(fixturePrompts + ["a green triangle"], batchSize: 2, shuffle: true, seed: 3)
}

func makeTrainer(_ out: URL, maxSteps: Int, saveEvery: Int = 1, lr: Double = 1e-3) throws -> Trainer {
    let (pipeline, _, original, rewards) = try tinySetup()
    let config = smallRunConfig(maxSteps: maxSteps, saveEvery: saveEvery, lr: lr)
    let prompts = try smallRunPrompts()
    return try Trainer(pipeline: pipeline, original: TextEncoders(original), modelFolder: tinySD15, rewards: rewards,
                       data: .prompts(prompts), config: config, run: RunFolder(out))
}

@Suite(.serialized) struct TrainerTests {
    @Test func stoppedAndResumedRunEndsBitIdentical() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let a = try makeTrainer(straight, maxSteps: 6)
        var losses: [Double] = []
        try a.train { losses.append($0.loss) }
        #expect(losses.count == 6)

        // Stop after 3 steps (as SIGINT does), then a new trainer, as a new process would, resumes.
        let first = try makeTrainer(resumed, maxSteps: 6)
        let stopAt = StopFlag(after: 3)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        #expect(first.step == 3)
        let second = try makeTrainer(resumed, maxSteps: 6)
        try second.resume()
        #expect(second.step == 3)
        try second.train()
        for ((name, x), (_, y)) in zip(a.trainedModules[0].namedParameters, second.trainedModules[0].namedParameters) {
            #expect(x.toArray(Float.self) == y.toArray(Float.self), "\(name) differs after resume")
        }
        let (stateA, metaA) = a.optimizerState(), (stateB, metaB) = second.optimizerState()
        #expect(metaA == metaB)
        for (key, t) in stateA { #expect(t.toArray(Float.self) == stateB[key]!.toArray(Float.self), "\(key)") }
        let metrics = try String(contentsOf: resumed.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 6)
    }

    @Test func outputsAreLoadableAndCheckpointsRotate() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let trainer = try makeTrainer(out, maxSteps: 5, saveEvery: 1)
        try trainer.train()
        let run = RunFolder(out)
        #expect(run.completeCheckpoints().map(\.lastPathComponent) == ["step-00000003", "step-00000004", "step-00000005"])
        let weights = try Weights.open(run.textEncoder.appendingPathComponent("model.safetensors"))
        #expect(weights.keys.first == "text_model.embeddings.position_embedding.weight")
        #expect(FileManager.default.fileExists(atPath: run.textEncoder.appendingPathComponent("config.json").path))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: run.checkpoints.path).filter { $0.hasPrefix(".") }
        #expect(leftovers.isEmpty)
    }

    @Test func resumeNeedsACompleteCheckpoint() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        try FileManager.default.createDirectory(at: out.appendingPathComponent("checkpoints/.tmp-step-00000002"), withIntermediateDirectories: true)
        let trainer = try makeTrainer(out, maxSteps: 2)
        #expect(throws: TextCraftorError.invalidCheckpoint(folder: out.path, message: "not a training run: no complete checkpoint in checkpoints/")) {
            try trainer.resume()
        }
        #expect(throws: TextCraftorError.invalidCheckpoint(folder: "/nonexistent/run", message: "no such folder")) {
            try RunFolder(URL(fileURLWithPath: "/nonexistent/run")).latestCheckpoint()
        }
    }

    @Test func settingsAreChecked() {
        var s = TrainingConfig()
        s.batchSize = 0
        #expect(throws: TextCraftorError.invalidSetting(key: "batch_size", message: "expected an integer >= 1, found 0")) { try s.validate() }
        s = TrainingConfig()
        s.warmupSteps = 4
        #expect(s.learningRate(at: 0) == 0.25e-6)
        #expect(s.learningRate(at: 3) == 1e-6)
        #expect(s.learningRate(at: 10) == 1e-6)
    }
}

/// Counts steps and asks to stop once `after` are done.
final class StopFlag: @unchecked Sendable {
    let after: Int
    var done = 0
    init(after: Int) { self.after = after }
    func count() { done += 1 }
    func shouldStop() -> Bool { done >= after }
}
