import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// The tiny UNet of ShapesWorld: SD1.5's architecture in miniature (cross-attention down and up blocks around a plain
/// one, 1x1-conv projections, the number of heads in `attention_head_dim` as SD1.x writes it) on 8x8x4 latents,
/// conditioned on the tiny CLIP's text tower.
public enum TinyUNet {
    public static func config(crossAttentionDim: Int = 64) -> UNet2DConditionConfig {
        var config = UNet2DConditionConfig()
        config.sample_size = 8
        config.block_out_channels = [32, 64]
        config.down_block_types = ["CrossAttnDownBlock2D", "DownBlock2D"]
        config.up_block_types = ["UpBlock2D", "CrossAttnUpBlock2D"]
        config.layers_per_block = .same(2)
        config.attention_head_dim = .same(4)
        config.norm_num_groups = 8
        config.cross_attention_dim = .same(crossAttentionDim)
        return config
    }

    /// SD1.5's noise schedule (scaled_linear 0.00085..0.012 over 1000 steps, epsilon prediction).
    public static func schedulerConfig() -> SchedulerConfig {
        var config = SchedulerConfig(className: "DDIMScheduler")
        config.betaStart = 0.00085
        config.betaEnd = 0.012
        config.betaSchedule = "scaled_linear"
        config.setAlphaToOne = false
        config.stepsOffset = 1
        config.clipSample = false
        return config
    }
}

/// Trains the tiny UNet to predict the noise added to VAE latents of rendered scenes (epsilon prediction), conditioned
/// on the frozen text tower's last hidden state, as SD was trained. A fraction of captions is replaced by "" so that
/// classifier-free guidance works at sampling time.
public final class UNetPretrainer {
    public let unet: UNet2DConditionModel
    let textEncoder: CLIPTextModel
    let tokenizer: CLIPTokenizer
    let vae: AutoencoderKL
    let scheduler: any Scheduler
    let optimizer: AdamW
    let generator: Generator
    var random: SplitMix64
    public let batchSize: Int
    public let captionDropout: Double
    public let recipe: SampleRecipe

    /// Half the renders washed-out (strength 0.5 or more), and captions that say so for 85% of the clean renders
    /// ("sharp, ...") but only 30% of the washed-out ones: 82% of the captions silent about quality go with washed-out
    /// images. A plain prompt then draws a mostly washed-out image and "sharp, ..." a clean one, as a plain prompt
    /// gives SD a mediocre picture and "professional photo, sharp focus, ..." a better one; that gap is what
    /// TextCraftor's text encoder learns to close. Washed-out is the degradation the 8×8×4 latents hold and the
    /// aesthetic head sees most clearly (pixel noise and blur do not survive the VAE; a tint barely moves the head).
    public static let defaultRecipe = SampleRecipe(
        degradationProbability: 0.5, qualityWordProbability: 0.3, sharpWordProbability: 0.85, kinds: [.lowContrast],
        minimumStrength: 0.5)

    public init(
        textEncoder: CLIPTextModel, tokenizer: CLIPTokenizer, vae: AutoencoderKL, seed: UInt64, batchSize: Int = 32,
        learningRate: Double = 1e-3, captionDropout: Double = 0.1, recipe: SampleRecipe = UNetPretrainer.defaultRecipe
    ) throws {
        unet = try UNet2DConditionModel(
            VarBuilder(initializingWith: Generator(seed: seed)), config: TinyUNet.config(crossAttentionDim: textEncoder.config.hidden_size))
        unet.setTrainable(true)
        textEncoder.setTrainable(false)
        vae.setTrainable(false)
        self.textEncoder = textEncoder
        self.tokenizer = tokenizer
        self.vae = vae
        scheduler = try makeScheduler(config: TinyUNet.schedulerConfig())
        optimizer = AdamW(parameters: unet.trainableParameters, learningRate: learningRate, weightDecay: 1e-2)
        generator = Generator(seed: seed &+ 1)
        random = SplitMix64(seed: seed)
        self.batchSize = batchSize
        self.captionDropout = captionDropout
        self.recipe = recipe
    }

    /// One AdamW step on a fresh batch of training scenes; returns the noise-prediction MSE.
    @discardableResult
    public func step() -> Double {
        let samples = (0..<batchSize).map { _ in Sample.random(split: .train, recipe: recipe, using: &random) }
        let captions = samples.map { random.unit() < captionDropout ? "" : $0.caption }
        let (latents, context) = withNoGrad {
            let images = Renderer.tensor(samples.map(\.pixels)) * 2 - 1
            let latents = vae.encode(images).sample(generator: generator) * vae.config.scaling_factor
            return (latents, textEncoder(tokenIds(tokenizer, captions)).lastHiddenState)
        }
        let noise = Tensor.randn(latents.shape, generator: generator)
        let timesteps = Tensor.randint(0, 1000, [batchSize], generator: generator).toArray(Int64.self).map(Double.init)
        let noisy = scheduler.addNoise(original: latents, noise: noise, timesteps: timesteps)
        let prediction = unet(noisy, timestep: Tensor(timesteps.map(Float.init)), encoderHiddenStates: context)
        let loss = Functional.mseLoss(prediction, noise)
        loss.backward()
        optimizer.step()
        optimizer.zeroGrad()
        return loss.item()
    }
}
