import Foundation
import Testing
import Torch

@testable import StableDiffusion

// Parity with diffusers 0.39.0: scripts/parity/make_scheduler_fixtures.py ran each scheduler on the fake model below
// and saved timesteps, sigmas and every step's sample in Fixtures/schedulers.

private let schedulerFixtureFolder = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    .appendingPathComponent("schedulers")

/// The tensors of schedulers.safetensors.
private struct SchedulerFixture {
    let file: SafeTensorsFile

    init() throws { file = try SafeTensorsFile(url: schedulerFixtureFolder.appendingPathComponent("schedulers.safetensors")) }

    func has(_ name: String) -> Bool { file.info(name) != nil }
    func tensor(_ name: String) throws -> Tensor { try Tensor(file.tensorData(name)) }
    func doubles(_ name: String) throws -> [Double] { try tensor(name).toArray(Double.self) }
    func floats(_ name: String) throws -> [Float] { try tensor(name).toArray(Float.self) }
}

/// diffusers' zero-terminal-SNR rescaling takes torch's float32 sqrt, which libtorch's CPU build hands to MKL's vector
/// math (vsSqrt), whose rounding depends on the processor: on an AMD EPYC 20% of its results are not the correctly
/// rounded ones, and the schedule there differs from the fixture's (made on an Intel Xeon) by up to 3.8e-6 relative,
/// the sigmas by 7.2e-6 (measured). We call the same libtorch, so on any one machine we match what diffusers gives
/// there; across machines those schedules are compared to 2e-5 relative, every other one bit for bit.
private func sameSchedule(_ ours: [Float], _ diffusers: [Float], rescaledToZeroSNR: Bool) -> Bool {
    guard rescaledToZeroSNR else { return ours == diffusers }
    return ours.count == diffusers.count && zip(ours, diffusers).allSatisfy { a, b in a == b || abs(a - b) <= 2e-5 * abs(b) }
}

/// Euler's Karras timesteps pass through log sigma in float32, which numpy computes on x86 with its own vector code,
/// one unit in the last place off for about a fifth of the schedule (`SigmaSchedule.logSigmas`); ours is rounded
/// correctly, and the interpolation between two log sigmas turns that into up to 6.1e-5 of a timestep (measured over
/// every spacing, step count and beta schedule of the fixtures, in Python). Allowed: 1e-4, and counted.
private func sameKarrasTimesteps(_ ours: [Double], _ diffusers: [Double]) -> (same: Bool, differing: Int) {
    guard ours.count == diffusers.count else { return (false, 0) }
    let differing = zip(ours, diffusers).filter { $0 != $1 }.count
    return (zip(ours, diffusers).allSatisfy { abs($0 - $1) <= 1e-4 }, differing)
}

/// cases.json: what each rollout ran.
private struct Manifest: Decodable {
    struct Case: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let config: SchedulerConfig
        let scheduler: String?
        let steps: Int
        let eta: Double
        let seed: UInt64?
        let s_churn: Double
        let karras: Bool
        let `class`: String
        var testDescription: String { name }
    }
    struct Gradient: Decodable, Sendable {
        let `case`: String
        let steps_with_grad: Int
    }
    let cases: [Case]
    let gradients: [Gradient]

    static let shared: Manifest = {
        let data = try! Data(contentsOf: schedulerFixtureFolder.appendingPathComponent("cases.json"))
        return try! JSONDecoder().decode(Manifest.self, from: data)
    }()
}

/// The fake model of the fixture script: model(x, t) = 0.9 x + (0.1 t / 1000) const.
private func fakeModel(_ x: Tensor, _ t: Double, _ const: Tensor) -> Tensor { x * 0.9 + const * (0.1 * t / 1000) }

private func maxAbs(_ a: Tensor, _ b: Tensor) -> Double { (a.to(.float64) - b.to(.float64)).abs().max().item() }

private func writeConfig(_ json: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("scheduler-\(UUID().uuidString).json")
    try Data(json.utf8).write(to: url)
    return url
}

@Suite struct SchedulerParityTests {
    @Test(arguments: Manifest.shared.cases)
    fileprivate func rolloutMatchesDiffusers(_ c: Manifest.Case) throws {
        let f = try SchedulerFixture()
        let scheduler = try makeScheduler(config: c.config, overrideClass: c.scheduler, karras: c.karras)
        #expect("\(type(of: scheduler))" == c.class)
        if let euler = scheduler as? EulerDiscreteScheduler { euler.sChurn = c.s_churn }
        try scheduler.setTimesteps(c.steps)

        let expectedTimesteps = try f.doubles("\(c.name).timesteps")
        if scheduler is EulerDiscreteScheduler && scheduler.config.useKarrasSigmas {
            #expect(sameKarrasTimesteps(scheduler.timesteps, expectedTimesteps).same, "\(scheduler.timesteps)")
        } else {
            #expect(scheduler.timesteps == expectedTimesteps)
        }
        #expect(scheduler.initNoiseSigma == (try f.doubles("\(c.name).init_noise_sigma"))[0])
        let zeroSNR = c.config.rescaleBetasZeroSNR
        let sigmas = (scheduler as? EulerDiscreteScheduler)?.sigmas ?? (scheduler as? EulerAncestralDiscreteScheduler)?.sigmas
            ?? (scheduler as? DPMSolverMultistepScheduler)?.sigmas
        if let sigmas {
            #expect(sameSchedule(sigmas, try f.floats("\(c.name).sigmas"), rescaledToZeroSNR: zeroSNR))
        }

        let const = try f.tensor("const")
        let samples = try f.tensor("\(c.name).samples"), inputs = try f.tensor("\(c.name).inputs")
        let predictions = f.has("\(c.name).pred_original") ? try f.tensor("\(c.name).pred_original") : nil
        let generator = c.seed.map { Generator(seed: $0) }
        var x = try f.tensor("sample") * scheduler.initNoiseSigma
        #expect(maxAbs(x, samples[0]) == 0)
        // Max abs error of each step, in units of the size of the sample entering it (at least 1): float32 cannot do
        // better than ~1e-7 of that (Euler with a zero-terminal-SNR schedule starts at sigma 4096).
        var worst = 0.0
        for (i, t) in scheduler.timesteps.enumerated() {
            let scale = max(1, samples[i].abs().max().item())
            let input = scheduler.scaleModelInput(x, timestep: t)
            worst = max(worst, maxAbs(input, inputs[i]) / scale)
            x = scheduler.step(modelOutput: fakeModel(input, t, const), timestep: t, sample: x, generator: generator, eta: c.eta)
            worst = max(worst, maxAbs(x, samples[i + 1]) / scale)
            if let predictions {
                let predicted = try #require(scheduler.predOriginalSample)
                worst = max(worst, maxAbs(predicted, predictions[i]) / scale)
            }
        }
        #expect(worst <= 1e-5, "\(c.name): off by \(worst)")
        let finalError = maxAbs(x, samples[scheduler.timesteps.count])
        #expect(finalError <= 1e-5, "\(c.name): final sample off by \(finalError)")
    }

    @Test func gradientsThroughTheLastStepsMatchDiffusers() throws {
        let f = try SchedulerFixture()
        let cases = Dictionary(uniqueKeysWithValues: Manifest.shared.cases.map { ($0.name, $0) })
        let const = try f.tensor("const"), weights = try f.tensor("weights")
        for g in Manifest.shared.gradients {
            let c = try #require(cases[g.case])
            let scheduler = try makeScheduler(config: c.config, overrideClass: c.scheduler, karras: c.karras)
            try scheduler.setTimesteps(c.steps)
            let split = scheduler.timesteps.count - g.steps_with_grad
            // The first steps without gradient (as TextCraftor runs them), the last ones with it.
            var x = withNoGrad {
                var x = (try! f.tensor("sample")) * scheduler.initNoiseSigma
                for t in scheduler.timesteps[..<split] {
                    x = scheduler.step(modelOutput: fakeModel(scheduler.scaleModelInput(x, timestep: t), t, const), timestep: t, sample: x)
                }
                return x
            }
            #expect(maxAbs(x, try f.tensor("grad.\(g.case).start")) <= 1e-5, "\(g.case): start")
            let start = x.detach().requiringGrad()
            let condition = const.clone().requiringGrad()
            x = start
            for t in scheduler.timesteps[split...] {
                x = scheduler.step(modelOutput: fakeModel(scheduler.scaleModelInput(x, timestep: t), t, condition), timestep: t, sample: x)
            }
            #expect(maxAbs(x, try f.tensor("grad.\(g.case).final")) <= 1e-5, "\(g.case): final sample")
            let grads = Autograd.grad(outputs: [(x * weights).sum()], inputs: [start, condition])
            let toSample = try #require(grads[0]), toConst = try #require(grads[1])
            let expectedSample = try f.tensor("grad.\(g.case).sample"), expectedConst = try f.tensor("grad.\(g.case).const")
            #expect(maxAbs(toSample, expectedSample) <= 1e-5, "\(g.case): d/dsample off by \(maxAbs(toSample, expectedSample))")
            // The gradient to the model's conditioning is small (~0.01): checked relative to its size.
            let constScale = expectedConst.abs().max().item()
            #expect(maxAbs(toConst, expectedConst) <= 1e-4 * constScale, "\(g.case): d/dconst off by \(maxAbs(toConst, expectedConst))")
            // Not vacuous: both gradients are far from zero.
            #expect(toSample.abs().max().item() > 0.1 && constScale > 1e-3)
        }
    }

    @Test func timestepsEqualDiffusersForEveryClassSpacingAndManyStepCounts() throws {
        let f = try SchedulerFixture()
        let counts = try f.tensor("timesteps.step_counts").toArray(Int64.self).map(Int.init)
        for kind in SchedulerKind.allCases {
            for spacing in TimestepSpacing.allCases {
                var config = SchedulerConfig(className: kind.rawValue)
                config.timestepSpacing = spacing.rawValue
                config.stepsOffset = spacing == .leading ? 1 : 0
                config.skipPrkSteps = true
                let scheduler = try makeScheduler(config: config)
                let key = "timesteps.\(kind.rawValue).\(spacing.rawValue)"
                let values = try f.floats(key + ".values"), lengths = try f.tensor(key + ".lengths").toArray(Int64.self)
                var offset = 0
                for (n, length) in zip(counts, lengths.map(Int.init)) {
                    let expected = values[offset..<offset + length].map(Double.init)
                    if let dpm = scheduler as? DPMSolverMultistepScheduler, spacing == .leading, n == 1000 {
                        // 1000 timesteps 1, which cannot be run (karrasStepsThatCannotRunAreRefused): compared unrun.
                        #expect(dpm.schedule(n).timesteps.map(Double.init) == expected)
                        offset += length
                        continue
                    }
                    try scheduler.setTimesteps(n)
                    #expect(scheduler.timesteps == expected, "\(key), \(n) steps")
                    offset += length
                }
            }
        }
    }

    /// Karras sigmas on Stable Diffusion's schedule for every spacing and many step counts: the sigmas bit for bit,
    /// DPM-Solver's (rounded) timesteps exactly, Euler's fractional ones to 1e-4 (`sameKarrasTimesteps`).
    @Test func karrasSigmasAndTimestepsEqualDiffusers() throws {
        let f = try SchedulerFixture()
        let counts = try f.tensor("timesteps.step_counts").toArray(Int64.self).map(Int.init)
        for kind in [SchedulerKind.euler, .dpmSolver] {
            for spacing in TimestepSpacing.allCases {
                var config = SchedulerConfig(className: kind.rawValue)
                (config.betaSchedule, config.betaStart, config.betaEnd) = ("scaled_linear", 0.00085, 0.012)
                config.timestepSpacing = spacing.rawValue
                config.stepsOffset = spacing == .leading ? 1 : 0
                let scheduler = try makeScheduler(config: config, karras: true)
                let key = "karras.\(kind.rawValue).\(spacing.rawValue)"
                let values = try f.floats(key + ".values").map(Double.init), allSigmas = try f.floats(key + ".sigmas")
                var (offset, sigmaOffset, differing) = (0, 0, 0)
                for n in counts {
                    try scheduler.setTimesteps(n)
                    let expected = Array(values[offset..<offset + n])
                    let sigmas = (scheduler as? EulerDiscreteScheduler)?.sigmas ?? (scheduler as! DPMSolverMultistepScheduler).sigmas
                    #expect(sigmas == Array(allSigmas[sigmaOffset..<sigmaOffset + n + 1]), "\(key), \(n) steps: sigmas")
                    if kind == .euler {
                        let (same, off) = sameKarrasTimesteps(scheduler.timesteps, expected)
                        #expect(same, "\(key), \(n) steps: \(zip(scheduler.timesteps, expected).map { $0 - $1 })")
                        differing += off
                    } else {
                        #expect(scheduler.timesteps == expected, "\(key), \(n) steps")
                    }
                    offset += n
                    sigmaOffset += n + 1
                }
                #expect(offset == values.count && sigmaOffset == allSigmas.count)
                // A few now and then (measured in Python: 266 to 307 of 3,865), not a systematic difference.
                #expect(differing <= values.count / 10, "\(key): \(differing) timesteps differ")
            }
        }
        // The cosine schedule's timesteps are truncated, not rounded.
        var cosine = SchedulerConfig(className: "DPMSolverMultistepScheduler")
        (cosine.betaSchedule, cosine.useKarrasSigmas) = ("squaredcos_cap_v2", true)
        let dpm = try #require(try makeScheduler(config: cosine) as? DPMSolverMultistepScheduler)
        let expected = try f.floats("karras.cosine.values").map(Double.init)
        #expect((1...9).flatMap { dpm.schedule($0).timesteps.map(Double.init) } == expected)
    }

    @Test func wellKnownTimesteps() throws {
        var ddim = SchedulerConfig(className: "DDIMScheduler")
        ddim.timestepSpacing = "trailing"
        let trailing = try makeScheduler(config: ddim)
        try trailing.setTimesteps(25)
        #expect(trailing.timesteps == stride(from: 999.0, through: 39, by: -40).map { $0 })
        // SD1.5's PNDM: leading with steps_offset 1, and the second-to-last timestep twice.
        let sd15 = try SchedulerConfig.load(from: try writeConfig(#"""
            {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
             "trained_betas": null, "clip_sample": false}
            """#))
        let pndm = try makeScheduler(config: sd15)
        try pndm.setTimesteps(10)
        #expect(pndm.timesteps == [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1])
        // Euler on the same file: its own default spacing (linspace), fractional timesteps.
        let euler = try makeScheduler(config: sd15, overrideClass: "euler")
        try euler.setTimesteps(25)
        #expect(euler.timesteps.prefix(3) == [999, Double(Float(957.375)), Double(Float(915.75))])
        // diffusers' "trailing" quirk: 61 steps give 62 timesteps, the last -1.
        try trailing.setTimesteps(61)
        #expect(trailing.timesteps.count == 62 && trailing.timesteps.last == -1)
    }

    @Test func alphasCumprodMatchDiffusers() throws {
        let f = try SchedulerFixture()
        for (label, schedule, rescale) in [
            ("linear", "linear", false), ("scaled_linear", "scaled_linear", false),
            ("squaredcos_cap_v2", "squaredcos_cap_v2", false), ("scaled_linear_zero_snr", "scaled_linear", true),
        ] {
            for name in [SchedulerName.ddim, .euler] {
                var config = SchedulerConfig(className: name.kind.rawValue)
                config.betaSchedule = schedule
                if schedule == "scaled_linear" { (config.betaStart, config.betaEnd) = (0.00085, 0.012) }
                config.rescaleBetasZeroSNR = rescale
                let scheduler = try makeScheduler(config: config)
                let expected = try f.floats("alphas_cumprod.\(name.rawValue).\(label)")
                #expect(sameSchedule(scheduler.noiseSchedule.alphasCumprod, expected, rescaledToZeroSNR: rescale), "\(name) \(label)")
            }
        }
    }

    @Test func addNoiseMatchesDiffusers() throws {
        let f = try SchedulerFixture()
        let original = try f.tensor("add_noise.original"), noise = try f.tensor("add_noise.noise")
        let sd15 = Manifest.shared.cases.first { $0.name == "pndm_sd15_10" }!.config
        for name in SchedulerName.allCases {
            let scheduler = try makeScheduler(config: sd15, overrideClass: name.rawValue)
            try scheduler.setTimesteps(10)
            let timesteps = try f.doubles("add_noise.\(name.rawValue).timesteps")
            let out = scheduler.addNoise(original: original, noise: noise, timesteps: timesteps)
            let expected = try f.tensor("add_noise.\(name.rawValue).out")
            #expect(maxAbs(out, expected) <= 1e-6, "\(name): off by \(maxAbs(out, expected))")
        }
    }
}

@Suite struct SchedulerConfigTests {
    @Test func absentKeysTakeDiffusersDefaultsOfTheClassInUse() throws {
        let url = try writeConfig(#"{"_class_name": "DDIMScheduler", "_diffusers_version": "0.39.0", "unknown_key": 3}"#)
        let config = try SchedulerConfig.load(from: url)
        #expect(config.file == url.path)
        #expect(config.numTrainTimesteps == 1000 && config.betaStart == 0.0001 && config.betaEnd == 0.02)
        #expect(config.betaSchedule == "linear" && config.predictionType == "epsilon" && config.stepsOffset == 0)
        #expect(config.clipSample && config.clipSampleRange == 1 && !config.rescaleBetasZeroSNR)
        #expect(config.solverOrder == 2 && config.algorithmType == "dpmsolver++" && config.lowerOrderFinal)
        #expect(config.timestepSpacing == nil && config.setAlphaToOne == nil)

        let ddim = try #require(try makeScheduler(config: config) as? DDIMScheduler)
        #expect(ddim.spacing == .leading && ddim.finalAlphaCumprod == 1)
        // PNDM's own defaults: set_alpha_to_one false, so the final ᾱ is ᾱ_0 = 1 - 0.0001.
        let pndm = try #require(try makeScheduler(config: config, overrideClass: "pndm") as? PNDMScheduler)
        #expect(pndm.finalAlphaCumprod == Double(Float(1 - Float(0.0001))))
        let euler = try #require(try makeScheduler(config: config, overrideClass: "EulerDiscreteScheduler") as? EulerDiscreteScheduler)
        #expect(euler.spacing == .linspace)
        // A spacing the file sets survives the switch.
        let trailing = try SchedulerConfig.load(from: try writeConfig(#"{"_class_name": "DDIMScheduler", "timestep_spacing": "trailing"}"#))
        #expect((try makeScheduler(config: trailing, overrideClass: "dpm") as? DPMSolverMultistepScheduler)?.spacing == .trailing)
    }

    @Test func pythonInfinityAndNullsAreRead() throws {
        let config = try SchedulerConfig.load(from: try writeConfig(#"""
            {"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "variance_type": null,
             "trained_betas": null, "timestep_spacing": null}
            """#))
        #expect(config.lambdaMinClipped == -.infinity && config.varianceType == nil && config.timestepSpacing == nil)
        #expect(try makeScheduler(config: config) is DPMSolverMultistepScheduler)
    }

    @Test func encodingRoundTrips() throws {
        var config = SchedulerConfig(className: "EulerDiscreteScheduler")
        config.timestepSpacing = "trailing"
        config.predictionType = "v_prediction"
        let decoded = try JSONDecoder().decode(SchedulerConfig.self, from: JSONEncoder().encode(config))
        #expect(decoded == config)
    }

    @Test func badConfigsGiveOneLineErrorsNamingFileAndKey() throws {
        func error(_ json: String, override: String? = nil) throws -> (StableDiffusionError, String) {
            let url = try writeConfig(json)
            do {
                _ = try makeScheduler(config: try SchedulerConfig.load(from: url), overrideClass: override)
            } catch let error as StableDiffusionError {
                return (error, url.path)
            }
            Issue.record("no error for \(json)")
            return (.invalidArgument(""), url.path)
        }

        var (e, path) = try error(#"{"_class_name": "LMSDiscreteScheduler"}"#)
        #expect(e == .unsupported(file: path, key: "_class_name", value: "LMSDiscreteScheduler",
                                  supported: ["DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                              "DPMSolverMultistepScheduler", "PNDMScheduler"]))
        #expect(e.description == "\(path): _class_name \"LMSDiscreteScheduler\" is not supported (supported: DDIMScheduler, "
            + "EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, PNDMScheduler)")
        // ... which an override replaces, as diffusers' from_config does.
        let url = try writeConfig(#"{"_class_name": "LMSDiscreteScheduler"}"#)
        #expect(try makeScheduler(config: try SchedulerConfig.load(from: url), overrideClass: "ddim") is DDIMScheduler)

        (e, path) = try error(#"{"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}"#)
        #expect(e == .unsupported(file: path, key: "beta_schedule", value: "sigmoid", supported: ["linear", "scaled_linear", "squaredcos_cap_v2"]))
        (e, path) = try error(#"{"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"}"#)
        #expect(e == .unsupported(file: path, key: "prediction_type", value: "flow_prediction", supported: ["epsilon", "v_prediction", "sample"]))
        (e, path) = try error(#"{"_class_name": "DDIMScheduler", "prediction_type": "sample"}"#, override: "pndm")
        #expect(e == .unsupported(file: path, key: "prediction_type", value: "sample", supported: ["epsilon", "v_prediction"]))
        (e, path) = try error(#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver"}"#)
        #expect(e == .unsupported(file: path, key: "algorithm_type", value: "sde-dpmsolver", supported: ["dpmsolver++", "sde-dpmsolver++"]))
        #expect(e.description == "\(path): algorithm_type \"sde-dpmsolver\" is not supported (supported: dpmsolver++, sde-dpmsolver++)")
        (e, path) = try error(#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}"#)
        #expect(e == .unsupported(file: path, key: "solver_order", value: "4", supported: ["1", "2", "3"]))
        (e, path) = try error(#"{"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": true}"#)
        #expect(e == .unsupported(file: path, key: "use_exponential_sigmas", value: "true", supported: ["false"]))
        (e, path) = try error(#"{"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}"#)
        #expect(e == .unsupported(file: path, key: "prediction_type", value: "sample", supported: ["epsilon", "v_prediction"]))
        (e, path) = try error(#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "random"}"#)
        #expect(e == .unsupported(file: path, key: "timestep_spacing", value: "random", supported: ["leading", "trailing", "linspace"]))
        (e, path) = try error(#"{"_class_name": "DDIMScheduler", "thresholding": true}"#)
        #expect(e == .unsupported(file: path, key: "thresholding", value: "true", supported: ["false"]))
        (e, path) = try error(#"{"_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned_range"}"#)
        #expect(e == .unsupported(file: path, key: "variance_type", value: "learned_range", supported: ["null"]))
        (e, path) = try error(#"{"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}"#)
        #expect(e == .invalidConfig(file: path, message: "key \"trained_betas\" has 2 values, num_train_timesteps is 1000"))

        (e, path) = try error(#"{"_class_name": "DDIMScheduler"}"#, override: "heun")
        #expect(e == .invalidArgument("--scheduler \"heun\" is not supported (supported: ddim, euler, euler-ancestral, dpm, dpm-sde, pndm)"))
    }

    /// --karras where the scheduler has no Karras sigmas: one line naming the flag and the schedulers that have them.
    @Test func karrasWithoutKarrasSigmasIsAnErrorNamingTheFlag() throws {
        let sd15 = SchedulerConfig(className: "PNDMScheduler", file: "sd15/scheduler/scheduler_config.json")
        for name in ["ddim", "pndm", "euler-ancestral", "DDIMScheduler"] {
            #expect(throws: StableDiffusionError.invalidArgument(
                "--karras: \(name) has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)")) {
                try makeScheduler(config: sd15, overrideClass: name, karras: true)
            }
        }
        #expect(throws: StableDiffusionError.invalidArgument(
            "--karras: the model's scheduler (PNDMScheduler) has no Karras sigmas (--scheduler euler, dpm, dpm-sde have)")) {
            try makeScheduler(config: sd15, karras: true)
        }
        for name in ["euler", "dpm", "dpm-sde"] {
            #expect(try makeScheduler(config: sd15, overrideClass: name, karras: true).config.useKarrasSigmas)
            // Without the flag the file's value stands (false here).
            #expect(try !makeScheduler(config: sd15, overrideClass: name).config.useKarrasSigmas)
        }
    }

    /// dpm and dpm-sde fix the algorithm whatever the file says; a class name keeps the file's, as from_config does.
    @Test func dpmNamesFixTheAlgorithm() throws {
        var sde = SchedulerConfig(className: "DPMSolverMultistepScheduler")
        sde.algorithmType = "sde-dpmsolver++"
        #expect(try makeScheduler(config: sde, overrideClass: "dpm").config.algorithmType == "dpmsolver++")
        #expect(try makeScheduler(config: sde, overrideClass: "DPMSolverMultistepScheduler").config.algorithmType == "sde-dpmsolver++")
        #expect(try makeScheduler(config: sde).config.algorithmType == "sde-dpmsolver++")
        let ode = SchedulerConfig(className: "DDIMScheduler")
        let made = try #require(try makeScheduler(config: ode, overrideClass: "DPM-SDE") as? DPMSolverMultistepScheduler)
        #expect(made.algorithm == .sdeDPMSolverPlusPlus && made.config.className == "DPMSolverMultistepScheduler")
    }

    /// Karras sigmas of the cosine schedule give DPM-Solver a first timestep several times from 4 steps on, and so
    /// does "leading" spacing at 1000 steps, which diffusers' step index cannot run through (an IndexError at the
    /// last step): a one-line error, not a crash.
    @Test func karrasStepsThatCannotRunAreRefused() throws {
        var cosine = SchedulerConfig(className: "DPMSolverMultistepScheduler", file: "cos/scheduler_config.json")
        (cosine.betaSchedule, cosine.useKarrasSigmas) = ("squaredcos_cap_v2", true)
        let scheduler = try makeScheduler(config: cosine)
        try scheduler.setTimesteps(3)
        #expect(scheduler.timesteps == [998, 997, 0])
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "cos/scheduler_config.json",
            message: "key \"use_karras_sigmas\" (--karras): 12 steps start at timestep 998 5 times on this noise schedule, which "
                + "DPMSolverMultistepScheduler cannot step through (nor can diffusers'); use fewer steps or no Karras sigmas")) {
            try scheduler.setTimesteps(12)
        }
        let leading = try makeScheduler(config: SchedulerConfig(className: "DPMSolverMultistepScheduler").with { $0.timestepSpacing = "leading" })
        #expect(throws: StableDiffusionError.invalidArgument(
            "--steps: 1000 steps start at timestep 0 1000 times with timestep_spacing leading, which DPMSolverMultistepScheduler "
                + "cannot step through (nor can diffusers'); use fewer steps")) {
            try leading.setTimesteps(1000)
        }
    }

    @Test func decodingErrorsNameTheKey() throws {
        let missing = try writeConfig(#"{"beta_start": 0.1}"#)
        #expect(throws: StableDiffusionError.invalidConfig(file: missing.path, message: "missing key \"_class_name\"")) {
            try SchedulerConfig.load(from: missing)
        }
        let wrongType = try writeConfig(#"{"_class_name": "DDIMScheduler", "steps_offset": "one"}"#)
        #expect(throws: StableDiffusionError.invalidConfig(file: wrongType.path, message: "key \"steps_offset\" is not a Int")) {
            try SchedulerConfig.load(from: wrongType)
        }
    }

    @Test func stepCountsOutOfRangeAreArgumentErrors() throws {
        for kind in SchedulerKind.allCases {
            let scheduler = try makeScheduler(config: SchedulerConfig(className: kind.rawValue).with { $0.skipPrkSteps = true })
            #expect(throws: StableDiffusionError.invalidArgument("--steps must be at least 1 (got 0)")) { try scheduler.setTimesteps(0) }
            #expect(throws: StableDiffusionError.invalidArgument(
                "--steps must be at most 1000, the scheduler's num_train_timesteps (got 1001)")) { try scheduler.setTimesteps(1001) }
        }
        let prk = try makeScheduler(config: SchedulerConfig(className: "PNDMScheduler"))
        #expect(throws: StableDiffusionError.invalidArgument(
            "--steps must be at least 4 for PNDMScheduler with Runge-Kutta steps (skip_prk_steps false) (got 3)")) {
            try prk.setTimesteps(3)
        }
    }

    /// `steps_offset` with "leading" spacing can start past the schedule (SD 1.5's config at 1000 steps starts at 1000;
    /// a 2-timestep schedule with offset 1 at 2). diffusers lists that timestep, so `setTimesteps` does too, but a run
    /// about to sample is refused with one line instead of trapping on alphas_cumprod[1000].
    @Test(arguments: [(1000, 1000, 1000), (2, 2, 2)])
    func timestepsPastTheScheduleAreRefusedBeforeSampling(trainSteps: Int, steps: Int, first: Int) throws {
        for kind in [SchedulerKind.ddim, .pndm] {
            let scheduler = try makeScheduler(config: SchedulerConfig(className: kind.rawValue).with {
                $0.numTrainTimesteps = trainSteps
                $0.stepsOffset = 1
                $0.timestepSpacing = "leading"
                $0.skipPrkSteps = true
            })
            try scheduler.setTimesteps(steps)
            #expect(scheduler.timesteps.max() == Double(first), "\(kind)")
            #expect(throws: StableDiffusionError.invalidArgument(
                "--steps \(steps) with steps_offset 1 puts timestep \(first) past the scheduler's num_train_timesteps "
                    + "(\(trainSteps)); use fewer steps")) { try scheduler.prepareSampling(steps: steps) }
        }
        let fine = try makeScheduler(config: SchedulerConfig(className: "DDIMScheduler").with {
            $0.stepsOffset = 1
            $0.timestepSpacing = "leading"
        })
        try fine.prepareSampling(steps: 50)
        #expect(fine.timesteps.first == 981)
        for kind in [SchedulerKind.euler, .dpmSolver] {  // they interpolate sigmas, as diffusers' do, at any timestep
            let scheduler = try makeScheduler(config: SchedulerConfig(className: kind.rawValue).with {
                $0.stepsOffset = 1
                $0.timestepSpacing = "leading"
            })
            try scheduler.prepareSampling(steps: 1000)
        }
    }
}

@Suite struct SchedulerBehaviourTests {
    /// eta 0 draws nothing from the generator; eta > 0 draws one normal sample per element per step.
    @Test func ddimDrawsNoiseOnlyWithEta() throws {
        let scheduler = try makeScheduler(config: SchedulerConfig(className: "DDIMScheduler"))
        try scheduler.setTimesteps(5)
        let x = Tensor.ones([1, 4, 2, 2]) * 0.5, out = Tensor.ones([1, 4, 2, 2]) * 0.1
        let generator = Generator(seed: 3)
        _ = scheduler.step(modelOutput: out, timestep: 801, sample: x, generator: generator, eta: 0)
        #expect(maxAbs(Tensor.randn([4], generator: generator), Tensor.randn([4], generator: Generator(seed: 3))) == 0)
        let a = scheduler.step(modelOutput: out, timestep: 801, sample: x, generator: Generator(seed: 5), eta: 1)
        let b = scheduler.step(modelOutput: out, timestep: 801, sample: x, generator: Generator(seed: 5), eta: 1)
        let c = scheduler.step(modelOutput: out, timestep: 801, sample: x, generator: Generator(seed: 6), eta: 1)
        #expect(maxAbs(a, b) == 0 && maxAbs(a, c) > 0.01)
    }

    /// Euler ancestral and DPM-Solver's SDE draw one normal sample per element at every step, the last one included
    /// (where it is scaled by 0), as diffusers does: the generator ends where diffusers' ends.
    @Test func stochasticSamplersDrawOneNoisePerStep() throws {
        for name in [SchedulerName.eulerAncestral, .dpmSDE] {
            let scheduler = try makeScheduler(config: SchedulerConfig(className: "DDIMScheduler"), overrideClass: name.rawValue)
            try scheduler.setTimesteps(4)
            let generator = Generator(seed: 9), const = Tensor.randn([2, 4, 2, 2], generator: Generator(seed: 1))
            var x = Tensor.randn([2, 4, 2, 2], generator: Generator(seed: 0)) * scheduler.initNoiseSigma
            for t in scheduler.timesteps {
                x = scheduler.step(modelOutput: fakeModel(scheduler.scaleModelInput(x, timestep: t), t, const), timestep: t, sample: x,
                                   generator: generator)
            }
            let replay = Generator(seed: 9)
            for _ in 0..<4 { _ = Tensor.randn([2, 4, 2, 2], generator: replay) }
            #expect(maxAbs(Tensor.randn([3], generator: generator), Tensor.randn([3], generator: replay)) == 0, "\(name)")
        }
    }

    /// setTimesteps starts a fresh run: the multistep history of the previous one is dropped.
    @Test func setTimestepsResetsMultistepState() throws {
        for kind in [SchedulerKind.dpmSolver, .pndm, .euler] {
            var config = SchedulerConfig(className: kind.rawValue)
            config.skipPrkSteps = true
            let scheduler = try makeScheduler(config: config)
            let const = Tensor.randn([1, 4, 2, 2], generator: Generator(seed: 1))
            func run() throws -> Tensor {
                try scheduler.setTimesteps(6)
                var x = Tensor.randn([1, 4, 2, 2], generator: Generator(seed: 0)) * scheduler.initNoiseSigma
                for t in scheduler.timesteps {
                    x = scheduler.step(modelOutput: fakeModel(scheduler.scaleModelInput(x, timestep: t), t, const), timestep: t, sample: x)
                }
                return x
            }
            let first = try run(), second = try run()
            #expect(maxAbs(first, second) == 0, "\(kind)")
        }
    }
}

extension SchedulerConfig {
    fileprivate func with(_ change: (inout SchedulerConfig) -> Void) -> SchedulerConfig {
        var copy = self
        change(&copy)
        return copy
    }
}
