import Foundation
import Testing
import Rewards
import Torch

@testable import TextCraftor

@Suite(.serialized) struct WindowedGradientTests {
    /// The windowed walk-back (one UNet step of graph at a time, the VAE decoder checkpointed piece by piece or
    /// not) gives the gradient of plain backpropagation.
    @Test(arguments: [(1, true), (3, true), (5, true), (5, false)])
    func windowedEqualsFullBackprop(window: Int, checkpointsVAE: Bool) throws {
        let (pipeline, trainable, original, rewards) = try tinySetup()
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234))
        let settings = SamplingSettings(samplingSteps: 5, gradientWindow: window, guidanceScale: 7.5, checkpointsVAE: checkpointsVAE)
        let full = try promptTrainingStep(pipeline: pipeline, trainable: trainable, original: original, rewards: rewards,
                                          prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: .fullBackprop)
        let expected = gradients(trainable)
        trainable.parameters.forEach { $0.zeroGrad() }
        let windowed = try promptTrainingStep(pipeline: pipeline, trainable: trainable, original: original, rewards: rewards,
                                              prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: .windowed)
        #expect(windowed.loss == full.loss)
        let error = relativeError(gradients(trainable), expected)
        #expect(error <= 1e-4, "window \(window): relative error \(error)")
        #expect(expected.values.map { $0.abs().sum().item() }.reduce(0, +) > 0, "the gradient is not zero")
    }

    /// A checkpointed chain's walk back gives the gradient of backpropagating through the whole chain.
    @Test func checkpointedChainEqualsPlainBackprop() throws {
        let weights = (0..<3).map { Tensor.randn([6, 6], generator: Generator(seed: UInt64($0))) }
        let stages: [(Tensor) -> Tensor] = weights.map { w in { ($0.matmul(w)).tanh() } } + [{ $0 * $0 }]
        let input = Tensor.randn([4, 6], generator: Generator(seed: 9))
        let x = input.detach().requiringGrad()
        stages.reduce(x) { $1($0) }.sum().backward()
        var chain = CheckpointedChain(stages)
        let output = withNoGrad { chain.forward(input) }
        #expect(chain.inputs.count == 4)
        let gradient = chain.backward(output.onesLike())
        #expect((gradient - x.grad!).abs().max().item() < 1e-6)
        #expect(x.grad!.abs().sum().item() > 0)
    }

    /// Guidance at 1 or less samples without the unconditional half: the step trains (it died on a batch mismatch),
    /// and the windowed gradient still equals plain backpropagation.
    @Test(arguments: [1.0, 0.0])
    func unguidedStepsTrain(guidance: Double) throws {
        let (pipeline, trainable, original, rewards) = try tinySetup()
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 3))
        let settings = SamplingSettings(samplingSteps: 3, gradientWindow: 2, guidanceScale: guidance)
        let full = try promptTrainingStep(pipeline: pipeline, trainable: trainable, original: original, rewards: rewards,
                                          prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: .fullBackprop)
        let expected = gradients(trainable)
        trainable.parameters.forEach { $0.zeroGrad() }
        let windowed = try promptTrainingStep(pipeline: pipeline, trainable: trainable, original: original, rewards: rewards,
                                              prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: .windowed)
        #expect(full.loss.isFinite && windowed.loss == full.loss)
        #expect(relativeError(gradients(trainable), expected) <= 1e-4)
        #expect(expected.values.map { $0.abs().sum().item() }.reduce(0, +) > 0, "the gradient is not zero")
    }

    @Test func windowLargerThanTheStepsIsRefused() throws {
        #expect(throws: TextCraftorError.invalidSetting(key: "grad_window", message: "expected an integer between 1 and sampling_steps (5), found 6")) {
            try SamplingSettings(samplingSteps: 5, gradientWindow: 6, guidanceScale: 7.5).validate()
        }
    }

    @Test func trailingTimestepsAreTheAuthors() throws {
        let (pipeline, _, _, _) = try tinySetup()
        let scheduler = try TrainingConfig().sampling.makeScheduler(pipeline)
        #expect(scheduler.timesteps == stride(from: 999.0, through: 39, by: -40).map { $0 })
    }
}

@Suite(.serialized) struct UNetStageAndFailureTests {
    /// The UNet stage's walk-back gives the UNet's weights the gradient of plain backpropagation.
    @Test func unetStageWindowedEqualsFullBackprop() throws {
        let (pipeline, _, original, rewards) = try tinySetup()
        pipeline.textEncoder.setTrainable(false)
        pipeline.unet.setTrainable(true)
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 9))
        let settings = SamplingSettings(samplingSteps: 4, gradientWindow: 3, guidanceScale: 7.5)
        func run(_ mode: GradientMode) throws -> [String: Tensor] {
            pipeline.unet.parameters.forEach { $0.zeroGrad() }
            _ = try promptTrainingStep(pipeline: pipeline, trainable: pipeline.textEncoder, original: original, rewards: rewards,
                                       prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: mode,
                                       trainsTextEncoder: false)
            return Dictionary(uniqueKeysWithValues: pipeline.unet.namedParameters.map { ($0.name, ($0.tensor.grad ?? $0.tensor.zerosLike()).clone()) })
        }
        let full = try run(.fullBackprop), windowed = try run(.windowed)
        let error = relativeError(windowed, full)
        #expect(error <= 1e-4, "relative error \(error)")
        #expect(pipeline.textEncoder.parameters.allSatisfy { $0.grad == nil })
    }

    /// A reward that gives NaN stops the run at that step, before the optimizer or a checkpoint touches anything.
    @Test func nonFiniteLossStopsTheRunAndKeepsTheLastCheckpoint() throws {
        final class Poisoned: Reward {
            let name = "poison"
            var preprocessing = PreprocessingMode.training
            var calls = 0
            func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
                calls += 1
                return calls >= 3 ? images.mean([1, 2, 3]) * Double.nan : images.mean([1, 2, 3])
            }
        }
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let (pipeline, _, original, _) = try tinySetup()
        let rewards = WeightedReward()
        rewards.add(Poisoned())
        var config = TrainingConfig()
        config.maxSteps = 5
        config.saveEvery = 1
        config.samplingSteps = 2
        config.gradientWindow = 1
        let trainer = try Trainer(pipeline: pipeline, original: TextEncoders(original), modelFolder: tinySD15, rewards: rewards,
                                  data: .prompts(try SampledBatches(fixturePrompts, batchSize: 1, shuffle: false, seed: 0)),
                                  config: config, run: RunFolder(out))
        #expect(throws: TextCraftorError.nonFinite(step: 3, what: "loss")) { try trainer.train() }
        #expect(RunFolder(out).completeCheckpoints().map(\.lastPathComponent) == ["step-00000001", "step-00000002"])
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 2)
    }
}
