import Foundation
import Torch

/// What the sigma-parameterised schedulers (Euler, Euler ancestral, DPM-Solver) share: Euler's timestep spacings,
/// Karras sigmas and the way back from a sigma to a (fractional) timestep, each computed in the precision diffusers
/// computes it (numpy float64, float32 where diffusers holds float32 arrays), so that the values are diffusers' own.
enum SigmaSchedule {
    /// The timesteps of diffusers' Euler and Euler ancestral schedulers, highest first, in float32 as they hold them
    /// ("linspace", their default, gives fractional ones: 999, 957.375, ... for 25 steps).
    static func eulerTimesteps(_ spacing: TimestepSpacing, count: Int, config: SchedulerConfig) -> [Float] {
        let trainSteps = config.numTrainTimesteps
        switch spacing {
        case .linspace:
            return NumPy.linspace(0, Double(trainSteps - 1), count).reversed().map { Float($0) }
        case .leading:
            let ratio = trainSteps / count
            return (0..<count).reversed().map { Float($0 * ratio) + Float(config.stepsOffset) }
        case .trailing:
            return NumPy.arange(Double(trainSteps), 0, -(Double(trainSteps) / Double(count))).map { Float(NumPy.round($0)) - 1 }
        }
    }

    /// The largest sigma (after `setTimesteps`, of the chosen steps); sqrt(sigma² + 1) for "leading" spacing, whose
    /// first step is not the last training timestep.
    static func initNoiseSigma(_ sigmas: [Float], spacing: TimestepSpacing) -> Double {
        let largest = sigmas.max() ?? 0
        switch spacing {
        case .linspace, .trailing: return Double(largest)
        case .leading: return Double((largest * largest + 1).squareRoot())
        }
    }

    /// The model's input at `sigma`: the sample divided by sqrt(sigma² + 1), back to unit variance.
    static func modelInput(_ sample: Tensor, sigma: Float) -> Tensor {
        let sigma = Double(sigma)
        return sample / (sigma * sigma + 1).squareRoot()
    }

    /// The sigma of each timestep, interpolated linearly in the training sigmas (`np.interp`, float64).
    static func interpolated(_ timesteps: [Double], table: [Float]) -> [Double] {
        timesteps.map { NumPy.interp($0, table) }
    }

    /// Karras et al. (2022), eq. (5): `count` sigmas from `sigmaMax` down to `sigmaMin`, evenly spaced in sigma^(1/7)
    /// (rho 7, the paper's value), which spends more of the steps at low noise than the training spacing does.
    /// Float64 throughout, in diffusers' order of operations: the ends' roots first, then one power per point.
    static func karras(sigmaMax: Double, sigmaMin: Double, count: Int) -> [Double] {
        let rho = 7.0
        let minInverse = pow(sigmaMin, 1 / rho), maxInverse = pow(sigmaMax, 1 / rho)
        return NumPy.linspace(0, 1, count).map { ramp in pow(maxInverse + ramp * (minInverse - maxInverse), rho) }
    }

    /// log of the training sigmas, in float32 as diffusers holds them (`np.log` of a float32 array).
    ///
    /// Rounded correctly here. numpy's float32 log is correctly rounded where it calls the C library, but on x86
    /// processors with AVX2 or AVX-512 it runs its own vector code, which is off by one unit in the last place for
    /// about a fifth of a Stable Diffusion schedule's values (measured on an Intel Xeon: 189 of 1,000). Through
    /// `timestep(ofSigma:)` that moves some of Euler's fractional Karras timesteps (about 8%) by up to 6.1e-5; the
    /// sigmas, which the sampling uses, and DPM-Solver's rounded timesteps do not change. On other processors numpy
    /// itself gives other values, so no single set of bits is "diffusers'" there.
    static func logSigmas(_ table: [Float]) -> [Float] {
        table.map { Float(log(Double($0))) }
    }

    /// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, interpolated linearly in
    /// log sigma between the two training timesteps around it (clamped to the table's ends).
    static func timestep(ofSigma sigma: Double, logSigmas: [Float]) -> Double {
        let logSigma = log(max(sigma, 1e-10))
        // The last index whose log sigma is at most logSigma (numpy: argmax of the running count of such indices,
        // which is 0 when there is none), kept below the end so that a next one exists.
        var count = 0, best = -1, low = 0
        for (j, value) in logSigmas.enumerated() {
            if logSigma - Double(value) >= 0 { count += 1 }
            if count > best { (best, low) = (count, j) }
        }
        low = min(low, logSigmas.count - 2)
        let lowLog = logSigmas[low], highLog = logSigmas[low + 1]
        // The denominator is a float32 difference: both ends are float32 values.
        let w = min(max((Double(lowLog) - logSigma) / Double(lowLog - highLog), 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }

    /// diffusers' `index_for_timestep`: the position of `timestep` in `timesteps`, the second one when it occurs
    /// twice (so that a run started mid-schedule does not skip a sigma); nil when it does not occur.
    static func index(of timestep: Double, in timesteps: [Double]) -> Int? {
        let matches = timesteps.indices.filter { timesteps[$0] == timestep }
        return matches.count > 1 ? matches[1] : matches.first
    }

    /// The same for the Euler schedulers, for which a timestep not in `timesteps` is a programming error.
    static func index(of timestep: Double, in timesteps: [Double], of scheduler: any Scheduler) -> Int {
        guard let index = index(of: timestep, in: timesteps) else {
            preconditionFailure("\(type(of: scheduler)): timestep \(timestep) is not one of the scheduler's timesteps")
        }
        return index
    }
}
