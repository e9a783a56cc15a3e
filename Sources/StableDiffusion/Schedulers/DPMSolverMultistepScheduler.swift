import Foundation
import Torch

/// diffusers' `DPMSolverMultistepScheduler` (Lu et al., "DPM-Solver++"): a multistep solver in the data prediction
/// x_0, first order at the start and (by default) at the end, second order (midpoint or Heun) or third order in
/// between. `algorithm_type` "dpmsolver++" solves the probability-flow ODE ("DPM++ 2M" at order 2);
/// "sde-dpmsolver++" the reverse SDE ("DPM++ 2M SDE"), which keeps a fraction 1 - exp(-2h) of each step's variance
/// as fresh noise: one float32 `randn` shaped like the model output per step, the last step's included, drawn from
/// the pipeline's generator as diffusers draws it. `use_karras_sigmas` replaces the spaced timesteps by Karras'
/// sigmas over the whole training range and the (rounded) timesteps that have them.
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
    /// diffusers' `algorithm_type`: the deterministic solver or its stochastic counterpart.
    public enum Algorithm: String, Sendable, CaseIterable {
        case dpmSolverPlusPlus = "dpmsolver++"
        case sdeDPMSolverPlusPlus = "sde-dpmsolver++"
    }

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let solverOrder: Int
    let solverType: SolverType
    let algorithm: Algorithm
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
        algorithm = try config.checked(
            .algorithmType, config.algorithmType == "deis" ? "dpmsolver++" : config.algorithmType, among: Algorithm.allCases)
        enum Order: String { case one = "1", two = "2", three = "3" }
        solverOrder = Int(try config.checked(.solverOrder, String(config.solverOrder), among: [Order.one, .two, .three]).rawValue)!
        // ... and UniPC's and DEIS's solver types as midpoint.
        let solver = ["logrho", "bh1", "bh2"].contains(config.solverType) ? "midpoint" : config.solverType
        solverType = try config.checked(.solverType, solver, among: SolverType.allCases)
        enum FinalSigmas: String { case zero, sigmaMin = "sigma_min" }
        finalSigmaIsZero = try config.checked(.finalSigmasType, config.finalSigmasType, among: [FinalSigmas.zero, .sigmaMin]) == .zero
        try config.require(.thresholding, config.thresholding, is: false)
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
        let (steps, chosen) = schedule(count)
        // A first timestep that occurs twice makes diffusers' index_for_timestep start at the second one, and the
        // run steps past the last sigma (IndexError in diffusers). Karras sigmas of the cosine schedule do that from
        // 4 steps on (its largest sigmas all fall on the last training timesteps), "leading" spacing at 1000 steps.
        if steps.count > 1, steps[0] == steps[1] {
            let repeats = steps.prefix { $0 == steps[0] }.count
            let problem = "\(count) steps start at timestep \(steps[0]) \(repeats) times"
            let consequence = "which DPMSolverMultistepScheduler cannot step through (nor can diffusers')"
            guard !config.useKarrasSigmas else {
                throw StableDiffusionError.invalidConfig(
                    file: config.file,
                    message: "key \"use_karras_sigmas\" (--karras): \(problem) on this noise schedule, \(consequence); use fewer steps or no Karras sigmas")
            }
            throw StableDiffusionError.invalidArgument(
                "--steps: \(problem) with timestep_spacing \(spacing.rawValue), \(consequence); use fewer steps")
        }
        let finalSigma: Float = finalSigmaIsZero ? 0 : noiseSchedule.sigmas[0]
        sigmas = chosen.map { Float($0) } + [finalSigma]
        timesteps = steps.map(Double.init)
        modelOutputs = Array(repeating: nil, count: solverOrder)
        lowerOrderCount = 0
        stepIndex = nil
        predOriginalSample = nil
    }

    /// The timesteps of `count` steps and their sigmas (float64, before diffusers rounds them to float32; without
    /// the final one).
    func schedule(_ count: Int) -> (timesteps: [Int], sigmas: [Double]) {
        let trainSteps = config.numTrainTimesteps
        let lastTimestep = trainSteps - clippedIndex()
        let table = noiseSchedule.sigmas
        if config.useKarrasSigmas {
            // Over the whole training range, whatever the spacing; diffusers rounds the timesteps (truncates them,
            // through int64, for the cosine schedule).
            let sigmas = SigmaSchedule.karras(sigmaMax: Double(table[table.count - 1]), sigmaMin: Double(table[0]), count: count)
            let logSigmas = SigmaSchedule.logSigmas(table)
            let truncate = config.betaSchedule == "squaredcos_cap_v2"
            let steps = sigmas.map { sigma in
                let t = SigmaSchedule.timestep(ofSigma: sigma, logSigmas: logSigmas)
                return Int(truncate ? t : NumPy.round(t))
            }
            return (steps, sigmas)
        }
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
        return (steps, SigmaSchedule.interpolated(steps.map(Double.init), table: table))
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
        // The SDE's noise, drawn at every step (the last one's is scaled by 0), in float32 whatever the model's dtype.
        let stepNoise = algorithm == .sdeDPMSolverPlusPlus
            ? noise(like: modelOutput, dtype: .float32, generator: generator) : nil

        let order: Int
        if solverOrder == 1 || lowerOrderCount < 1 || lowerOrderFinal {
            order = 1
        } else if solverOrder == 2 || lowerOrderCount < 2 || lowerOrderSecond {
            order = 2
        } else {
            order = 3
        }
        var prevSample = update(order: order, sample: sample, noise: stepNoise, step: i)
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

    /// One multistep update from sigmas[i] to sigmas[i + 1] on the last `order` data predictions, as diffusers'
    /// `dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update` and `..._third_order_update`:
    ///
    ///     x_t = a x + b0 D0 + b1 D1 + b2 D2 (+ c ε for the SDE)
    ///
    /// with D0 the newest prediction and D1, D2 the divided differences of the predictions in lambda (D1 only from
    /// order 2, D2 only at order 3). The ODE's coefficients are exponential integrals in h, the step in lambda; the
    /// SDE's have exp(-2h) where those have exp(-h), its sample coefficient an extra exp(-h), and c the noise that
    /// refills the variance. D1's coefficient is the midpoint one only at order 2 with solver_type midpoint, Heun's
    /// otherwise. The SDE's D2 coefficient ends in -0.5 where the ODE's has +0.5 after the sign is taken out: that is
    /// diffusers' formula, kept for parity.
    private func update(order: Int, sample: Tensor, noise: Tensor?, step i: Int) -> Tensor {
        let t = alphaSigma(Double(sigmas[i + 1]))
        let s = (0..<order).map { alphaSigma(Double(sigmas[i - $0])) }
        let m = (0..<order).map { modelOutputs[solverOrder - 1 - $0]! }
        let h = lambda(t) - lambda(s[0])
        var d1: Tensor? = nil, d2: Tensor? = nil
        if order == 2 {
            let r0 = (lambda(s[0]) - lambda(s[1])) / h
            d1 = (1 / r0) * (m[0] - m[1])
        } else if order == 3 {
            let r0 = (lambda(s[0]) - lambda(s[1])) / h, r1 = (lambda(s[1]) - lambda(s[2])) / h
            let d10 = (1 / r0) * (m[0] - m[1]), d11 = (1 / r1) * (m[1] - m[2])
            d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11)
            d2 = (1 / (r0 + r1)) * (d10 - d11)
        }
        let midpoint = order == 2 && solverType == .midpoint
        // The coefficients a, b0, b1, b2, c (a difference in diffusers' formula is a negated coefficient here).
        let a: Double, b0: Double, b1: Double, b2: Double, c: Double
        switch algorithm {
        case .dpmSolverPlusPlus:
            let phi = exp(-h) - 1
            (a, b0) = (t.sigma / s[0].sigma, -(t.alpha * phi))
            b1 = midpoint ? -(0.5 * (t.alpha * phi)) : t.alpha * (phi / h + 1)
            b2 = -(t.alpha * ((phi + h) / (h * h) - 0.5))
            c = 0
        case .sdeDPMSolverPlusPlus:
            let psi = 1 - exp(-2 * h)
            (a, b0) = (t.sigma / s[0].sigma * exp(-h), t.alpha * psi)
            b1 = midpoint ? 0.5 * (t.alpha * psi) : t.alpha * (psi / (-2 * h) + 1)
            b2 = t.alpha * ((psi - 2 * h) / ((2 * h) * (2 * h)) - 0.5)
            c = t.sigma * psi.squareRoot()
        }
        var x = a * sample + b0 * m[0]
        if let d1 { x = x + b1 * d1 }
        if let d2 { x = x + b2 * d2 }
        if let noise { x = x + c * noise }
        return x
    }

    /// alpha_t x + sigma_t ε at the sigma of each timestep, which should be one of `timesteps` (else diffusers takes
    /// the last step's sigma).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        let coefficients = timesteps.map { alphaSigma(Double(sigmas[index(of: $0)])) }
        return perItem(coefficients.map { Float($0.alpha) }, like: original) * original
            + perItem(coefficients.map { Float($0.sigma) }, like: original) * noise
    }

    /// diffusers' `index_for_timestep`, which takes the last step for a timestep that does not occur.
    func index(of timestep: Double) -> Int {
        SigmaSchedule.index(of: timestep, in: timesteps) ?? timesteps.count - 1
    }
}
