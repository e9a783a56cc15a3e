import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

@Suite struct UNet2DConditionModelTests {
    func unet(_ model: TinySD) throws -> UNet2DConditionModel {
        try UNet2DConditionModel.load(folder: model.folder.appendingPathComponent("unet"))
    }

    /// sd15: 1x1-conv proj_in/out, 4 heads everywhere; sd2: linear proj_in/out, heads [2, 4, 4], upcast_attention.
    @Test(arguments: TinySD.allCases)
    func forwardMatchesDiffusers(model: TinySD) throws {
        let unet = try unet(model)
        let out = withNoGrad {
            unet(
                try! model.output("unet.sample"), timestep: try! model.output("unet.timesteps"),
                encoderHiddenStates: try! model.output("unet.context"))
        }
        let expected = try model.output("unet.out")
        #expect(out.shape == [2, 4, 8, 8])
        let error = maxAbsDifference(out, expected)
        print("UNet \(model): max |out - diffusers| = \(error), max |diffusers| = \(expected.abs().max().item())")
        #expect(error < 1e-4)
    }

    @Test(arguments: TinySD.allCases)
    func gradientWithRespectToTheTextMatchesDiffusers(model: TinySD) throws {
        let unet = try unet(model)
        let context = try model.output("unet.context").requiringGrad()
        let out = unet(try model.output("unet.sample"), timestep: try model.output("unet.timesteps"), encoderHiddenStates: context)
        let loss = (out * (try model.output("unet.w"))).sum()
        let grad = Autograd.grad(outputs: [loss], inputs: [context])[0]!
        let expected = try model.output("unet.grad_context")
        let error = maxAbsDifference(grad, expected)
        let scale = expected.abs().max().item()
        print("UNet \(model): max |grad - diffusers| = \(error), max |diffusers grad| = \(scale)")
        #expect(error < 1e-4 * scale)  // relative: the gradients are ~6e-3 here
        #expect(unet.trainableParameters.isEmpty)  // frozen weights; the gradient flows only to the text
    }
}
