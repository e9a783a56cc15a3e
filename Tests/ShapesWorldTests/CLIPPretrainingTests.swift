import Foundation
import Testing
import Torch

@testable import ShapesWorld

@Suite(.serialized) struct CLIPPretrainingTests {
    @Test func contrastiveLossIsLogBatchForUninformativeEmbeddings() {
        let same = Tensor.ones([8, 16])
        let loss = contrastiveLoss(imageEmbeddings: same, textEmbeddings: same, logitScale: Tensor(scalar: Float(0))).item()
        #expect(abs(loss - Foundation.log(8.0)) < 1e-5)
        // Perfectly matched one-hot pairs with a large scale: the loss goes to zero.
        let eye = Tensor((0..<64).map { Float($0 % 9 == 0 ? 1 : 0) }, shape: [8, 8])  // the 8x8 identity
        #expect(contrastiveLoss(imageEmbeddings: eye, textEmbeddings: eye, logitScale: Tensor(scalar: Float(5))).item() < 1e-3)
    }

    /// A short run of the pretraining (not the full one): the loss falls well below chance.
    @Test func shortPretrainingLearns() throws {
        let trainer = try CLIPPretrainer(seed: 1, batchSize: 32, learningRate: 2e-3)
        let first = trainer.step()
        var last = first
        for _ in 0..<40 { last = trainer.step() }
        #expect(abs(first - Foundation.log(32.0)) < 0.5, "an untrained CLIP starts near chance (\(first))")
        #expect(last < first - 0.5, "40 steps took the loss from \(first) to \(last)")
    }
}
