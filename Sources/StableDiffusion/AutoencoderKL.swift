import Foundation
import NN
import Torch

/// diffusers' `AutoencoderKL` config (`vae/config.json`), with diffusers' defaults for absent keys.
public struct AutoencoderKLConfig: Codable, Sendable, Equatable {
    public var in_channels = 3
    public var out_channels = 3
    public var down_block_types = ["DownEncoderBlock2D"]
    public var up_block_types = ["UpDecoderBlock2D"]
    public var block_out_channels = [64]
    public var layers_per_block = 1
    public var act_fn = "silu"
    public var latent_channels = 4
    public var norm_num_groups = 32
    public var sample_size = 32
    /// Latents are `scaling_factor * (z - shift_factor)` for the UNet (SD 1.x/2.x: 0.18215, no shift).
    public var scaling_factor = 0.18215
    public var shift_factor: Double? = nil
    public var latents_mean: [Double]? = nil
    public var latents_std: [Double]? = nil
    /// Whether pipelines run this VAE in float32 even when the rest is half precision (SD's VAE overflows in fp16).
    public var force_upcast = true
    public var use_quant_conv = true
    public var use_post_quant_conv = true
    public var mid_block_add_attention = true

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            try c.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        let d = AutoencoderKLConfig()
        in_channels = try value(.in_channels, d.in_channels)
        out_channels = try value(.out_channels, d.out_channels)
        down_block_types = try value(.down_block_types, d.down_block_types)
        up_block_types = try value(.up_block_types, d.up_block_types)
        block_out_channels = try value(.block_out_channels, d.block_out_channels)
        layers_per_block = try value(.layers_per_block, d.layers_per_block)
        act_fn = try value(.act_fn, d.act_fn)
        latent_channels = try value(.latent_channels, d.latent_channels)
        norm_num_groups = try value(.norm_num_groups, d.norm_num_groups)
        sample_size = try value(.sample_size, d.sample_size)
        scaling_factor = try value(.scaling_factor, d.scaling_factor)
        shift_factor = try value(.shift_factor, d.shift_factor)
        latents_mean = try value(.latents_mean, d.latents_mean)
        latents_std = try value(.latents_std, d.latents_std)
        force_upcast = try value(.force_upcast, d.force_upcast)
        use_quant_conv = try value(.use_quant_conv, d.use_quant_conv)
        use_post_quant_conv = try value(.use_post_quant_conv, d.use_post_quant_conv)
        mid_block_add_attention = try value(.mid_block_add_attention, d.mid_block_add_attention)
    }

    /// Throws `StableDiffusionError.unsupported` for a value this implementation cannot build; `file` names the config.
    public func validate(file: String) throws {
        func require(_ ok: Bool, _ key: String, _ value: String, _ supported: [String]) throws {
            guard ok else { throw StableDiffusionError.unsupported(file: file, key: key, value: value, supported: supported) }
        }
        for type in down_block_types {
            try require(type == "DownEncoderBlock2D", "down_block_types", type, ["DownEncoderBlock2D"])
        }
        for type in up_block_types { try require(type == "UpDecoderBlock2D", "up_block_types", type, ["UpDecoderBlock2D"]) }
        try require(["silu", "swish"].contains(act_fn), "act_fn", act_fn, ["silu", "swish"])
        for (key, length) in [("down_block_types", down_block_types.count), ("up_block_types", up_block_types.count)]
        where length != block_out_channels.count {
            throw StableDiffusionError.invalidConfig(
                file: file, message: "key \"\(key)\" has \(length) entries, block_out_channels has \(block_out_channels.count)")
        }
        try checkRanges(file: file)
    }
}

extension AutoencoderKLConfig: RangeCheckedConfig {
    public func checkRanges(file: String, prefix: String? = nil) throws {
        let check = ConfigRanges(file: file, prefix: prefix)
        try check.int("block_out_channels", block_out_channels.count, in: 1...16)
        try check.width("in_channels", in_channels)
        try check.width("out_channels", out_channels)
        try check.width("latent_channels", latent_channels)
        try check.layers("layers_per_block", layers_per_block)
        try check.width("norm_num_groups", norm_num_groups)
        try check.int("sample_size", sample_size, in: 1...65_536)
        try check.double("scaling_factor", scaling_factor, in: 0...1e6, open: true)
        if let shift_factor { try check.double("shift_factor", shift_factor, in: -1e6...1e6) }
        for (i, channels) in block_out_channels.enumerated() {
            try check.width("block_out_channels.\(i)", channels)
            if channels % norm_num_groups != 0 {
                throw check.fail("norm_num_groups", "(\(norm_num_groups)) must divide block_out_channels.\(i) (\(channels))")
            }
        }
        // Encoder and decoder resnets of 3x3 convolutions (the decoder has one more per level), a rough upper estimate.
        let total = block_out_channels.reduce(0.0) { $0 + Double(2 * layers_per_block + 1) * 18 * Double($1) * Double($1) }
        try check.parameters(total, key: "layers_per_block")
    }
}

/// diffusers' `DiagonalGaussianDistribution`: the encoder's latent distribution per element.
public struct DiagonalGaussianDistribution {
    public let mean: Tensor
    /// Clamped to [-30, 20], as diffusers does, so that `std` neither underflows nor overflows.
    public let logvar: Tensor
    public let std: Tensor
    public let variance: Tensor

    /// `parameters` [B, 2 * C, h, w]: the mean's channels, then the log-variance's.
    public init(_ parameters: Tensor) {
        let halves = parameters.chunk(2, dim: 1)
        mean = halves[0]
        logvar = halves[1].clamp(min: -30, max: 20)
        std = (logvar * 0.5).exp()
        variance = logvar.exp()
    }

    /// mean + std * ε, ε drawn as `torch.randn(mean.shape, generator=generator, device=drawDevice)` then moved to the
    /// mean's device: diffusers' `randn_tensor` draws on a CPU generator's device, so the same seed gives the same
    /// latents on every device. Pass the generator's device as `drawDevice` when it is not the CPU.
    public func sample(generator: Generator? = nil, drawDevice: Device = .cpu) -> Tensor {
        let noise = Tensor.randn(mean.shape, dtype: mean.dtype, generator: generator, device: drawDevice)
        return mean + std * (noise.device == mean.device ? noise : noise.to(mean.device))
    }

    /// The most likely latent: the mean.
    public func mode() -> Tensor { mean }
}

/// diffusers' `AutoencoderKL` (Stable Diffusion's VAE): `encoder`, `quant_conv`, `post_quant_conv`, `decoder`.
/// Images are in [-1, 1]; `encode` gives the unscaled latent distribution and `decode` takes unscaled latents
/// (multiply by, and divide by, `config.scaling_factor` around the UNet, as the pipelines do).
public final class AutoencoderKL: Module {
    public let scope: ParameterScope
    public let config: AutoencoderKLConfig
    let encoder: VAEEncoder
    let decoder: VAEDecoder
    let quantConv: Conv2d?
    let postQuantConv: Conv2d?

    public init(_ vb: VarBuilder, config: AutoencoderKLConfig, configFile: String = "config.json") throws {
        try config.validate(file: configFile)
        scope = vb.scope
        self.config = config
        encoder = VAEEncoder(vb.pp("encoder"), config: config)
        decoder = VAEDecoder(vb.pp("decoder"), config: config)
        let latent = config.latent_channels
        quantConv = config.use_quant_conv
            ? Conv2d(vb.pp("quant_conv"), inChannels: 2 * latent, outChannels: 2 * latent, kernelSize: 1) : nil
        postQuantConv = config.use_post_quant_conv
            ? Conv2d(vb.pp("post_quant_conv"), inChannels: latent, outChannels: latent, kernelSize: 1) : nil
    }

    /// How much smaller the latent is than the image on each side: 2^(blocks - 1) (8 for Stable Diffusion).
    public var vaeScaleFactor: Int { 1 << (config.block_out_channels.count - 1) }

    /// The weights' floating-point type.
    public var dtype: DType { decoder.convIn.weight.dtype }

    /// `decode` as a chain of pieces (the decoder's `stages`, the first taking the latents in their own type and the
    /// last handing the image back in it), for gradient checkpointing: applied in order they give `decode(latents)`.
    public func decodeStages(latentType: DType) -> [(Tensor) -> Tensor] {
        var stages = decoder.stages
        let dtype = self.dtype
        let first = stages[0], last = stages[stages.count - 1]
        stages[0] = { [postQuantConv] latents in
            let input = latents.dtype == dtype ? latents : latents.to(dtype)
            return first(postQuantConv.map { $0(input) } ?? input)
        }
        stages[stages.count - 1] = { hidden in
            let image = last(hidden)
            return image.dtype == latentType ? image : image.to(latentType)
        }
        return stages
    }

    /// image [B, in_channels, H, W] in [-1, 1] -> the latent distribution, in the image's floating-point type (an
    /// image of another type than the weights' is cast to theirs for the computation, as autocast would).
    public func encode(_ image: Tensor) -> DiagonalGaussianDistribution {
        let dtype = self.dtype
        let moments = encoder(image.dtype == dtype ? image : image.to(dtype))
        let output = quantConv.map { $0(moments) } ?? moments
        return DiagonalGaussianDistribution(output.dtype == image.dtype ? output : output.to(image.dtype))
    }

    /// latents [B, latent_channels, h, w] (unscaled) -> image [B, out_channels, h * f, w * f], roughly in [-1, 1], in
    /// the latents' floating-point type (computed in the weights').
    public func decode(_ latents: Tensor) -> Tensor {
        let dtype = self.dtype
        let input = latents.dtype == dtype ? latents : latents.to(dtype)
        let image = decoder(postQuantConv.map { $0(input) } ?? input)
        return image.dtype == latents.dtype ? image : image.to(latents.dtype)
    }

    /// Reads a diffusers `vae/` folder: `config.json` and `diffusion_pytorch_model[.variant].safetensors` (or `.bin`),
    /// strictly; the attention's pre-0.14 names load too. `dtype` nil keeps the stored precision.
    /// `weights`: where the tensors come from instead of the folder's file (a single-file model's, `SingleFileCheckpoint`).
    public static func load(
        folder: URL, variant: String? = nil, dtype: DType? = nil, device: Device = .cpu,
        weights: ((AutoencoderKLConfig) throws -> any WeightSource)? = nil
    ) throws -> AutoencoderKL {
        let configURL = folder.appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: folder.path) else { throw StableDiffusionError.missingFile(folder.path) }
        let config = try decodeConfig(AutoencoderKLConfig.self, from: configURL)
        let source = try weights?(config) ?? componentWeights(in: folder, baseName: "diffusion_pytorch_model", variant: variant)
        return try VarBuilder.load(source, dtype: dtype, device: device) {
            try AutoencoderKL($0, config: config, configFile: configURL.path)
        }
    }
}
