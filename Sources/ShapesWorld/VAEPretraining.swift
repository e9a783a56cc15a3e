import Foundation
import NN
import StableDiffusion
import Torch

/// The tiny VAE of ShapesWorld, in diffusers' `AutoencoderKL` layout (a `vae/` folder the same loading code reads):
/// 32×32×3 images ↔ 8×8×4 latents, three blocks (32, 64, 64 channels), so a downsampling factor of 4.
public enum TinyVAE {
    public static func config() -> AutoencoderKLConfig {
        var config = AutoencoderKLConfig()
        config.block_out_channels = [32, 64, 64]
        config.down_block_types = Array(repeating: "DownEncoderBlock2D", count: 3)
        config.up_block_types = Array(repeating: "UpDecoderBlock2D", count: 3)
        config.layers_per_block = 1
        config.norm_num_groups = 8
        config.latent_channels = 4
        config.sample_size = 32
        // SD's value, a placeholder: once pretrained, measure it with `scalingFactor(of:)`.
        config.scaling_factor = 0.18215
        return config
    }

    /// The standard deviation of the (unscaled) latents `posterior.sample()` of `sceneCount` random scenes of `split`
    /// (clean renders), over all their elements: the statistic behind Stable Diffusion's `scaling_factor`.
    public static func latentStd(of vae: AutoencoderKL, sceneCount: Int = 256, split: Split = .train, seed: UInt64 = 0)
        -> Double
    {
        withNoGrad {
            var random = SplitMix64(seed: seed)
            let generator = Generator(seed: seed)
            var latents: [Tensor] = []
            var remaining = sceneCount
            while remaining > 0 {
                let n = min(remaining, 64)
                let scenes = (0..<n).map { _ in Scene.random(split: split, using: &random) }
                let x = Renderer.renderTensor(scenes).to(vae.parameterDevice) * 2 - 1
                latents.append(vae.encode(x).sample(generator: generator))
                remaining -= n
            }
            return Tensor.cat(latents, dim: 0).std().item()
        }
    }

    /// SD's recipe for `scaling_factor`: 1 / the latents' std, so the UNet sees latents of unit variance.
    public static func scalingFactor(of vae: AutoencoderKL, sceneCount: Int = 256, split: Split = .train,
                                     seed: UInt64 = 0) -> Double {
        1 / latentStd(of: vae, sceneCount: sceneCount, split: split, seed: seed)
    }
}

extension AutoencoderKL {
    fileprivate var parameterDevice: Device { namedParameters.first?.tensor.device ?? .cpu }
}

/// KL(N(mean, var) ‖ N(0, 1)) summed over each image's latent elements, averaged over the batch (diffusers'
/// `DiagonalGaussianDistribution.kl()`, then `.mean()` as in SD's `LPIPSWithDiscriminator`).
public func klToStandardNormal(_ posterior: DiagonalGaussianDistribution) -> Tensor {
    ((posterior.mean.square() + posterior.variance - 1 - posterior.logvar) * 0.5).sum([1, 2, 3]).mean()
}

/// Trains the tiny VAE on renders of training-split scenes, some degraded (so that the latent space can also hold
/// the degraded images the aesthetic head is trained on).
///
/// The loss is `mean |recon − x| + klWeight · KL / (3·32·32)`, x in [-1, 1], KL summed over an image's latent
/// elements. This is exactly Stable Diffusion's VAE objective (per-image sums, `kl_weight` 1e-6, L1) without its LPIPS
/// and GAN terms, divided by the constant 3·32·32 so the reconstruction term reads as a per-pixel mean: `klWeight`
/// keeps SD's meaning and default. L1 rather than MSE, as SD does: ShapesWorld's images are flat colours with hard
/// edges, and L1 keeps the edges sharp where MSE blurs them towards the mean; it is also the metric we report.
public final class VAEPretrainer {
    public let model: AutoencoderKL
    let optimizer: AdamW
    var random: SplitMix64
    let noise: Generator
    public let batchSize: Int
    public let klWeight: Double
    /// The probability that a training image gets one random `Degradation`.
    public let degradationProbability: Double

    /// The log-variance the encoder starts with (the bias of `quant_conv`'s log-variance half).
    public static let initialLogVariance = -6.0

    public init(seed: UInt64, batchSize: Int = 32, learningRate: Double = 1e-3, klWeight: Double = 1e-6,
                degradationProbability: Double = 0.3) throws {
        let model = try AutoencoderKL(VarBuilder(initializingWith: Generator(seed: seed)), config: TinyVAE.config())
        // Start the posterior nearly deterministic (log-variance −6, std 0.05) instead of std ≈ 1: at std 1 the
        // decoder first sees pure noise and learns to ignore the latents, and the encoder's means must grow past the
        // noise before anything is reconstructed (hundreds of steps). With SD's tiny KL weight the trained posterior
        // is nearly deterministic anyway; the KL term still moves the variance from there.
        withNoGrad {
            let latent = model.config.latent_channels
            for (name, tensor) in model.namedParameters where name == "quant_conv.bias" {
                tensor.narrow(dim: 0, start: latent, length: latent).fill_(Self.initialLogVariance)
            }
        }
        model.setTrainable(true)
        self.model = model
        // No weight decay: SD's VAE was trained with plain Adam.
        optimizer = AdamW(parameters: model.trainableParameters, learningRate: learningRate, weightDecay: 0)
        random = SplitMix64(seed: seed)
        noise = Generator(seed: seed &+ 1)
        self.batchSize = batchSize
        self.klWeight = klWeight
        self.degradationProbability = degradationProbability
    }

    /// Renders of random scenes of `split`, each degraded with probability `degradationProbability`, as x in [-1, 1].
    static func batch(split: Split, count: Int, degradationProbability: Double, using random: inout SplitMix64)
        -> Tensor
    {
        let images = (0..<count).map { _ -> [UInt8] in
            let image = Renderer.render(Scene.random(split: split, using: &random))
            return random.unit() < degradationProbability ? Degradation.random(using: &random).apply(to: image) : image
        }
        return Renderer.tensor(images) * 2 - 1
    }

    /// One AdamW step on a fresh training batch. Returns the loss, its reconstruction term (mean |recon − x|, x in
    /// [-1, 1]) and the KL (per image, summed over latent elements).
    @discardableResult
    public func step() -> (loss: Double, reconstruction: Double, kl: Double) {
        let x = Self.batch(split: .train, count: batchSize, degradationProbability: degradationProbability,
                           using: &random)
        let posterior = model.encode(x)
        let recon = model.decode(posterior.sample(generator: noise))
        let reconstruction = (recon - x).abs().mean()
        let kl = klToStandardNormal(posterior)
        let loss = reconstruction + kl * (klWeight / Double(x.shape.dropFirst().reduce(1, *)))
        loss.backward()
        optimizer.step()
        optimizer.zeroGrad()
        return (loss.item(), reconstruction.item(), kl.item())
    }

    /// Mean absolute error in [0, 1] pixel units of decode(posterior mean) on a batch of `count` clean renders of
    /// `split`. The batch is drawn from its own generator seeded by `seed`, so it is the same batch at every call
    /// (comparable before and after training) and training's random stream is untouched.
    public func reconstructionError(split: Split, count: Int = 64, seed: UInt64 = 0x5EED) -> Double {
        withNoGrad {
            var random = SplitMix64(seed: seed)
            let x = Self.batch(split: split, count: count, degradationProbability: 0, using: &random)
            let recon = model.decode(model.encode(x).mode())
            return ((recon.clamp(min: -1, max: 1) - x).abs().mean() / 2).item()
        }
    }

    /// Writes a diffusers `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors`. `scalingFactor`
    /// (e.g. `TinyVAE.scalingFactor(of: model)`) replaces the config's; nil keeps it. Weights in `dtype`.
    public func save(to folder: URL, scalingFactor: Double? = nil, dtype: DType = .float32) throws {
        var config = model.config
        if let scalingFactor { config.scaling_factor = scalingFactor }
        try ModelWriter.writeComponent(config: config, className: "AutoencoderKL", weights: model.stateDict(), to: folder,
                                        weightsName: "diffusion_pytorch_model.safetensors", dtype: dtype)
    }
}
