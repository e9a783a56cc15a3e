import Foundation
import NN
import Rewards
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

/// One prompt-based step with ImageReward as the reward against the PyTorch reference, in which the image-reward
/// package's own classes score the images (scripts/parity/make_trainer_fixtures.py --only imagereward): the tiny
/// ImageReward of Tests/RewardsTests/Fixtures/imagereward alone with windows of 5 and 2, and beside the aesthetic
/// reward with a window of 2. Same noise, same tiny SD pipeline as TrainStepParityTests, same tolerances.
@Suite(.serialized) struct ImageRewardTrainStepParityTests {
    let fixture = try! SafeTensorsFile(url: Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
        .appendingPathComponent("train_step_imagereward.safetensors"))
    static let folder = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/imagereward")

    /// The fixture's rewards: the aesthetic (gamma 1, scale 3) first when asked, then ImageReward (gamma 1, scale 1:
    /// its default), as the reference sums them.
    func rewards(withAesthetic: Bool) throws -> (WeightedReward, ImageRewardReward) {
        let rewards = WeightedReward()
        if withAesthetic {
            let clip = try CLIPModel.load(folder: tinyRewards.appendingPathComponent("clip"))
            rewards.add(try AestheticReward(embedder: clip, weights: tinyRewards.appendingPathComponent("aesthetic.pth")), gamma: 1)
        }
        let imageReward = try ImageRewardReward.load(checkpoint: Self.folder.appendingPathComponent("ImageReward.pt"))
        #expect(imageReward.preprocessing == .training)
        rewards.add(imageReward, gamma: 1)
        #expect(rewards.terms.last!.scale == 1)
        return (rewards, imageReward)
    }

    @Test func tokensMatchTransformersBertTokenizer() throws {
        let (_, imageReward) = try rewards(withAesthetic: false)
        let (ids, mask) = imageReward.model.tokens(fixturePrompts)
        #expect(ids.toArray(Int64.self) == (try fixture.tensor("imagereward.input_ids")).toArray(Int64.self))
        #expect(mask.toArray(Int64.self) == (try fixture.tensor("imagereward.attention_mask")).toArray(Int64.self))
    }

    @Test(arguments: [("k5", 5, false), ("k2", 2, false), ("aesthetic_k2", 2, true)])
    func oneStepMatchesPyTorch(name: String, window: Int, withAesthetic: Bool) throws {
        let (pipeline, trainable, original, _) = try tinySetup()
        let (rewards, _) = try rewards(withAesthetic: withAesthetic)
        let noise = try fixture.tensor("\(name).init_latents")
        #expect(Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234)).toArray(Float.self) == noise.toArray(Float.self))
        let outcome = try promptTrainingStep(
            pipeline: pipeline, trainable: trainable, original: original, rewards: rewards, prompts: fixturePrompts,
            initialNoise: noise, settings: SamplingSettings(samplingSteps: 5, gradientWindow: window, guidanceScale: 7.5))
        let expectedLoss = try fixture.tensor("\(name).loss").item()
        #expect(abs(outcome.loss - expectedLoss) <= 1e-5 * abs(expectedLoss), "loss \(outcome.loss) vs \(expectedLoss)")
        let maxImageDifference = (outcome.images - (try fixture.tensor("\(name).image"))).abs().max().item()
        #expect(maxImageDifference < 1e-4)
        let expectedScore = try fixture.tensor("\(name).imagereward").mean().item()
        let score = outcome.rewards.first { $0.name == "imagereward" }!.mean
        #expect(abs(score - expectedScore) <= 1e-5 * abs(expectedScore), "imagereward \(score) vs \(expectedScore)")
        if withAesthetic {
            let expectedAesthetic = try fixture.tensor("\(name).aesthetic").mean().item()
            let aesthetic = outcome.rewards.first { $0.name == "aesthetic" }!.mean
            #expect(abs(aesthetic - expectedAesthetic) <= 1e-5 * abs(expectedAesthetic))
        }

        var expected: [String: Tensor] = [:]
        for (parameter, _) in trainable.namedParameters { expected[parameter] = try fixture.tensor("\(name).grad.\(parameter)") }
        let ours = gradients(trainable)
        let error = relativeError(ours, expected)
        #expect(error <= 1e-3, "\(name): gradients off by \(error) relative")
        // Element-wise too: the largest difference over the largest gradient (float32 against float64 in the
        // reference: about 3e-6). Not per tensor: some tensors' gradients are at rounding level (the key biases',
        // which softmax cancels), so their own maximum is no scale.
        var largest = 0.0, worstElement = 0.0
        for (parameter, reference) in expected {
            largest = max(largest, reference.abs().max().item())
            worstElement = max(worstElement, (ours[parameter]! - reference).abs().max().item())
        }
        let elementError = worstElement / largest
        #expect(elementError <= 1e-4, "\(name): a gradient differs by \(elementError) of the largest")

        // As in TrainStepParityTests: AdamW fed the reference gradients gives the reference weights, and our own step
        // does wherever both gradients are above 100 Adam eps (where the step is lr·sign(g)).
        let names = trainable.namedParameters.map(\.name)
        let starts = trainable.parameters.map { $0.detach().clone() }
        let check = starts.map { $0.clone().requiringGrad() }
        for (i, name) in names.enumerated() { check[i].grad = expected[name] }
        AdamW(parameters: check, learningRate: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weightDecay: 1e-2).step()
        AdamW(parameters: trainable.parameters, learningRate: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weightDecay: 1e-2).step()
        var worst = 0.0, worstFromReference = 0.0
        for (i, (parameter, tensor)) in trainable.namedParameters.enumerated() {
            let after = try fixture.tensor("\(name).after.\(parameter)")
            worstFromReference = max(worstFromReference, (check[i].detach() - after).abs().max().item())
            let meaningful = expected[parameter]!.abs().gt(1e-6).logicalAnd(ours[parameter]!.abs().gt(1e-6))
            let difference = (tensor.detach() - after).abs() * meaningful.to(.float32)
            worst = max(worst, difference.max().item())
        }
        #expect(worstFromReference <= 1e-6, "\(name): AdamW on the reference gradients differs by \(worstFromReference)")
        #expect(worst <= 1e-6, "\(name): weights after the AdamW step differ by \(worst)")
        print("""
            ImageReward train step \(name): loss \(outcome.loss) vs \(expectedLoss), gradient relative error \(error), \
            largest element difference / max|g| \(elementError), weights after AdamW \(worst) (on the reference gradients \(worstFromReference))
            """)
    }
}
