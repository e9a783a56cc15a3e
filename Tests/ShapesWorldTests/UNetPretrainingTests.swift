import Foundation
import NN
import StableDiffusion
import Testing
import Torch

@testable import ShapesWorld

@Suite(.serialized) struct UNetPretrainingTests {
    /// A small VAE with ShapesWorld's 32x32x3 <-> 8x8x4 geometry (untrained: the test is about the UNet's loop).
    func vae() throws -> AutoencoderKL {
        var config = AutoencoderKLConfig()
        config.block_out_channels = [16, 16, 16]
        config.down_block_types = Array(repeating: "DownEncoderBlock2D", count: 3)
        config.up_block_types = Array(repeating: "UpDecoderBlock2D", count: 3)
        config.norm_num_groups = 8
        return try AutoencoderKL(VarBuilder(initializingWith: Generator(seed: 2)), config: config)
    }

    @Test func tinyUNetPredictsNoiseOfTheLatentShape() throws {
        let unet = try UNet2DConditionModel(VarBuilder(initializingWith: Generator(seed: 1)), config: TinyUNet.config())
        let out = unet(Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 3)), timestep: Tensor([Float(10), 900]),
                       encoderHiddenStates: Tensor.randn([2, 77, 64], generator: Generator(seed: 4)))
        #expect(out.shape == [2, 4, 8, 8])
    }

    /// A short run of the diffusion pretraining (not the full one): the noise-prediction error falls.
    @Test func shortPretrainingLearns() throws {
        let clip = try CLIPPretrainer(seed: 1, batchSize: 8).model
        let trainer = try UNetPretrainer(textEncoder: clip.textModel, tokenizer: clip.tokenizer, vae: try vae(), seed: 5,
                                         batchSize: 16, learningRate: 2e-3)
        let losses = (0..<30).map { _ in trainer.step() }
        let first = losses.prefix(5).reduce(0, +) / 5, last = losses.suffix(5).reduce(0, +) / 5
        #expect(first > 0.5, "an untrained UNet's error starts near the noise variance (\(first))")
        #expect(last < 0.8 * first, "30 steps took the error from \(first) to \(last)")
    }
}
