import Foundation
import Torch

/// diffusers' `DDIMScheduler` (Song et al., "Denoising Diffusion Implicit Models"): x_{t-1} from the predicted x_0
/// and the predicted noise, with `eta` of DDPM's variance added back (0: deterministic).
public final class DDIMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    /// ᾱ before the first training step: 1 with `set_alpha_to_one`, else ᾱ_0.
    public let finalAlphaCumprod: Double
    /// Recompute the noise from the clipped x_0 (diffusers' `use_clipped_model_output`).
    public var useClippedModelOutput = false

    public private(set) var timesteps: [Double] = []
    public private(set) var predOriginalSample: Tensor?
    public var initNoiseSigma: Double { 1 }

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    private var stepCount: Int?

    public init(config: SchedulerConfig) throws {
        self.config = config
        noiseSchedule = try NoiseSchedule(config: config, rescaleZeroTerminalSNR: config.rescaleBetasZeroSNR)
        finalAlphaCumprod = config.setAlphaToOne ?? true ? 1 : Double(noiseSchedule.alphasCumprod[0])
        predictionType = try config.checked(.predictionType, config.predictionType, among: PredictionType.allCases)
        spacing = try config.checked(.timestepSpacing, config.timestepSpacing ?? "leading", among: TimestepSpacing.allCases)
        try config.require(.thresholding, config.thresholding, is: false)
    }

    public var readsTrainingScheduleAtTimesteps: Bool { true }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, config)
        let trainSteps = config.numTrainTimesteps
        let values: [Int]
        switch spacing {
        case .linspace:
            values = NumPy.linspace(0, Double(trainSteps - 1), count).map { Int(NumPy.round($0)) }.reversed()
        case .leading:
            let ratio = trainSteps / count
            values = (0..<count).reversed().map { $0 * ratio + config.stepsOffset }
        case .trailing:
            // Can give count + 1 values ending at -1 (e.g. 61 steps), as diffusers does.
            values = NumPy.arange(Double(trainSteps), 0, -(Double(trainSteps) / Double(count))).map { Int(NumPy.round($0)) - 1 }
        }
        timesteps = values.map(Double.init)
        stepCount = count
        predOriginalSample = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor { sample }

    /// `eta`: the weight of DDPM's noise (0: DDIM, 1: DDPM-like), drawn from `generator` when above 0.
    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator?, eta: Double) -> Tensor {
        guard let stepCount else { preconditionFailure("DDIMScheduler.step: call setTimesteps first") }
        precondition(timestep == timestep.rounded(), "DDIMScheduler.step: timestep \(timestep) is not a whole number")
        let t = Int(timestep)
        let prevT = t - config.numTrainTimesteps / stepCount
        let alphaProd = noiseSchedule.alphaCumprod(at: t)
        let alphaProdPrev = prevT >= 0 ? noiseSchedule.alphaCumprod(at: prevT) : finalAlphaCumprod
        let betaProd = 1 - alphaProd

        var predOriginal: Tensor, predEpsilon: Tensor
        switch predictionType {
        case .epsilon:
            predOriginal = (sample - betaProd.squareRoot() * modelOutput) / alphaProd.squareRoot()
            predEpsilon = modelOutput
        case .sample:
            predOriginal = modelOutput
            predEpsilon = (sample - alphaProd.squareRoot() * predOriginal) / betaProd.squareRoot()
        case .vPrediction:
            predOriginal = alphaProd.squareRoot() * sample - betaProd.squareRoot() * modelOutput
            predEpsilon = alphaProd.squareRoot() * modelOutput + betaProd.squareRoot() * sample
        }
        if config.clipSample {
            predOriginal = predOriginal.clamp(min: -config.clipSampleRange, max: config.clipSampleRange)
        }

        let betaProdPrev = 1 - alphaProdPrev
        let variance = (betaProdPrev / betaProd) * (1 - alphaProd / alphaProdPrev)
        let stdDev = eta * variance.squareRoot()
        if useClippedModelOutput {
            predEpsilon = (sample - alphaProd.squareRoot() * predOriginal) / betaProd.squareRoot()
        }
        let direction = (1 - alphaProdPrev - stdDev * stdDev).squareRoot() * predEpsilon
        var prevSample = alphaProdPrev.squareRoot() * predOriginal + direction
        if eta > 0 {
            prevSample = prevSample + stdDev * noise(like: modelOutput, generator: generator)
        }
        predOriginalSample = predOriginal
        return prevSample
    }

    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        noiseSchedule.addNoise(original: original, noise: noise, timesteps: timesteps)
    }
}
