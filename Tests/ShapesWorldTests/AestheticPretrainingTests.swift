import Foundation
import NN
import Rewards
import Testing
import Torch

@testable import ShapesWorld

@Suite(.serialized) struct AestheticPretrainingTests {
    @Test func correlationsAndRanks() {
        #expect(ranks([3, 1, 2, 2]) == [4, 1, 2.5, 2.5])
        #expect(abs(pearsonCorrelation([1, 2, 3], [2, 4, 6]) - 1) < 1e-12)
        #expect(abs(pearsonCorrelation([1, 2, 3], [3, 2, 1]) + 1) < 1e-12)
        #expect(pearsonCorrelation([1, 1, 1], [1, 2, 3]) == 0)
    }

    /// A short run of the head's training (not the full one) on a tiny CLIP: the error on fresh
    /// held-out scenes falls to about the constant predictor's (the head calibrates), and the CLIP does not move.
    ///
    /// It does not (and cannot) assert that the predictions follow the oracle: the tiny CLIP's embeddings barely
    /// carry the quality score. A least-squares probe (the LAION head is one affine map in effect) fitted on 1,536
    /// embeddings reaches a Pearson of 0.19–0.23 on 512 others, unregularised, for a CLIP after 0 or 20 contrastive
    /// steps (0.0–0.1 with a little ridge, and no better after 60 steps), and an MSE barely below the constant's. Contrastive training on clean
    /// renders with captions that never mention quality does not make the image tower see degradations.
    @Test func shortHeadTrainingCalibratesAndLeavesTheCLIPAlone() throws {
        // A fresh tiny CLIP: 20 contrastive steps cost time and do not make its embeddings more telling (above).
        let clip = try CLIPPretrainer(seed: 1, batchSize: 32, learningRate: 2e-3)
        let trainer = try AestheticPretrainer(clip: clip.model, seed: 2, batchSize: 32, learningRate: 3e-3)
        #expect(trainer.head.inputWidth == 64)
        let clipWeights = clip.model.parameters.map { $0.detach().clone() }
        let before = trainer.evaluate(count: 256)
        var losses: [Double] = []
        for _ in 0..<40 { losses.append(trainer.step()) }
        let after = trainer.evaluate(count: 256)
        print("aesthetic head: training MSE \(losses.prefix(5)) ... \(losses.suffix(5)); held-out before: \(before); "
              + "after: \(after)")
        #expect(after.mse < before.mse, "held-out MSE \(before.mse) -> \(after.mse)")
        #expect(after.mse < 1.1 * after.baselineMSE, "held-out MSE \(after.mse), constant predictor \(after.baselineMSE)")
        #expect(after.mae < 3)
        // The CLIP is frozen: not one of its weights moved.
        for (a, b) in zip(clipWeights, clip.model.parameters) { #expect((a - b.detach()).abs().max().item() == 0) }
    }

    /// The saved head, loaded as LAION's predictor and used through `AestheticReward`, scores as the trained head.
    @Test func savedHeadLoadsIntoTheAestheticReward() throws {
        let clip = try CLIPPretrainer(seed: 3, batchSize: 8).model
        let trainer = try AestheticPretrainer(clip: clip, seed: 4, batchSize: 16)
        for _ in 0..<3 { trainer.step() }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("aesthetic-head-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try trainer.save(to: url)

        let keys = Set(try Weights.open(url).keys)
        #expect(keys == Set([0, 2, 4, 6, 7].flatMap { ["layers.\($0).weight", "layers.\($0).bias"] }))
        let predictor = try AestheticPredictor.load(url)
        #expect(predictor.inputWidth == 64)
        let reward = AestheticReward(embedder: clip, predictor: predictor)

        var generator = SplitMix64(seed: 5)
        let (images, _) = trainer.batch(count: 8, split: .heldOut, using: &generator)
        let loaded = try reward.score(images, prompts: [""]).toArray(Float.self).map(Double.init)
        let inMemory = trainer.predict(images)
        for (a, b) in zip(loaded, inMemory) { #expect(abs(a - b) < 1e-4, "\(a) vs \(b)") }
    }
}
