import Foundation
import Torch

/// diffusers' `EulerDiscreteScheduler` (Karras et al. 2022, Algorithm 2): Euler steps of the probability-flow ODE
/// in sigma = sqrt((1 - ᾱ) / ᾱ), with sigmas interpolated linearly at the chosen timesteps. The sample lives at
/// scale sigma (the model sees it divided by sqrt(sigma² + 1)).
public final class EulerDiscreteScheduler: Scheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    /// Stochastic churn (Karras' S_churn, S_tmin, S_tmax, S_noise); the defaults give the deterministic sampler.
    public var sChurn = 0.0
    public var sTmin = 0.0
    public var sTmax = Double.infinity
    public var sNoise = 1.0

    public private(set) var timesteps: [Double] = []
    /// One sigma per timestep, then the final one (0, or the smallest training sigma), float32 as diffusers has them.
    public private(set) var sigmas: [Float]
    public private(set) var predOriginalSample: Tensor?
    /// The index of the next step; set from the timestep at the first call, then counted.
    public private(set) var stepIndex: Int?

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let continuousTimesteps: Bool
    let finalSigmaIsZero: Bool

    public init(config: SchedulerConfig) throws {
        self.config = config
        noiseSchedule = try NoiseSchedule(
            config: config, rescaleZeroTerminalSNR: config.rescaleBetasZeroSNR, zeroTerminalSNRClamp: true)
        // diffusers' Euler also takes "original_sample" for "sample".
        let prediction = config.predictionType == "original_sample" ? "sample" : config.predictionType
        predictionType = try config.checked(.predictionType, prediction, among: PredictionType.allCases)
        spacing = try config.checked(.timestepSpacing, config.timestepSpacing ?? "linspace", among: TimestepSpacing.allCases)
        enum Interpolation: String { case linear }
        _ = try config.checked(.interpolationType, config.interpolationType, among: [Interpolation.linear])
        enum TimestepType: String { case discrete, continuous }
        continuousTimesteps =
            try config.checked(.timestepType, config.timestepType, among: [TimestepType.discrete, .continuous]) == .continuous
            && predictionType == .vPrediction
        enum FinalSigmas: String { case zero, sigmaMin = "sigma_min" }
        finalSigmaIsZero = try config.checked(.finalSigmasType, config.finalSigmasType, among: [FinalSigmas.zero, .sigmaMin]) == .zero
        try config.require(.useKarrasSigmas, config.useKarrasSigmas, is: false)
        try config.require(.useExponentialSigmas, config.useExponentialSigmas, is: false)
        try config.require(.useBetaSigmas, config.useBetaSigmas, is: false)
        sigmas = noiseSchedule.sigmas.reversed() + [0]
    }

    /// The largest sigma (after `setTimesteps`, of the chosen steps); sqrt(sigma² + 1) for "leading" spacing, whose
    /// first step is not the last training timestep.
    public var initNoiseSigma: Double {
        let largest = sigmas.max() ?? 0
        switch spacing {
        case .linspace, .trailing: return Double(largest)
        case .leading: return Double((largest * largest + 1).squareRoot())
        }
    }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, config)
        let trainSteps = config.numTrainTimesteps
        let steps: [Float]
        switch spacing {
        case .linspace:
            steps = NumPy.linspace(0, Double(trainSteps - 1), count).reversed().map { Float($0) }
        case .leading:
            let ratio = trainSteps / count
            steps = (0..<count).reversed().map { Float($0 * ratio) + Float(config.stepsOffset) }
        case .trailing:
            steps = NumPy.arange(Double(trainSteps), 0, -(Double(trainSteps) / Double(count))).map { Float(NumPy.round($0)) - 1 }
        }
        let table = noiseSchedule.sigmas
        let finalSigma: Float = finalSigmaIsZero ? 0 : table[0]
        sigmas = steps.map { Float(NumPy.interp(Double($0), table)) } + [finalSigma]
        if continuousTimesteps {
            timesteps = sigmas.dropLast().map { Double(Float(0.25) * log($0)) }
        } else {
            timesteps = steps.map(Double.init)
        }
        stepIndex = nil
        predOriginalSample = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor {
        if stepIndex == nil { stepIndex = index(of: timestep) }
        let sigma = Double(sigmas[stepIndex!])
        return sample / (sigma * sigma + 1).squareRoot()
    }

    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator?, eta: Double) -> Tensor {
        precondition(!timesteps.isEmpty, "EulerDiscreteScheduler.step: call setTimesteps first")
        if stepIndex == nil { stepIndex = index(of: timestep) }
        let i = stepIndex!
        var sample = sample.dtype == .float32 ? sample : sample.to(.float32)
        let sigma = Double(sigmas[i])
        let gamma = sTmin <= sigma && sigma <= sTmax ? min(sChurn / Double(sigmas.count - 1), 2.0.squareRoot() - 1) : 0
        let sigmaHat = sigma * (gamma + 1)
        if gamma > 0 {
            let eps = noise(like: modelOutput, generator: generator) * sNoise
            sample = sample + eps * (sigmaHat * sigmaHat - sigma * sigma).squareRoot()
        }
        let predOriginal: Tensor
        switch predictionType {
        case .sample: predOriginal = modelOutput
        case .epsilon: predOriginal = sample - sigmaHat * modelOutput
        case .vPrediction:
            predOriginal = modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + sample / (sigma * sigma + 1)
        }
        let derivative = (sample - predOriginal) / sigmaHat
        let dt = Double(sigmas[i + 1]) - sigmaHat
        var prevSample = sample + derivative * dt
        if prevSample.dtype != modelOutput.dtype { prevSample = prevSample.to(modelOutput.dtype) }
        stepIndex = i + 1
        predOriginalSample = predOriginal
        return prevSample
    }

    /// Noise at the sigma of each timestep, which must be one of `timesteps` (diffusers' rule).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        let scales = timesteps.map { sigmas[index(of: $0)] }
        return original + noise * perItem(scales, like: original)
    }

    /// diffusers' `index_for_timestep`: the position in `timesteps`, the second one when it occurs twice.
    func index(of timestep: Double) -> Int {
        let matches = timesteps.indices.filter { timesteps[$0] == timestep }
        guard let first = matches.first else {
            preconditionFailure("EulerDiscreteScheduler: timestep \(timestep) is not one of the scheduler's timesteps")
        }
        return matches.count > 1 ? matches[1] : first
    }
}
