import Foundation
import Rewards
import Testing
import Torch

@testable import TextCraftor

/// The trainer with normalize_rewards running: the moments are checkpointed and restored, and metrics.jsonl has each
/// reward's contribution.
@Suite(.serialized) struct RewardNormalizationTrainingTests {
    func makeTrainer(_ out: URL, maxSteps: Int) throws -> Trainer {
        let (pipeline, _, original, plain) = try tinySetup()
        var config = smallRunConfig(maxSteps: maxSteps, saveEvery: 1, lr: 1e-3)
        config.normalizeRewards = .running
        let rewards = WeightedReward(normalization: .running)
        for term in plain.terms { rewards.add(term.reward, gamma: term.gamma) }
        return try Trainer(pipeline: pipeline, original: TextEncoders(original), modelFolder: tinySD15, rewards: rewards,
                           data: .prompts(try smallRunPrompts()), config: config, run: RunFolder(out))
    }

    @Test func resumeKeepsTheRunningStatisticsAndMetricsHaveContributions() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let a = try makeTrainer(straight, maxSteps: 3)
        try a.train()
        #expect(a.rewards.runningMoments["aesthetic"]?.count == 6 && a.rewards.runningMoments["clip"]?.count == 6)

        let first = try makeTrainer(resumed, maxSteps: 3)
        let stopAt = StopFlag(after: 2)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        #expect(first.step == 2)
        let second = try makeTrainer(resumed, maxSteps: 3)
        try second.resume()
        #expect(second.rewards.runningMoments == first.rewards.runningMoments)
        #expect(second.rewards.runningMoments["aesthetic"]?.count == 4)
        try second.train()
        #expect(second.rewards.runningMoments == a.rewards.runningMoments)
        for ((name, x), (_, y)) in zip(a.trainedModules[0].namedParameters, second.trainedModules[0].namedParameters) {
            #expect(x.toArray(Float.self) == y.toArray(Float.self), "\(name) differs after resume")
        }

        let lines = try String(contentsOf: resumed.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 3)
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let aesthetic = try #require(object["aesthetic_contribution"] as? Double)
            let clip = try #require(object["clip_contribution"] as? Double)
            let loss = try #require(object["loss"] as? Double)
            #expect(abs(loss + aesthetic + clip) < 1e-4 * max(1, abs(loss)), "loss \(loss) vs contributions \(aesthetic) + \(clip)")
        }
    }
}
