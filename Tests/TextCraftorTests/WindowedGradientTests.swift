import Foundation
import Testing
import Torch

@testable import TextCraftor

@Suite(.serialized) struct WindowedGradientTests {
    /// The windowed walk-back (one UNet step of graph at a time) gives the gradient of plain backpropagation.
    @Test(arguments: [1, 3, 5])
    func windowedEqualsFullBackprop(window: Int) throws {
        let (pipeline, trainable, original, rewards) = try tinySetup()
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234))
        let settings = SamplingSettings(samplingSteps: 5, gradientWindow: window)
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

    @Test func windowLargerThanTheStepsIsRefused() throws {
        #expect(throws: TextCraftorError.invalidArgument("--grad-window must be between 1 and --sampling-steps (5); got 6")) {
            try SamplingSettings(samplingSteps: 5, gradientWindow: 6).validate()
        }
    }

    @Test func trailingTimestepsAreTheAuthors() throws {
        let (pipeline, _, _, _) = try tinySetup()
        let scheduler = try SamplingSettings().makeScheduler(pipeline)
        #expect(scheduler.timesteps == stride(from: 999.0, through: 39, by: -40).map { $0 })
    }
}
