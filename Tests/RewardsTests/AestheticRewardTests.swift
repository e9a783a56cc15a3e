import Foundation
import NN
import StableDiffusion
import Testing
import Torch

@testable import Rewards

@Suite struct AestheticRewardTests {
    static func clip() throws -> CLIPModel { try CLIPModel.load(folder: HFFixtures.clip) }

    @Test(arguments: PreprocessingMode.allCases)
    func matchesReference(mode: PreprocessingMode) throws {
        let reward = try AestheticReward(embedder: try Self.clip(), weights: HFFixtures.aesthetic)
        #expect(reward.name == "aesthetic" && reward.predictor.inputWidth == 16)
        try HFFixtures.expectMatchesReference(reward, key: "aesthetic", mode: mode)
    }

    /// The aesthetic and CLIP-score rewards on one CLIP share its image forward within an evaluation: the same
    /// scores and gradients as with two copies of the model, for one vision tower's work less.
    @Test func rewardsOnOneCLIPShareTheImageForward() throws {
        let images = try HFFixtures.output("images")
        func run(_ first: CLIPModel, _ second: CLIPModel) throws -> (Tensor, Tensor, FLOPCounter.Count) {
            let weighted = WeightedReward()
            weighted.add(try AestheticReward(embedder: first, weights: HFFixtures.aesthetic))
            weighted.add(CLIPScoreReward(model: second))
            let input = images.detach().requiringGrad()
            let ((total, _), count) = try FLOPCounter.counting { try weighted.evaluate(input, prompts: ["a", "b"]) }
            total.sum().backward()
            return (total, input.grad!, count)
        }
        let shared = try Self.clip()
        let (sharedTotal, sharedGrad, sharedCount) = try run(shared, shared)
        let (total, grad, count) = try run(try Self.clip(), try Self.clip())
        #expect((sharedTotal - total).abs().max().item() == 0)
        #expect((sharedGrad - grad).abs().max().item() < 1e-6 * grad.abs().max().item())
        let vision = try Self.clip()
        let (_, visionCount) = withNoGrad { FLOPCounter.counting { vision.imageFeatures(ImagePreprocessor(size: vision.imageSize)(images, mode: .training)) } }
        #expect(visionCount.forward > 0)
        #expect(abs(count.forward - sharedCount.forward - visionCount.forward) < 1e-6 * count.forward)
    }

    /// The same head from a safetensors copy, and with the CLIP model loaded from its folder.
    @Test func safetensorsCopyGivesTheSameScores() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let copy = folder.appendingPathComponent("aesthetic.safetensors")
        try AestheticPredictor.load(HFFixtures.aesthetic).save(to: copy)
        let reward = try AestheticReward(clipFolder: HFFixtures.clip, weights: copy, preprocessing: .evaluation)
        let scores = try reward.score(try HFFixtures.output("images"), prompts: ["unused"])
        #expect(HFFixtures.relativeError(scores, try HFFixtures.output("aesthetic.evaluation.scores")) < 1e-4)
    }

    /// The predictor's layout, as the LAION checkpoint's: five linear layers at 0, 2, 4, 6, 7 of a Sequential.
    @Test func predictorLayout() throws {
        let predictor = try AestheticPredictor.load(HFFixtures.aesthetic)
        #expect(predictor.namedParameters.map { "\($0.name) \($0.tensor.shape)" } == [
            "layers.0.weight [1024, 16]", "layers.0.bias [1024]", "layers.2.weight [128, 1024]", "layers.2.bias [128]",
            "layers.4.weight [64, 128]", "layers.4.bias [64]", "layers.6.weight [16, 64]", "layers.6.bias [16]",
            "layers.7.weight [1, 16]", "layers.7.bias [1]",
        ])
    }

    /// A pickled `os.system` call in the checkpoint is refused at the GLOBAL opcode; nothing is run.
    @Test func maliciousCheckpointIsRefusedNotRun() throws {
        let marker = "/tmp/textcraftor-pwned"
        try? FileManager.default.removeItem(atPath: marker)
        let error = #expect(throws: SerializationError.self) {
            try AestheticReward(embedder: try Self.clip(), weights: HFFixtures.badAesthetic)
        }
        #expect(error?.description == "refusing to load torch checkpoint \(HFFixtures.badAesthetic.path): "
            + "data.pkl refers to 'posix.system', which is not an allowed global")
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    /// A head trained for another embedding width: the error names the predictor and both widths.
    @Test func embeddingWidthMismatch() throws {
        let predictor = AestheticPredictor(VarBuilder(initializingWith: Generator(seed: 1)), inputWidth: 768)
        let reward = AestheticReward(embedder: try Self.clip(), predictor: predictor, predictorOrigin: "head.pth")
        #expect(throws: RewardError.invalidModel(
            file: "head.pth", message: "the predictor reads 768-wide image embeddings, the CLIP model gives 16")) {
            try reward.score(try HFFixtures.output("images"), prompts: ["x"])
        }
    }
}
