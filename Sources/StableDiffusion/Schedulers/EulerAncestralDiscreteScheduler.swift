import Foundation
import Torch

/// diffusers' `EulerAncestralDiscreteScheduler` ("Euler a"): each step goes down by Euler's method past the next
/// sigma, to sigma_down, and adds fresh noise of standard deviation sigma_up, with sigma_down² + sigma_up² equal to
/// the next sigma² (the ancestral step of Song et al.'s reverse SDE in Karras' parameterisation). The noise is one
/// `randn` shaped like the model output per step, the last step's included, from the generator the pipeline drew
/// the initial latents with: the same seed gives diffusers' images.
///
/// Timesteps and sigmas as `EulerDiscreteScheduler` without its options (diffusers' class has no Karras sigmas,
/// final sigma or continuous timesteps, and ignores those keys of a config written for Euler).
public final class EulerAncestralDiscreteScheduler: Scheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule

    public private(set) var timesteps: [Double] = []
    /// One sigma per timestep, then 0, float32 as diffusers has them.
    public private(set) var sigmas: [Float]
    public private(set) var predOriginalSample: Tensor?
    /// The index of the next step; set from the timestep at the first call, then counted.
    public private(set) var stepIndex: Int?

    let predictionType: PredictionType
    let spacing: TimestepSpacing

    public init(config: SchedulerConfig) throws {
        self.config = config
        noiseSchedule = try NoiseSchedule(
            config: config, rescaleZeroTerminalSNR: config.rescaleBetasZeroSNR, zeroTerminalSNRClamp: true)
        // diffusers raises NotImplementedError for "sample".
        predictionType = try config.checked(.predictionType, config.predictionType, among: [PredictionType.epsilon, .vPrediction])
        spacing = try config.checked(.timestepSpacing, config.timestepSpacing ?? "linspace", among: TimestepSpacing.allCases)
        sigmas = noiseSchedule.sigmas.reversed() + [0]
    }

    public var initNoiseSigma: Double { SigmaSchedule.initNoiseSigma(sigmas, spacing: spacing) }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, config)
        let steps = SigmaSchedule.eulerTimesteps(spacing, count: count, config: config).map(Double.init)
        sigmas = SigmaSchedule.interpolated(steps, table: noiseSchedule.sigmas).map { Float($0) } + [0]
        timesteps = steps
        stepIndex = nil
        predOriginalSample = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor {
        if stepIndex == nil { stepIndex = index(of: timestep) }
        return SigmaSchedule.modelInput(sample, sigma: sigmas[stepIndex!])
    }

    /// Draws one normal sample per element of `modelOutput` from `generator` (nil: the default generator), in the
    /// model output's dtype, as diffusers' `randn_tensor` does.
    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator?, eta: Double) -> Tensor {
        precondition(!timesteps.isEmpty, "EulerAncestralDiscreteScheduler.step: call setTimesteps first")
        if stepIndex == nil { stepIndex = index(of: timestep) }
        let i = stepIndex!
        let sample = sample.dtype == .float32 ? sample : sample.to(.float32)
        let sigma = Double(sigmas[i]), next = Double(sigmas[i + 1])
        let predOriginal: Tensor
        switch predictionType {
        case .vPrediction: predOriginal = modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + sample / (sigma * sigma + 1)
        default: predOriginal = sample - sigma * modelOutput
        }
        // The variance of the step to the next sigma, split between the deterministic part (down) and new noise (up).
        let sigmaUp = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).squareRoot()
        let sigmaDown = (next * next - sigmaUp * sigmaUp).squareRoot()
        let derivative = (sample - predOriginal) / sigma
        var prevSample = sample + derivative * (sigmaDown - sigma)
        prevSample = prevSample + noise(like: modelOutput, generator: generator) * sigmaUp
        if prevSample.dtype != modelOutput.dtype { prevSample = prevSample.to(modelOutput.dtype) }
        stepIndex = i + 1
        predOriginalSample = predOriginal
        return prevSample
    }

    /// Noise at the sigma of each timestep, which must be one of `timesteps` (diffusers' rule).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        original + noise * perItem(timesteps.map { sigmas[index(of: $0)] }, like: original)
    }

    func index(of timestep: Double) -> Int { SigmaSchedule.index(of: timestep, in: timesteps, of: self) }
}
