import Foundation
import Testing
import Torch

import NN

@testable import Rewards
@testable import StableDiffusion

/// A weight source that records every tensor read from it.
final class ReadCountingSource: WeightSource, @unchecked Sendable {
    let source: any WeightSource
    var reads = 0
    init(_ source: any WeightSource) { self.source = source }
    var origin: String { source.origin }
    var keys: [String] { source.keys }
    func info(_ key: String) -> (dtype: DType, shape: [Int])? { source.info(key) }
    func tensor(_ key: String) throws -> Tensor {
        reads += 1
        return try source.tensor(key)
    }
}

@Suite struct HPSv2RewardTests {
    typealias F = OpenCLIPFixtures
    static let outputs = "tiny/outputs.safetensors"

    func reward(_ file: String, _ mode: PreprocessingMode) throws -> HPSv2Reward {
        let config = try OpenCLIPConfig.load(from: F.url("tiny/open_clip_config.json"))
        return try HPSv2Reward.load(
            checkpoint: F.url("tiny/\(file)"), config: config, tokenizerFolder: F.tokenizerFolder, preprocessing: mode)
    }

    /// Scores and their gradient with respect to the images, against open_clip, for every file and both modes.
    @Test(arguments: OpenCLIPFixtures.weightFiles, PreprocessingMode.allCases)
    func scoresAndGradientsMatchOpenCLIP(file: String, mode: PreprocessingMode) throws {
        let reward = try reward(file, mode)
        let images = try F.tensor(Self.outputs, "images").requiringGrad()
        let scores = try reward.score(images, prompts: F.prompts)
        scores.sum().backward()
        let expected = try F.tensor(Self.outputs, "scores_\(mode)")
        let scoreError = F.relativeError(scores.detach(), expected)
        let gradientError = F.relativeError(images.grad!, try F.tensor(Self.outputs, "grad_\(mode)"))
        #expect(scores.shape == [2])
        #expect(scoreError < 1e-4, "scores \(scores.toArray(Double.self)) vs \(expected.toArray(Double.self))")
        #expect(gradientError < 1e-3, "gradient relative error \(gradientError)")
        #expect(images.grad!.abs().max().item() > 1e-3)
    }

    /// The fixture's scores differ between the modes by more than the tolerance, so each mode is really checked.
    @Test func modesGiveDifferentScores() throws {
        let training = try F.tensor(Self.outputs, "scores_training"), evaluation = try F.tensor(Self.outputs, "scores_evaluation")
        #expect(F.relativeError(training, evaluation) > 1e-2)
    }

    /// A checkpoint of another architecture (the tiny model given as HPSv2's ViT-H-14): refused from the file's
    /// index before any tensor is read or the 3.9 GB model built, in one short line naming the first mismatch.
    @Test(arguments: ["open_clip_model.safetensors", "hps_tiny.pt"])
    func wrongCheckpointIsRefusedShortlyBeforeBuilding(file: String) throws {
        let url = F.url("tiny/\(file)")
        let source = ReadCountingSource(try Weights.open(url))
        do {
            _ = try OpenCLIPModel.load(source, config: .vitH14)
            Issue.record("the tiny checkpoint loaded as ViT-H-14")
        } catch let error as WeightLoadingError {
            let text = error.description
            #expect(text == "\(url.path) does not fit the model: "
                + "'visual.conv1.weight' has shape [32, 3, 8, 8] in the checkpoint, the model expects [1280, 3, 14, 14]; "
                + "'visual.class_embedding' has shape [32] in the checkpoint, the model expects [1280]; "
                + "59 more shape mismatches; "
                + "624 missing keys: visual.transformer.resblocks.2.ln_1.weight [1280], … (623 more)")
            #expect(text.count < 500 && text.count - url.path.count < 350, "\(text.count) characters: \(text)")
            #expect(source.reads == 0, "\(source.reads) tensors were read before the shapes were compared")
        }
        // Through the reward, from the file.
        #expect(throws: WeightLoadingError.self) { try HPSv2Reward.load(checkpoint: url) }
    }

    @Test func defaultsAndScale() throws {
        let reward = try reward("open_clip_model.safetensors", .training)
        #expect(reward.name == "hpsv2")
        #expect(HPSv2Reward(model: reward.model).preprocessing == .training)
        #expect(reward.model.trainableParameters.isEmpty)
        let images = try F.tensor(Self.outputs, "images")
        let weighted = WeightedReward()
        weighted.add(reward)
        let (total, terms) = try weighted.evaluate(images, prompts: F.prompts)
        let scores = try F.tensor(Self.outputs, "scores_training")
        #expect(F.relativeError(total, scores * 100) < 1e-4)
        #expect(terms.map(\.name) == ["hpsv2"])
    }

    /// One prompt is used for every image; otherwise there must be one per image.
    @Test func promptsPerImage() throws {
        let reward = try reward("open_clip_model.safetensors", .training)
        let images = try F.tensor(Self.outputs, "images")
        let three = Tensor.cat([images, images.narrow(dim: 0, start: 0, length: 1)], dim: 0)
        #expect(throws: RewardError.promptCount(images: 3, prompts: 2)) { try reward.score(three, prompts: F.prompts) }
        do {
            _ = try reward.score(three, prompts: F.prompts)
        } catch {
            #expect("\(error)" == "3 images but 2 prompts: give one prompt per image, or one for all")
        }
        let shared = try reward.score(images, prompts: [F.prompts[0]])
        let repeated = try reward.score(images, prompts: [F.prompts[0], F.prompts[0]])
        #expect(F.relativeError(shared, repeated) == 0)
    }
}

/// The real checkpoint, when `TEXTCRAFTOR_HPSV2` names `HPS_v2_compressed.pt` or `HPS_v2.1_compressed.pt`: it loads
/// strictly into the ViT-H-14 preset and scores in the range HPSv2 gives (cosines around 0.2-0.3).
@Suite struct HPSv2RealCheckpointTests {
    static let path = ProcessInfo.processInfo.environment["TEXTCRAFTOR_HPSV2"]

    @Test(.enabled(if: path != nil, "set TEXTCRAFTOR_HPSV2 to an HPSv2 checkpoint"))
    func realCheckpointLoadsAndScores() throws {
        let reward = try HPSv2Reward.load(checkpoint: URL(fileURLWithPath: Self.path!))
        let images = Tensor.rand([1, 3, 256, 256], generator: Generator(seed: 0))
        let score = try reward.score(images, prompts: ["random noise"]).item()
        #expect(score > -0.5 && score < 0.5, "HPSv2 score \(score)")
    }
}
