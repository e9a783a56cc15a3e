import Foundation
import Torch

/// diffusers' `PNDMScheduler` (Liu et al., "Pseudo Numerical Methods for Diffusion Models"): linear multistep
/// (PLMS, up to fourth order, over the history of model outputs) of the DDIM transfer, started by Runge-Kutta (PRK)
/// steps unless `skip_prk_steps` (Stable Diffusion's configs skip them).
public final class PNDMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    /// ᾱ before the first training step: 1 with `set_alpha_to_one` (default false here), else ᾱ_0.
    public let finalAlphaCumprod: Double

    public private(set) var timesteps: [Double] = []
    public var initNoiseSigma: Double { 1 }
    /// PNDM does not estimate x_0.
    public var predOriginalSample: Tensor? { nil }

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    private var stepCount: Int?
    private var prkTimesteps: [Int] = []
    private var counter = 0
    /// Model outputs of past steps, newest last (the last four are used).
    private var ets: [Tensor] = []
    private var curModelOutput: Tensor?
    private var curSample: Tensor?

    public init(config: SchedulerConfig) throws {
        self.config = config
        noiseSchedule = try NoiseSchedule(config: config, rescaleZeroTerminalSNR: false)
        finalAlphaCumprod = config.setAlphaToOne ?? false ? 1 : Double(noiseSchedule.alphasCumprod[0])
        predictionType = try config.checked(.predictionType, config.predictionType, among: [PredictionType.epsilon, .vPrediction])
        spacing = try config.checked(.timestepSpacing, config.timestepSpacing ?? "leading", among: TimestepSpacing.allCases)
    }

    public var readsTrainingScheduleAtTimesteps: Bool { true }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, config)
        if !config.skipPrkSteps && count < 4 {
            throw StableDiffusionError.invalidArgument(
                "--steps must be at least 4 for PNDMScheduler with Runge-Kutta steps (skip_prk_steps false) (got \(count))")
        }
        let trainSteps = config.numTrainTimesteps
        // Ascending, as diffusers builds them before ordering the steps.
        let base: [Int]
        switch spacing {
        case .linspace:
            base = NumPy.linspace(0, Double(trainSteps - 1), count).map { Int(NumPy.round($0)) }
        case .leading:
            let ratio = trainSteps / count
            base = (0..<count).map { $0 * ratio + config.stepsOffset }
        case .trailing:
            base = NumPy.arange(Double(trainSteps), 0, -(Double(trainSteps) / Double(count))).map { Int(NumPy.round($0)) - 1 }
                .reversed()
        }
        let plms: [Int]
        if config.skipPrkSteps {
            // The second-to-last timestep twice: the first PLMS step is a two-call Heun-like step.
            prkTimesteps = []
            plms = (base.dropLast() + base.suffix(2).prefix(base.count > 1 ? 1 : 0) + base.suffix(1)).reversed()
        } else {
            // Each of the last four timesteps and its midpoint, for the four evaluations of each RK step.
            let half = trainSteps / count / 2
            let points = base.suffix(4).flatMap { [$0, $0 + half] }.dropLast()
            prkTimesteps = Array(points.flatMap { [$0, $0] }.dropFirst().dropLast().reversed())
            plms = base.dropLast(3).reversed()
        }
        timesteps = (prkTimesteps + plms).map(Double.init)
        stepCount = count
        counter = 0
        ets = []
        curModelOutput = nil
        curSample = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor { sample }

    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator?, eta: Double) -> Tensor {
        guard let stepCount else { preconditionFailure("PNDMScheduler.step: call setTimesteps first") }
        precondition(timestep == timestep.rounded(), "PNDMScheduler.step: timestep \(timestep) is not a whole number")
        if counter < prkTimesteps.count && !config.skipPrkSteps {
            return stepRungeKutta(modelOutput, timestep: Int(timestep), sample: sample, stepCount: stepCount)
        }
        return stepLinearMultistep(modelOutput, timestep: Int(timestep), sample: sample, stepCount: stepCount)
    }

    private func stepRungeKutta(_ modelOutput: Tensor, timestep: Int, sample: Tensor, stepCount: Int) -> Tensor {
        let diffToPrev = counter % 2 == 1 ? 0 : config.numTrainTimesteps / stepCount / 2
        let prevTimestep = timestep - diffToPrev
        let t = prkTimesteps[counter / 4 * 4]
        var output = modelOutput
        switch counter % 4 {
        case 0:
            curModelOutput = accumulate(modelOutput * (1.0 / 6))
            ets.append(modelOutput)
            curSample = sample
        case 1, 2:
            curModelOutput = accumulate(modelOutput * (1.0 / 3))
        default:
            output = accumulate(modelOutput * (1.0 / 6))
            curModelOutput = nil
        }
        let prev = previousSample(curSample ?? sample, timestep: t, prevTimestep: prevTimestep, modelOutput: output)
        counter += 1
        return prev
    }

    private func accumulate(_ term: Tensor) -> Tensor { curModelOutput.map { $0 + term } ?? term }

    private func stepLinearMultistep(_ modelOutput: Tensor, timestep: Int, sample: Tensor, stepCount: Int) -> Tensor {
        let stride = config.numTrainTimesteps / stepCount
        var t = timestep, prevTimestep = timestep - stride
        if counter != 1 {
            ets = Array(ets.suffix(3)) + [modelOutput]
        } else {
            prevTimestep = timestep
            t = timestep + stride
        }
        var sample = sample
        let output: Tensor
        let e = ets.reversed().map { $0 }  // e[0] is the newest
        if ets.count == 1 && counter == 0 {
            output = modelOutput
            curSample = sample
        } else if ets.count == 1 && counter == 1 {
            output = (modelOutput + e[0]) / 2
            sample = curSample!
            curSample = nil
        } else if ets.count == 2 {
            output = (e[0] * 3 - e[1]) / 2
        } else if ets.count == 3 {
            output = (e[0] * 23 - e[1] * 16 + e[2] * 5) / 12
        } else {
            output = (e[0] * 55 - e[1] * 59 + e[2] * 37 - e[3] * 9) * (1.0 / 24)
        }
        let prev = previousSample(sample, timestep: t, prevTimestep: prevTimestep, modelOutput: output)
        counter += 1
        return prev
    }

    /// The DDIM transfer from `timestep` to `prevTimestep` given a noise estimate (formula (9) of the paper).
    private func previousSample(_ sample: Tensor, timestep: Int, prevTimestep: Int, modelOutput: Tensor) -> Tensor {
        let alphaProd = noiseSchedule.alphaCumprod(at: timestep)
        let alphaProdPrev = prevTimestep >= 0 ? noiseSchedule.alphaCumprod(at: prevTimestep) : finalAlphaCumprod
        let betaProd = 1 - alphaProd, betaProdPrev = 1 - alphaProdPrev
        var epsilon = modelOutput
        if predictionType == .vPrediction {
            epsilon = alphaProd.squareRoot() * modelOutput + betaProd.squareRoot() * sample
        }
        let sampleCoefficient = (alphaProdPrev / alphaProd).squareRoot()
        let denominator = alphaProd * betaProdPrev.squareRoot() + (alphaProd * betaProd * alphaProdPrev).squareRoot()
        return sampleCoefficient * sample - ((alphaProdPrev - alphaProd) * epsilon) / denominator
    }

    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        noiseSchedule.addNoise(original: original, noise: noise, timesteps: timesteps)
    }
}
