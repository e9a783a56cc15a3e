import Foundation
import Torch

/// diffusers' `DPMSolverMultistepScheduler` with `algorithm_type: dpmsolver++` (Lu et al., "DPM-Solver++"): a
/// multistep solver in the data prediction x_0, first order at the start and (by default) at the end, second order
/// (midpoint or Heun) or third order in between.
public final class DPMSolverMultistepScheduler: Scheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule

    public private(set) var timesteps: [Double] = []
    /// One sigma per timestep, then the final one (0, or the smallest training sigma), float32 as diffusers has them.
    public private(set) var sigmas: [Float]
    /// The data prediction x_0 of the last step (diffusers keeps it in `model_outputs` but does not return it).
    public private(set) var predOriginalSample: Tensor?
    public private(set) var stepIndex: Int?
    public var initNoiseSigma: Double { 1 }

    public enum SolverType: String, Sendable, CaseIterable { case midpoint, heun }

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let solverOrder: Int
    let solverType: SolverType
    let finalSigmaIsZero: Bool
    /// The data predictions of the last `solverOrder` steps, oldest first.
    private var modelOutputs: [Tensor?]
    private var lowerOrderCount = 0

    public init(config: SchedulerConfig) throws {
        self.config = config
        noiseSchedule = try NoiseSchedule(
            config: config, rescaleZeroTerminalSNR: config.rescaleBetasZeroSNR, zeroTerminalSNRClamp: true)
        predictionType = try config.checked(.predictionType, config.predictionType, among: PredictionType.allCases)
        spacing = try config.checked(.timestepSpacing, config.timestepSpacing ?? "linspace", among: TimestepSpacing.allCases)
        // diffusers reads "deis" as dpmsolver++ (configs converted from DEISMultistepScheduler).
        enum Algorithm: String { case dpmSolverPlusPlus = "dpmsolver++" }
        _ = try config.checked(
            .algorithmType, config.algorithmType == "deis" ? "dpmsolver++" : config.algorithmType,
            among: [Algorithm.dpmSolverPlusPlus])
        enum Order: String { case one = "1", two = "2", three = "3" }
        solverOrder = Int(try config.checked(.solverOrder, String(config.solverOrder), among: [Order.one, .two, .three]).rawValue)!
        // ... and UniPC's and DEIS's solver types as midpoint.
        let solver = ["logrho", "bh1", "bh2"].contains(config.solverType) ? "midpoint" : config.solverType
        solverType = try config.checked(.solverType, solver, among: SolverType.allCases)
        enum FinalSigmas: String { case zero, sigmaMin = "sigma_min" }
        finalSigmaIsZero = try config.checked(.finalSigmasType, config.finalSigmasType, among: [FinalSigmas.zero, .sigmaMin]) == .zero
        try config.require(.thresholding, config.thresholding, is: false)
        try config.require(.useKarrasSigmas, config.useKarrasSigmas, is: false)
        try config.require(.useExponentialSigmas, config.useExponentialSigmas, is: false)
        try config.require(.useBetaSigmas, config.useBetaSigmas, is: false)
        try config.require(.useLuLambdas, config.useLuLambdas, is: false)
        try config.require(.useFlowSigmas, config.useFlowSigmas, is: false)
        if let variance = config.varianceType {
            throw StableDiffusionError.unsupported(file: config.file, key: "variance_type", value: variance, supported: ["null"])
        }
        sigmas = noiseSchedule.sigmas
        modelOutputs = Array(repeating: nil, count: solverOrder)
    }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, config)
        let trainSteps = config.numTrainTimesteps
        let lastTimestep = trainSteps - clippedIndex()
        let steps: [Int]
        switch spacing {
        case .linspace:
            steps = Array(NumPy.linspace(0, Double(lastTimestep - 1), count + 1).map { Int(NumPy.round($0)) }.reversed().dropLast())
        case .leading:
            let ratio = lastTimestep / (count + 1)
            steps = (1...count).reversed().map { $0 * ratio + config.stepsOffset }
        case .trailing:
            steps = NumPy.arange(Double(lastTimestep), 0, -(Double(trainSteps) / Double(count))).map { Int(NumPy.round($0)) - 1 }
        }
        let table = noiseSchedule.sigmas
        let finalSigma: Float = finalSigmaIsZero ? 0 : table[0]
        sigmas = steps.map { Float(NumPy.interp(Double($0), table)) } + [finalSigma]
        timesteps = steps.map(Double.init)
        modelOutputs = Array(repeating: nil, count: solverOrder)
        lowerOrderCount = 0
        stepIndex = nil
        predOriginalSample = nil
    }

    /// `searchsorted(flip(lambda_t), lambda_min_clipped)`: how many of the highest timesteps are cut off.
    private func clippedIndex() -> Int {
        guard config.lambdaMinClipped > -Double.infinity else { return 0 }
        let alphas = Tensor(noiseSchedule.alphasCumprod)
        let lambdas = (alphas.sqrt().log() - (1 - alphas).sqrt().log()).toArray(Float.self)
        return lambdas.reversed().prefix { Double($0) < config.lambdaMinClipped }.count
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor { sample }

    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator?, eta: Double) -> Tensor {
        precondition(!timesteps.isEmpty, "DPMSolverMultistepScheduler.step: call setTimesteps first")
        if stepIndex == nil { stepIndex = index(of: timestep) }
        let i = stepIndex!
        let count = timesteps.count
        let lowerOrderFinal =
            i == count - 1 && (config.eulerAtFinal || (config.lowerOrderFinal && count < 15) || finalSigmaIsZero)
        let lowerOrderSecond = i == count - 2 && config.lowerOrderFinal && count < 15

        let x0 = dataPrediction(modelOutput, sample: sample, sigma: Double(sigmas[i]))
        modelOutputs.removeFirst()
        modelOutputs.append(x0)
        let sample = sample.dtype == .float32 ? sample : sample.to(.float32)

        var prevSample: Tensor
        if solverOrder == 1 || lowerOrderCount < 1 || lowerOrderFinal {
            prevSample = firstOrderUpdate(x0, sample: sample, step: i)
        } else if solverOrder == 2 || lowerOrderCount < 2 || lowerOrderSecond {
            prevSample = secondOrderUpdate(sample: sample, step: i)
        } else {
            prevSample = thirdOrderUpdate(sample: sample, step: i)
        }
        if lowerOrderCount < solverOrder { lowerOrderCount += 1 }
        if prevSample.dtype != modelOutput.dtype { prevSample = prevSample.to(modelOutput.dtype) }
        stepIndex = i + 1
        predOriginalSample = x0
        return prevSample
    }

    /// (alpha_t, sigma_t) of the variance-preserving process at sigma: 1 / sqrt(sigma² + 1) and sigma times that.
    private func alphaSigma(_ sigma: Double) -> (alpha: Double, sigma: Double) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    /// The log signal-to-noise ratio log(alpha_t) - log(sigma_t) (+inf at sigma 0).
    private func lambda(_ a: (alpha: Double, sigma: Double)) -> Double { log(a.alpha) - log(a.sigma) }

    /// diffusers' `convert_model_output` for dpmsolver++: the model's output as a prediction of x_0.
    private func dataPrediction(_ modelOutput: Tensor, sample: Tensor, sigma: Double) -> Tensor {
        let (alpha, sigmaT) = alphaSigma(sigma)
        switch predictionType {
        case .epsilon: return (sample - sigmaT * modelOutput) / alpha
        case .sample: return modelOutput
        case .vPrediction: return alpha * sample - sigmaT * modelOutput
        }
    }

    private func firstOrderUpdate(_ x0: Tensor, sample: Tensor, step i: Int) -> Tensor {
        let t = alphaSigma(Double(sigmas[i + 1])), s = alphaSigma(Double(sigmas[i]))
        let h = lambda(t) - lambda(s)
        return (t.sigma / s.sigma) * sample - (t.alpha * (exp(-h) - 1)) * x0
    }

    private func secondOrderUpdate(sample: Tensor, step i: Int) -> Tensor {
        let t = alphaSigma(Double(sigmas[i + 1])), s0 = alphaSigma(Double(sigmas[i])), s1 = alphaSigma(Double(sigmas[i - 1]))
        let m0 = modelOutputs[solverOrder - 1]!, m1 = modelOutputs[solverOrder - 2]!
        let h = lambda(t) - lambda(s0), h0 = lambda(s0) - lambda(s1)
        let r0 = h0 / h
        let d0 = m0, d1 = (1 / r0) * (m0 - m1)
        switch solverType {
        case .midpoint:
            return (t.sigma / s0.sigma) * sample - (t.alpha * (exp(-h) - 1)) * d0 - (0.5 * (t.alpha * (exp(-h) - 1))) * d1
        case .heun:
            return (t.sigma / s0.sigma) * sample - (t.alpha * (exp(-h) - 1)) * d0 + (t.alpha * ((exp(-h) - 1) / h + 1)) * d1
        }
    }

    private func thirdOrderUpdate(sample: Tensor, step i: Int) -> Tensor {
        let t = alphaSigma(Double(sigmas[i + 1])), s0 = alphaSigma(Double(sigmas[i]))
        let s1 = alphaSigma(Double(sigmas[i - 1])), s2 = alphaSigma(Double(sigmas[i - 2]))
        let m0 = modelOutputs[solverOrder - 1]!, m1 = modelOutputs[solverOrder - 2]!, m2 = modelOutputs[solverOrder - 3]!
        let h = lambda(t) - lambda(s0), h0 = lambda(s0) - lambda(s1), h1 = lambda(s1) - lambda(s2)
        let r0 = h0 / h, r1 = h1 / h
        let d0 = m0
        let d10 = (1 / r0) * (m0 - m1), d11 = (1 / r1) * (m1 - m2)
        let d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11)
        let d2 = (1 / (r0 + r1)) * (d10 - d11)
        return (t.sigma / s0.sigma) * sample - (t.alpha * (exp(-h) - 1)) * d0 + (t.alpha * ((exp(-h) - 1) / h + 1)) * d1
            - (t.alpha * ((exp(-h) - 1 + h) / (h * h) - 0.5)) * d2
    }

    /// alpha_t x + sigma_t ε at the sigma of each timestep, which should be one of `timesteps` (else diffusers takes
    /// the last step's sigma).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        let coefficients = timesteps.map { alphaSigma(Double(sigmas[index(of: $0)])) }
        return perItem(coefficients.map { Float($0.alpha) }, like: original) * original
            + perItem(coefficients.map { Float($0.sigma) }, like: original) * noise
    }

    /// diffusers' `index_for_timestep`: the position in `timesteps`, the second one when it occurs twice, the last
    /// step when it does not occur.
    func index(of timestep: Double) -> Int {
        let matches = timesteps.indices.filter { timesteps[$0] == timestep }
        if matches.isEmpty { return timesteps.count - 1 }
        return matches.count > 1 ? matches[1] : matches[0]
    }
}
