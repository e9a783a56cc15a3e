import Foundation

/// `scheduler/scheduler_config.json` of a diffusers model folder. Keys are diffusers' own; an absent key takes
/// diffusers' default for it. Two defaults depend on the class and are kept as nil until a scheduler reads them
/// (`timestep_spacing`: "leading" for DDIM and PNDM, "linspace" for Euler and DPM-Solver; `set_alpha_to_one`: true
/// for DDIM, false for PNDM), so that switching the class keeps what the file said and re-defaults the rest, as
/// `EulerDiscreteScheduler.from_config(pipe.scheduler.config)` does.
///
/// Values are checked by the scheduler that uses them (`makeScheduler`): a value it does not implement is a
/// `StableDiffusionError.unsupported` naming `file` and the key. Keys no scheduler here reads are ignored, as
/// diffusers ignores the keys of other classes.
public struct SchedulerConfig: Codable, Sendable, Equatable {
    /// `_class_name`.
    public var className: String
    public var numTrainTimesteps = 1000
    public var betaStart = 0.0001
    public var betaEnd = 0.02
    /// linear | scaled_linear | squaredcos_cap_v2
    public var betaSchedule = "linear"
    /// Betas given outright; they replace `beta_schedule`.
    public var trainedBetas: [Double]? = nil
    /// epsilon | v_prediction | sample
    public var predictionType = "epsilon"
    /// leading | trailing | linspace; nil: the class's default.
    public var timestepSpacing: String? = nil
    public var stepsOffset = 0
    public var rescaleBetasZeroSNR = false

    // DDIM (and PNDM for set_alpha_to_one)
    /// nil: the class's default.
    public var setAlphaToOne: Bool? = nil
    public var clipSample = true
    public var clipSampleRange = 1.0
    public var thresholding = false

    // PNDM
    public var skipPrkSteps = false

    // Euler
    public var interpolationType = "linear"
    public var timestepType = "discrete"
    public var useKarrasSigmas = false
    public var useExponentialSigmas = false
    public var useBetaSigmas = false
    public var useFlowSigmas = false
    public var finalSigmasType = "zero"

    // DPM-Solver
    public var algorithmType = "dpmsolver++"
    public var solverOrder = 2
    public var solverType = "midpoint"
    public var lowerOrderFinal = true
    public var eulerAtFinal = false
    public var useLuLambdas = false
    public var lambdaMinClipped = -Double.infinity
    public var varianceType: String? = nil

    /// The file the config was read from, for error messages (not coded).
    public var file: String

    public init(className: String, file: String = "scheduler_config.json") {
        self.className = className
        self.file = file
    }

    /// Reads a `scheduler_config.json`. Errors name the file and the key.
    public static func load(from url: URL) throws -> SchedulerConfig {
        var config = try decodeConfig(SchedulerConfig.self, from: url)
        config.file = url.path
        return config
    }

    /// The same file's values under another class: keys the file set are kept, the class-dependent defaults follow
    /// the new class (diffusers' `from_config`).
    public func converted(to className: String) -> SchedulerConfig {
        var copy = self
        copy.className = className
        return copy
    }

    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case numTrainTimesteps = "num_train_timesteps"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case betaSchedule = "beta_schedule"
        case trainedBetas = "trained_betas"
        case predictionType = "prediction_type"
        case timestepSpacing = "timestep_spacing"
        case stepsOffset = "steps_offset"
        case rescaleBetasZeroSNR = "rescale_betas_zero_snr"
        case setAlphaToOne = "set_alpha_to_one"
        case clipSample = "clip_sample"
        case clipSampleRange = "clip_sample_range"
        case thresholding
        case skipPrkSteps = "skip_prk_steps"
        case interpolationType = "interpolation_type"
        case timestepType = "timestep_type"
        case useKarrasSigmas = "use_karras_sigmas"
        case useExponentialSigmas = "use_exponential_sigmas"
        case useBetaSigmas = "use_beta_sigmas"
        case useFlowSigmas = "use_flow_sigmas"
        case finalSigmasType = "final_sigmas_type"
        case algorithmType = "algorithm_type"
        case solverOrder = "solver_order"
        case solverType = "solver_type"
        case lowerOrderFinal = "lower_order_final"
        case eulerAtFinal = "euler_at_final"
        case useLuLambdas = "use_lu_lambdas"
        case lambdaMinClipped = "lambda_min_clipped"
        case varianceType = "variance_type"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(className: try c.decode(String.self, forKey: .className))
        // A key that is absent or null keeps diffusers' default.
        func read<T: Decodable>(_ key: CodingKeys, into value: inout T) throws {
            if let decoded = try c.decodeIfPresent(T.self, forKey: key) { value = decoded }
        }
        func read<T: Decodable>(_ key: CodingKeys, into value: inout T?) throws {
            if let decoded = try c.decodeIfPresent(T.self, forKey: key) { value = decoded }
        }
        try read(.numTrainTimesteps, into: &numTrainTimesteps)
        try read(.betaStart, into: &betaStart)
        try read(.betaEnd, into: &betaEnd)
        try read(.betaSchedule, into: &betaSchedule)
        try read(.trainedBetas, into: &trainedBetas)
        try read(.predictionType, into: &predictionType)
        try read(.timestepSpacing, into: &timestepSpacing)
        try read(.stepsOffset, into: &stepsOffset)
        try read(.rescaleBetasZeroSNR, into: &rescaleBetasZeroSNR)
        try read(.setAlphaToOne, into: &setAlphaToOne)
        try read(.clipSample, into: &clipSample)
        try read(.clipSampleRange, into: &clipSampleRange)
        try read(.thresholding, into: &thresholding)
        try read(.skipPrkSteps, into: &skipPrkSteps)
        try read(.interpolationType, into: &interpolationType)
        try read(.timestepType, into: &timestepType)
        try read(.useKarrasSigmas, into: &useKarrasSigmas)
        try read(.useExponentialSigmas, into: &useExponentialSigmas)
        try read(.useBetaSigmas, into: &useBetaSigmas)
        try read(.useFlowSigmas, into: &useFlowSigmas)
        try read(.finalSigmasType, into: &finalSigmasType)
        try read(.algorithmType, into: &algorithmType)
        try read(.solverOrder, into: &solverOrder)
        try read(.solverType, into: &solverType)
        try read(.lowerOrderFinal, into: &lowerOrderFinal)
        try read(.eulerAtFinal, into: &eulerAtFinal)
        try read(.useLuLambdas, into: &useLuLambdas)
        try read(.lambdaMinClipped, into: &lambdaMinClipped)
        try read(.varianceType, into: &varianceType)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(className, forKey: .className)
        try c.encode(numTrainTimesteps, forKey: .numTrainTimesteps)
        try c.encode(betaStart, forKey: .betaStart)
        try c.encode(betaEnd, forKey: .betaEnd)
        try c.encode(betaSchedule, forKey: .betaSchedule)
        try c.encodeIfPresent(trainedBetas, forKey: .trainedBetas)
        try c.encode(predictionType, forKey: .predictionType)
        try c.encodeIfPresent(timestepSpacing, forKey: .timestepSpacing)
        try c.encode(stepsOffset, forKey: .stepsOffset)
        try c.encode(rescaleBetasZeroSNR, forKey: .rescaleBetasZeroSNR)
        try c.encodeIfPresent(setAlphaToOne, forKey: .setAlphaToOne)
        try c.encode(clipSample, forKey: .clipSample)
        try c.encode(clipSampleRange, forKey: .clipSampleRange)
        try c.encode(thresholding, forKey: .thresholding)
        try c.encode(skipPrkSteps, forKey: .skipPrkSteps)
        try c.encode(interpolationType, forKey: .interpolationType)
        try c.encode(timestepType, forKey: .timestepType)
        try c.encode(useKarrasSigmas, forKey: .useKarrasSigmas)
        try c.encode(useExponentialSigmas, forKey: .useExponentialSigmas)
        try c.encode(useBetaSigmas, forKey: .useBetaSigmas)
        try c.encode(useFlowSigmas, forKey: .useFlowSigmas)
        try c.encode(finalSigmasType, forKey: .finalSigmasType)
        try c.encode(algorithmType, forKey: .algorithmType)
        try c.encode(solverOrder, forKey: .solverOrder)
        try c.encode(solverType, forKey: .solverType)
        try c.encode(lowerOrderFinal, forKey: .lowerOrderFinal)
        try c.encode(eulerAtFinal, forKey: .eulerAtFinal)
        try c.encode(useLuLambdas, forKey: .useLuLambdas)
        // JSON has no infinity: the default (-inf) is left out, which reads back as the default.
        if lambdaMinClipped.isFinite { try c.encode(lambdaMinClipped, forKey: .lambdaMinClipped) }
        try c.encodeIfPresent(varianceType, forKey: .varianceType)
    }
}

// MARK: checking values

extension SchedulerConfig {
    /// `value`, when it is one of `supported`; else the one-line error naming the file, the key and the choices.
    func checked<Value: RawRepresentable>(_ key: CodingKeys, _ value: String, among supported: [Value]) throws -> Value
    where Value.RawValue == String {
        guard let parsed = Value(rawValue: value), supported.contains(where: { $0.rawValue == value }) else {
            throw StableDiffusionError.unsupported(
                file: file, key: key.rawValue, value: value, supported: supported.map(\.rawValue))
        }
        return parsed
    }

    /// Fails unless the key holds the one value implemented.
    func require<Value: Equatable & CustomStringConvertible>(_ key: CodingKeys, _ value: Value, is supported: Value) throws {
        guard value == supported else {
            throw StableDiffusionError.unsupported(
                file: file, key: key.rawValue, value: value.description, supported: [supported.description])
        }
    }

    func requirePositive(_ key: CodingKeys, _ value: Int) throws {
        guard value >= 1 else {
            throw StableDiffusionError.invalidConfig(file: file, message: "key \"\(key.rawValue)\" must be at least 1, got \(value)")
        }
    }
}

/// What the model predicts.
public enum PredictionType: String, Sendable, CaseIterable {
    case epsilon
    case vPrediction = "v_prediction"
    case sample
}

/// How the inference timesteps are spread over the training ones (Table 2 of "Common Diffusion Noise Schedules and
/// Sample Steps are Flawed").
public enum TimestepSpacing: String, Sendable, CaseIterable {
    case leading, trailing, linspace
}

extension SchedulerConfig: RangeCheckedConfig {
    /// The most training timesteps a schedule may have (real schedulers: 1,000).
    static let maxTrainTimesteps = 1_000_000

    /// Betas are probabilities below 1 with `beta_start <= beta_end` (SD 1.x: 0.00085 to 0.012; DDPM: 1e-4 to 0.02);
    /// the counts are positive and bounded.
    public func checkRanges(file: String, prefix: String? = nil) throws {
        let check = ConfigRanges(file: file, prefix: prefix)
        try check.int(CodingKeys.numTrainTimesteps.rawValue, numTrainTimesteps, in: 1...Self.maxTrainTimesteps)
        try check.double(CodingKeys.betaStart.rawValue, betaStart, in: 0...0.999)
        try check.double(CodingKeys.betaEnd.rawValue, betaEnd, in: 0...0.999)
        guard betaStart <= betaEnd else {
            throw check.fail(CodingKeys.betaEnd.rawValue, "(\(betaEnd)) must be at least beta_start (\(betaStart))")
        }
        if let trainedBetas {
            try check.int(CodingKeys.trainedBetas.rawValue, trainedBetas.count, in: 1...Self.maxTrainTimesteps)
            for (i, beta) in trainedBetas.enumerated() { try check.double("\(CodingKeys.trainedBetas.rawValue).\(i)", beta, in: 0...0.999) }
        }
        try check.int(CodingKeys.stepsOffset.rawValue, stepsOffset, in: 0...numTrainTimesteps)
        try check.double(CodingKeys.clipSampleRange.rawValue, clipSampleRange, in: 0...1e6, open: true)
        guard !lambdaMinClipped.isNaN else { throw check.fail(CodingKeys.lambdaMinClipped.rawValue, "must be a number, got NaN") }
    }
}
