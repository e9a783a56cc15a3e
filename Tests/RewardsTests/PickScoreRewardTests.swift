import Foundation
import StableDiffusion
import Testing
import Torch

@testable import Rewards

@Suite struct PickScoreRewardTests {
    static func model() throws -> CLIPModel { try CLIPModel.load(folder: HFFixtures.pickscore) }

    @Test(arguments: PreprocessingMode.allCases)
    func matchesReference(mode: PreprocessingMode) throws {
        try HFFixtures.expectMatchesReference(PickScoreReward(model: try Self.model()), key: "pickscore", mode: mode)
    }

    @Test func loadsFromAFolderAndScalesTheCosine() throws {
        let reward = try PickScoreReward(folder: HFFixtures.pickscore, preprocessing: .evaluation)
        #expect(reward.name == "pickscore" && reward.preprocessing == .evaluation)
        let images = try HFFixtures.output("images")
        let clip = CLIPScoreReward(model: reward.model, preprocessing: .evaluation)
        let ratio = try reward.score(images, prompts: HFFixtures.prompts) / clip.score(images, prompts: HFFixtures.prompts)
        let scale = try Self.model().logitScaleParameter.exp().item()
        #expect(abs(scale - 100) < 10)
        for r in ratio.toArray(Double.self) { #expect(abs(r - scale) < 1e-4 * scale) }
    }

    /// One prompt serves every image; fewer prompts than images (but more than one) is an error.
    @Test func promptCounts() throws {
        let reward = try PickScoreReward(model: try Self.model())
        let images = try HFFixtures.output("images")
        let three = Tensor.cat([images, images.narrow(dim: 0, start: 0, length: 1)], dim: 0)
        #expect(throws: RewardError.promptCount(images: 3, prompts: 2)) { try reward.score(three, prompts: HFFixtures.prompts) }
        #expect(RewardError.promptCount(images: 3, prompts: 2).description
            == "3 images but 2 prompts: give one prompt per image, or one for all")
        let one = try reward.score(images, prompts: [HFFixtures.prompts[0]])
        let repeated = try reward.score(images, prompts: [HFFixtures.prompts[0], HFFixtures.prompts[0]])
        #expect(one.shape == [2] && HFFixtures.relativeError(one, repeated) == 0)
    }
}

@Suite struct CLIPScoreRewardTests {
    @Test(arguments: PreprocessingMode.allCases)
    func matchesReference(mode: PreprocessingMode) throws {
        let reward = try CLIPScoreReward(folder: HFFixtures.clip)
        #expect(reward.name == "clip" && reward.preprocessing == .training)
        try HFFixtures.expectMatchesReference(reward, key: "clip", mode: mode)
    }

    @Test func fewerPromptsThanImages() throws {
        let reward = try CLIPScoreReward(folder: HFFixtures.clip)
        let images = try HFFixtures.output("images")
        #expect(throws: RewardError.promptCount(images: 2, prompts: 0)) { try reward.score(images, prompts: []) }
    }
}
