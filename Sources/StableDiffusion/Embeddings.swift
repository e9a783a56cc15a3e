import Foundation
import NN
import Torch

// diffusers' models/embeddings.py: the sinusoidal timestep features and the MLP that embeds them.

/// diffusers' `get_timestep_embedding`: sinusoidal features of (possibly fractional) timesteps [N] -> [N, dim].
/// Frequencies are exp(-ln(maxPeriod) * i / (dim/2 - downscaleFreqShift)) for i in 0..<dim/2, computed in float32
/// in the same order of operations as diffusers, so the features match bit for bit.
public func timestepEmbedding(
    _ timesteps: Tensor, dimension: Int, flipSinToCos: Bool = false, downscaleFreqShift: Double = 1, scale: Double = 1,
    maxPeriod: Double = 10000
) -> Tensor {
    precondition(timesteps.rank == 1, "timestepEmbedding: timesteps must be one-dimensional, got \(timesteps.shape)")
    let half = dimension / 2
    let exponent = Tensor.arange(0, Double(half), dtype: .float32, device: timesteps.device) * -Foundation.log(maxPeriod)
        / (Double(half) - downscaleFreqShift)
    let frequencies = exponent.exp()
    let arguments = timesteps.unsqueeze(1).to(.float32) * frequencies.unsqueeze(0) * scale
    var embedding = Tensor.cat([arguments.sin(), arguments.cos()], dim: -1)
    if flipSinToCos {
        embedding = Tensor.cat([embedding.slice(dim: 1, start: half), embedding.slice(dim: 1, end: half)], dim: -1)
    }
    if dimension % 2 == 1 { embedding = Functional.pad(embedding, [0, 1, 0, 0]) }
    return embedding
}

/// diffusers' `Timesteps`: `timestepEmbedding` with a model's settings; it has no parameters.
public struct Timesteps: Sendable {
    public let channels: Int
    public let flipSinToCos: Bool
    public let downscaleFreqShift: Double

    public func callAsFunction(_ timesteps: Tensor) -> Tensor {
        timestepEmbedding(timesteps, dimension: channels, flipSinToCos: flipSinToCos, downscaleFreqShift: downscaleFreqShift)
    }
}

/// diffusers' `TimestepEmbedding` (`linear_1`, SiLU, `linear_2`), without the optional condition projection and
/// post-activation, which Stable Diffusion's UNets do not use.
public final class TimestepEmbedding: Module {
    public let scope: ParameterScope
    let linear1, linear2: Linear

    public init(_ vb: VarBuilder, inChannels: Int, timeEmbedDim: Int) {
        scope = vb.scope
        linear1 = Linear(vb.pp("linear_1"), inFeatures: inChannels, outFeatures: timeEmbedDim)
        linear2 = Linear(vb.pp("linear_2"), inFeatures: timeEmbedDim, outFeatures: timeEmbedDim)
    }

    public func callAsFunction(_ sample: Tensor) -> Tensor { linear2(linear1(sample).silu()) }
}
