import Foundation
import Torch

/// diffusers' `EulerDiscreteScheduler` (Karras et al. 2022, Algorithm 2): Euler steps of the probability-flow ODE
/// in sigma = sqrt((1 - ᾱ) / ᾱ), with sigmas interpolated linearly at the chosen timesteps, or with
/// `use_karras_sigmas` Karras' schedule between the first and last of those and the timesteps that have them. The
/// sample lives at scale sigma (the model sees it divided by sqrt(sigma² + 1)).
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
        try config.require(.useExponentialSigmas, config.useExponentialSigmas, is: false)
        try config.require(.useBetaSigmas, config.useBetaSigmas, is: false)
        sigmas = noiseSchedule.sigmas.reversed() + [0]
    }

    public var initNoiseSigma: Double { SigmaSchedule.initNoiseSigma(sigmas, spacing: spacing) }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, config)
        let steps = SigmaSchedule.eulerTimesteps(spacing, count: count, config: config)
        let table = noiseSchedule.sigmas
        var chosen = SigmaSchedule.interpolated(steps.map(Double.init), table: table)
        var fractionalSteps = steps.map(Double.init)
        if config.useKarrasSigmas {
            // Between the sigmas of the spacing's first and last timesteps, each at the timestep that has it.
            chosen = SigmaSchedule.karras(sigmaMax: chosen[0], sigmaMin: chosen[chosen.count - 1], count: count)
            let logSigmas = SigmaSchedule.logSigmas(table)
            fractionalSteps = chosen.map { SigmaSchedule.timestep(ofSigma: $0, logSigmas: logSigmas) }
        }
        let finalSigma: Float = finalSigmaIsZero ? 0 : table[0]
        sigmas = chosen.map { Float($0) } + [finalSigma]
        if continuousTimesteps {
            timesteps = sigmas.dropLast().map { Double(Float(0.25) * log($0)) }
        } else {
            timesteps = fractionalSteps.map { Double(Float($0)) }
        }
        stepIndex = nil
        predOriginalSample = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor {
        if stepIndex == nil { stepIndex = index(of: timestep) }
        return SigmaSchedule.modelInput(sample, sigma: sigmas[stepIndex!])
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
        original + noise * perItem(timesteps.map { sigmas[index(of: $0)] }, like: original)
    }

    func index(of timestep: Double) -> Int { SigmaSchedule.index(of: timestep, in: timesteps, of: self) }
}
