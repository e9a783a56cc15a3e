import Foundation
import NN
import Testing
import Torch

@testable import TextCraftor

/// One prompt-based step against the PyTorch reference (scripts/parity/make_trainer_fixtures.py): same noise, same
/// models, windows of 5 (every step) and 2; loss, every text-encoder gradient, and the weights after one AdamW step.
@Suite(.serialized) struct TrainStepParityTests {
    let fixture = try! SafeTensorsFile(url: Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
        .appendingPathComponent("train_step.safetensors"))

    @Test(arguments: [("k5", 5), ("k2", 2)])
    func oneStepMatchesPyTorch(name: String, window: Int) throws {
        let (pipeline, trainable, original, rewards) = try tinySetup()
        let noise = try fixture.tensor("\(name).init_latents")
        #expect(Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234)).toArray(Float.self) == noise.toArray(Float.self),
                "the step's noise is randn from a generator seeded with 1234")
        let outcome = try promptTrainingStep(
            pipeline: pipeline, trainable: trainable, original: original, rewards: rewards, prompts: fixturePrompts,
            initialNoise: noise, settings: SamplingSettings(samplingSteps: 5, gradientWindow: window, guidanceScale: 7.5))
        let expectedLoss = try fixture.tensor("\(name).loss").item()
        #expect(abs(outcome.loss - expectedLoss) <= 1e-5 * abs(expectedLoss), "loss \(outcome.loss) vs \(expectedLoss)")
        let maxImageDifference = (outcome.images - (try fixture.tensor("\(name).image"))).abs().max().item()
        #expect(maxImageDifference < 1e-4)

        var expected: [String: Tensor] = [:]
        for (parameter, _) in trainable.namedParameters { expected[parameter] = try fixture.tensor("\(name).grad.\(parameter)") }
        let error = relativeError(gradients(trainable), expected)
        #expect(error <= 1e-3, "\(name): gradients off by \(error) relative")

        // Adam's first step moves each weight by about lr·sign(g), so weights whose gradient is at rounding level
        // (down to 1e-11 here) may move either way in any two implementations, and near Adam's eps (1e-8) the step
        // g / (|g| + eps) still depends on g's last digits. So: AdamW fed the reference gradients must give the
        // reference weights, and our own step must wherever |g| > 100 eps, where the step is lr·sign(g).
        let names = trainable.namedParameters.map(\.name)
        let ours = gradients(trainable)
        let starts = trainable.parameters.map { $0.detach().clone() }
        let check = starts.map { $0.clone().requiringGrad() }
        for (i, name) in names.enumerated() { check[i].grad = expected[name] }
        AdamW(parameters: check, learningRate: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weightDecay: 1e-2).step()
        let optimizer = AdamW(parameters: trainable.parameters, learningRate: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weightDecay: 1e-2)
        optimizer.step()
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
    }
}
