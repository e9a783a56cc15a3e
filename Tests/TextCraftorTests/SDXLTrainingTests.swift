import Foundation
import NN
import Rewards
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

let tinySDXLFolder = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl")

/// The tiny SDXL pipeline (scripts/parity/make_sdxl_fixtures.py) with both encoders trainable, frozen copies of them
/// as the originals, and the reward of the SD trainer fixture (aesthetic + CLIP score on the tiny CLIP).
/// `forceZeros` false rebuilds the pipeline as if model_index.json said `force_zeros_for_empty_prompt: false`.
func tinySDXLSetup(forceZeros: Bool = true) throws -> (StableDiffusionPipeline, TextEncoders, WeightedReward) {
    var pipeline = try StableDiffusionPipeline.load(folder: tinySDXLFolder)
    if !forceZeros {
        pipeline = StableDiffusionPipeline(
            tokenizer: pipeline.tokenizer, textEncoder: pipeline.textEncoder, tokenizer2: pipeline.tokenizer2,
            textEncoder2: pipeline.textEncoder2, unet: pipeline.unet, vae: pipeline.vae, schedulerConfig: pipeline.schedulerConfig,
            schedulerConfigFile: pipeline.schedulerConfigFile, forceZerosForEmptyPrompt: false)
    }
    let folder1 = tinySDXLFolder.appendingPathComponent("text_encoder"), folder2 = tinySDXLFolder.appendingPathComponent("text_encoder_2")
    let original = TextEncoders(
        try CLIPTextModel.load(try Weights.open(folder1.appendingPathComponent("model.safetensors")),
                               configFile: folder1.appendingPathComponent("config.json")),
        try CLIPTextModelWithProjection.load(try Weights.open(folder2.appendingPathComponent("model.safetensors")),
                                             configFile: folder2.appendingPathComponent("config.json")))
    original.first.setTrainable(false)
    original.second!.setTrainable(false)
    pipeline.textEncoder.setTrainable(true)
    pipeline.textEncoder2!.setTrainable(true)
    let clip = try CLIPModel.load(folder: tinyRewards.appendingPathComponent("clip"))
    let rewards = WeightedReward()
    rewards.add(try AestheticReward(embedder: clip, weights: tinyRewards.appendingPathComponent("aesthetic.pth")), gamma: 1)
    rewards.add(CLIPScoreReward(model: clip), gamma: 0.5)
    return (pipeline, original, rewards)
}

/// The gradients of both encoders' parameters, keyed "text_encoder.NAME" and "text_encoder_2.NAME".
func sdxlGradients(_ pipeline: StableDiffusionPipeline) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    for (prefix, module) in [("text_encoder", pipeline.textEncoder as any Module), ("text_encoder_2", pipeline.textEncoder2!)] {
        for (name, tensor) in module.namedParameters { out["\(prefix).\(name)"] = (tensor.grad ?? tensor.zerosLike()).clone() }
    }
    return out
}

func clearGradients(_ pipeline: StableDiffusionPipeline) {
    (pipeline.textEncoder.parameters + pipeline.textEncoder2!.parameters + pipeline.unet.parameters).forEach { $0.zeroGrad() }
}

@Suite(.serialized) struct SDXLWindowedGradientTests {
    /// On SDXL the walk-back sums the gradients of the hidden states and of the pooled embeddings over the window and
    /// sends both through the two encoders at once: the same gradient as plain backpropagation, for either way of
    /// forming the unconditional half (forced zeros, or the encoders of "").
    @Test(arguments: [(1, true), (3, true), (3, false)])
    func windowedEqualsFullBackprop(window: Int, forceZeros: Bool) throws {
        let (pipeline, original, rewards) = try tinySDXLSetup(forceZeros: forceZeros)
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234))
        let settings = SamplingSettings(samplingSteps: 4, gradientWindow: window, guidanceScale: 7.5)
        func step(_ mode: GradientMode) throws -> (StepOutcome, [String: Tensor]) {
            clearGradients(pipeline)
            let outcome = try promptTrainingStep(
                pipeline: pipeline, trainable: TextEncoders(of: pipeline), original: original, rewards: rewards,
                prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: mode)
            return (outcome, sdxlGradients(pipeline))
        }
        let (full, expected) = try step(.fullBackprop)
        let (windowed, found) = try step(.windowed)
        #expect(windowed.loss == full.loss)
        let error = relativeError(found, expected)
        #expect(error <= 1e-4, "window \(window): relative error \(error)")
        for prefix in ["text_encoder.", "text_encoder_2."] {
            let total = expected.filter { $0.key.hasPrefix(prefix) }.values.map { $0.abs().sum().item() }.reduce(0, +)
            #expect(total > 0, "\(prefix) has no gradient")
        }
        // The pooled embeddings carry gradient of their own: the projection, which only they pass through.
        #expect(expected["text_encoder_2.text_projection.weight"]!.abs().sum().item() > 0)
        #expect(pipeline.unet.parameters.allSatisfy { $0.grad == nil })
    }

    /// Freezing one encoder trains the other alone; its gradient is the one it gets when both train.
    @Test func oneEncoderTrainsAlone() throws {
        let (pipeline, original, rewards) = try tinySDXLSetup()
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 5))
        let settings = SamplingSettings(samplingSteps: 3, gradientWindow: 2, guidanceScale: 7.5)
        func step(_ original: TextEncoders) throws -> [String: Tensor] {
            clearGradients(pipeline)
            _ = try promptTrainingStep(pipeline: pipeline, trainable: TextEncoders(of: pipeline), original: original,
                                       rewards: rewards, prompts: fixturePrompts, initialNoise: noise, settings: settings)
            return sdxlGradients(pipeline)
        }
        let both = try step(original)
        pipeline.textEncoder2!.setTrainable(false)
        let first = try step(TextEncoders(original.first, pipeline.textEncoder2))
        #expect(pipeline.textEncoder2!.parameters.allSatisfy { $0.grad == nil })
        let firstNames = both.keys.filter { $0.hasPrefix("text_encoder.") }
        #expect(relativeError(first.filter { firstNames.contains($0.key) }, both.filter { firstNames.contains($0.key) }) <= 1e-5)
        pipeline.textEncoder2!.setTrainable(true)
        pipeline.textEncoder.setTrainable(false)
        let second = try step(TextEncoders(pipeline.textEncoder, original.second))
        #expect(pipeline.textEncoder.parameters.allSatisfy { $0.grad == nil })
        let secondNames = both.keys.filter { $0.hasPrefix("text_encoder_2.") }
        #expect(relativeError(second.filter { secondNames.contains($0.key) }, both.filter { secondNames.contains($0.key) }) <= 1e-5)
    }

    /// The UNet stage on SDXL: the encoders condition the window frozen, and the UNet's walk-back equals plain
    /// backpropagation.
    @Test func unetStageWindowedEqualsFullBackprop() throws {
        let (pipeline, _, rewards) = try tinySDXLSetup()
        pipeline.textEncoder.setTrainable(false)
        pipeline.textEncoder2!.setTrainable(false)
        pipeline.unet.setTrainable(true)
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 9))
        let settings = SamplingSettings(samplingSteps: 3, gradientWindow: 2, guidanceScale: 7.5)
        func run(_ mode: GradientMode) throws -> [String: Tensor] {
            clearGradients(pipeline)
            let encoders = TextEncoders(of: pipeline)
            _ = try promptTrainingStep(pipeline: pipeline, trainable: encoders, original: encoders, rewards: rewards,
                                       prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: mode,
                                       trainsTextEncoder: false)
            return Dictionary(uniqueKeysWithValues: pipeline.unet.namedParameters.map { ($0.name, ($0.tensor.grad ?? $0.tensor.zerosLike()).clone()) })
        }
        let full = try run(.fullBackprop), windowed = try run(.windowed)
        #expect(relativeError(windowed, full) <= 1e-4)
        #expect(full.values.map { $0.abs().sum().item() }.reduce(0, +) > 0)
        #expect((pipeline.textEncoder.parameters + pipeline.textEncoder2!.parameters).allSatisfy { $0.grad == nil })
    }
}
