import Foundation
import Torch

/// A diffusion sampler as diffusers' schedulers are: `setTimesteps`, then for each of `timesteps` the model runs on
/// `scaleModelInput(x, t)` and `step` turns its output into the next, less noisy sample. Step math is tensor ops
/// with scalar coefficients, so gradients flow through it to the model output and to the sample.
///
/// Timesteps are `Double`: Euler with "linspace" spacing (its default) gives fractional ones (25 steps: 999,
/// 957.375, 915.75, ...), which the UNet embeds as they are; the others give whole numbers. Their count is not always
/// the step count: PNDM repeats one (SD1.5, 10 steps: 901, 801, 801, 701, ..., 1) and diffusers' "trailing" spacing
/// gives one more for some counts (61 steps end at -1); the loop runs over all of them, as diffusers' does.
/// Multistep schedulers keep state (DPM-Solver's previous outputs, PNDM's history), which `setTimesteps` resets.
public protocol Scheduler: AnyObject {
    /// The config it was made from, with its class name.
    var config: SchedulerConfig { get }
    /// The training noise schedule (betas, cumulative alphas).
    var noiseSchedule: NoiseSchedule { get }
    /// The timesteps to run, highest first, as diffusers produces them; empty until `setTimesteps`.
    var timesteps: [Double] { get }
    /// The standard deviation of the initial noise: latents are `randn * initNoiseSigma`.
    var initNoiseSigma: Double { get }
    /// The estimate of the clean sample made by the last `step` (nil before the first, and for PNDM).
    var predOriginalSample: Tensor? { get }
    /// Whether `step` reads the training schedule at each timestep (DDIM, PNDM), so that every timestep must be one
    /// of its `num_train_timesteps`; Euler and DPM-Solver interpolate sigmas and take any (false by default).
    var readsTrainingScheduleAtTimesteps: Bool { get }

    /// Chooses `count` inference steps and resets the state of a previous run. Throws for a count below 1 or above
    /// the training timesteps.
    func setTimesteps(_ count: Int) throws
    /// The model's input for `timestep` (Euler divides by sqrt(sigma² + 1); the others return the sample).
    func scaleModelInput(_ sample: Tensor, timestep: Double) -> Tensor
    /// One denoising step: the sample at the previous (lower) timestep. `eta` is DDIM's weight of DDPM noise (0:
    /// deterministic), which the others ignore, as diffusers' pipeline passes it only to DDIM. `generator` feeds the
    /// schedulers that add noise (DDIM with eta > 0, Euler with s_churn > 0, Euler ancestral, DPM-Solver's SDE); nil
    /// uses the default generator.
    func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator?, eta: Double) -> Tensor
    /// The forward process: `original` noised to each of `timesteps` (one per batch item, or one for all).
    func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor
}

extension Scheduler {
    public var readsTrainingScheduleAtTimesteps: Bool { false }

    /// `setTimesteps(count)` for a run about to sample: it also throws where a timestep of DDIM or PNDM falls past the
    /// training schedule (`steps_offset` with "leading" spacing can put the first one at `num_train_timesteps`, e.g. 1000
    /// steps of SD 1.5's config start at 1000), which diffusers' timesteps include and its first step then fails on.
    /// `setTimesteps` itself keeps diffusers' list, as the parity tests compare it.
    public func prepareSampling(steps count: Int) throws {
        try setTimesteps(count)
        guard readsTrainingScheduleAtTimesteps else { return }
        let limit = Double(config.numTrainTimesteps)
        if let past = timesteps.first(where: { $0 >= limit }) {
            throw StableDiffusionError.invalidArgument(
                "--steps \(count) with steps_offset \(config.stepsOffset) puts timestep \(Int(past)) past the scheduler's "
                    + "num_train_timesteps (\(config.numTrainTimesteps)); use fewer steps")
        }
    }

    /// A step without noise from eta (DDIM deterministic).
    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor, generator: Generator? = nil) -> Tensor {
        step(modelOutput: modelOutput, timestep: timestep, sample: sample, generator: generator, eta: 0)
    }
}

/// The schedulers implemented, by diffusers class name.
public enum SchedulerKind: String, Sendable, CaseIterable {
    case ddim = "DDIMScheduler"
    case euler = "EulerDiscreteScheduler"
    case eulerAncestral = "EulerAncestralDiscreteScheduler"
    case dpmSolver = "DPMSolverMultistepScheduler"
    case pndm = "PNDMScheduler"

    /// Whether diffusers' class has `use_karras_sigmas` (Euler and DPM-Solver; Euler ancestral has not, in 0.39).
    public var hasKarrasSigmas: Bool { self == .euler || self == .dpmSolver }
}

/// The samplers a command line names (`--scheduler`), each a diffusers class on the model's noise schedule, and
/// for DPM-Solver the algorithm, which the name fixes: `dpm` is DPM++ 2M (the ODE solver) and `dpm-sde` DPM++ 2M
/// SDE whatever the model's config says. The config's other keys are kept (its solver_order, say).
public enum SchedulerName: String, Sendable, CaseIterable {
    case ddim
    case euler
    /// "Euler a".
    case eulerAncestral = "euler-ancestral"
    /// DPM++ 2M.
    case dpm
    /// DPM++ 2M SDE.
    case dpmSDE = "dpm-sde"
    case pndm

    public var kind: SchedulerKind {
        switch self {
        case .ddim: .ddim
        case .euler: .euler
        case .eulerAncestral: .eulerAncestral
        case .dpm, .dpmSDE: .dpmSolver
        case .pndm: .pndm
        }
    }

    /// A name in any case.
    public init?(name: String) { self.init(rawValue: name.lowercased()) }

    /// The names, comma-separated, for messages and help.
    public static var list: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// The error for `--karras` with a scheduler, described by `named`, that has no Karras sigmas.
    public static func noKarrasSigmas(_ named: String) -> StableDiffusionError {
        let names = allCases.filter(\.kind.hasKarrasSigmas).map(\.rawValue).joined(separator: ", ")
        return .invalidArgument("--karras: \(named) has no Karras sigmas (--scheduler \(names) have)")
    }

    /// The config the name runs with: the class switched as diffusers' `from_config` switches it, and the keys the
    /// name fixes.
    func configure(_ config: SchedulerConfig) -> SchedulerConfig {
        var converted = config.converted(to: kind.rawValue)
        switch self {
        case .dpm: converted.algorithmType = DPMSolverMultistepScheduler.Algorithm.dpmSolverPlusPlus.rawValue
        case .dpmSDE: converted.algorithmType = DPMSolverMultistepScheduler.Algorithm.sdeDPMSolverPlusPlus.rawValue
        default: break
        }
        return converted
    }
}

/// The scheduler the config names, or `overrideClass` (a `SchedulerName` or a diffusers class name) made from the
/// same config, as `XScheduler.from_config(pipe.scheduler.config)` makes it. `karras` turns on `use_karras_sigmas`
/// (false leaves the config's value); a scheduler without Karras sigmas is then an error naming `--karras`.
/// `configFile`, when given, is the path errors name (else `config.file`).
public func makeScheduler(
    config: SchedulerConfig, overrideClass: String? = nil, karras: Bool = false, configFile: String? = nil
) throws -> any Scheduler {
    var config = config
    if let configFile { config.file = configFile }
    if let overrideClass {
        if let name = SchedulerName(name: overrideClass) {
            config = name.configure(config)
        } else if let kind = SchedulerKind(rawValue: overrideClass) {
            config = config.converted(to: kind.rawValue)
        } else {
            throw StableDiffusionError.invalidArgument("--scheduler \"\(overrideClass)\" is not supported (supported: \(SchedulerName.list))")
        }
    }
    guard let kind = SchedulerKind(rawValue: config.className) else {
        throw StableDiffusionError.unsupported(
            file: config.file, key: SchedulerConfig.CodingKeys.className.rawValue, value: config.className,
            supported: SchedulerKind.allCases.map(\.rawValue))
    }
    if karras {
        guard kind.hasKarrasSigmas else { throw SchedulerName.noKarrasSigmas(overrideClass ?? "the model's scheduler (\(kind.rawValue))") }
        config.useKarrasSigmas = true
    }
    switch kind {
    case .ddim: return try DDIMScheduler(config: config)
    case .euler: return try EulerDiscreteScheduler(config: config)
    case .eulerAncestral: return try EulerAncestralDiscreteScheduler(config: config)
    case .dpmSolver: return try DPMSolverMultistepScheduler(config: config)
    case .pndm: return try PNDMScheduler(config: config)
    }
}

// MARK: the training noise schedule

/// Betas and the cumulative products of 1 - beta, in float32 as diffusers holds them (computed the same way, so the
/// values are bit-identical: torch's linspace, and cumprod accumulating in double as ATen's CPU kernel does).
public struct NoiseSchedule: Sendable {
    public let betas: [Float]
    public let alphasCumprod: [Float]

    /// `zeroTerminalSNRClamp`: Euler and DPM-Solver replace the last cumulative alpha of a rescaled schedule (0) by
    /// 2^-24 so that sigma stays finite; DDIM keeps the 0.
    init(config: SchedulerConfig, rescaleZeroTerminalSNR: Bool, zeroTerminalSNRClamp: Bool = false) throws {
        try config.requirePositive(.numTrainTimesteps, config.numTrainTimesteps)
        try config.checkRanges(file: config.file)
        var betas: [Float]
        if let trained = config.trainedBetas {
            guard trained.count == config.numTrainTimesteps else {
                throw StableDiffusionError.invalidConfig(
                    file: config.file,
                    message: "key \"trained_betas\" has \(trained.count) values, num_train_timesteps is \(config.numTrainTimesteps)")
            }
            betas = trained.map { Float($0) }
        } else {
            enum BetaSchedule: String, CaseIterable {
                case linear
                case scaledLinear = "scaled_linear"
                case squaredCos = "squaredcos_cap_v2"
            }
            let count = config.numTrainTimesteps
            switch try config.checked(.betaSchedule, config.betaSchedule, among: BetaSchedule.allCases) {
            case .linear:
                betas = Tensor.linspace(config.betaStart, config.betaEnd, count: count, dtype: .float32).toArray(Float.self)
            case .scaledLinear:
                betas = Tensor.linspace(pow(config.betaStart, 0.5), pow(config.betaEnd, 0.5), count: count, dtype: .float32)
                    .pow(2).toArray(Float.self)
            case .squaredCos:
                betas = NoiseSchedule.cosineBetas(count)
            }
        }
        if rescaleZeroTerminalSNR { betas = NoiseSchedule.rescaledToZeroTerminalSNR(betas) }
        var alphasCumprod = NoiseSchedule.cumprod(betas.map { 1 - $0 })
        if rescaleZeroTerminalSNR && zeroTerminalSNRClamp { alphasCumprod[alphasCumprod.count - 1] = 0x1p-24 }
        self.betas = betas
        self.alphasCumprod = alphasCumprod
    }

    /// diffusers' `betas_for_alpha_bar` with the cosine alpha-bar of improved DDPM, max beta 0.999.
    static func cosineBetas(_ count: Int) -> [Float] {
        func alphaBar(_ t: Double) -> Double { pow(cos((t + 0.008) / 1.008 * Double.pi / 2), 2) }
        return (0..<count).map { i in
            let t1 = Double(i) / Double(count), t2 = Double(i + 1) / Double(count)
            return Float(min(1 - alphaBar(t2) / alphaBar(t1), 0.999))
        }
    }

    /// `torch.cumprod` of float32 values on the CPU: a double accumulator, each partial product rounded to float.
    static func cumprod(_ values: [Float]) -> [Float] {
        var product = 1.0
        return values.map { value in
            product *= Double(value)
            return Float(product)
        }
    }

    /// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1), in libtorch's float32 ops as diffusers
    /// runs it (torch's float32 sqrt is MKL's vsSqrt, not always the correctly rounded one, so Swift's would differ in
    /// the last bit; its rounding also depends on the processor, so diffusers' values differ slightly between machines).
    static func rescaledToZeroTerminalSNR(_ betas: [Float]) -> [Float] {
        let count = betas.count
        let root = Tensor(cumprod(betas.map { 1 - $0 })).sqrt()
        let first = root[0].clone(), last = root[count - 1].clone()
        let shifted = (root - last) * (first / (first - last))
        let alphasBar = shifted.pow(2)
        let alphas = Tensor.cat([
            alphasBar.slice(dim: 0, start: 0, end: 1),
            alphasBar.slice(dim: 0, start: 1) / alphasBar.slice(dim: 0, start: 0, end: count - 1),
        ])
        return (1 - alphas).toArray(Float.self)
    }

    /// alphas_cumprod[t] with Python's indexing, where -1 is the last (diffusers' "trailing" spacing can produce a
    /// timestep -1, and it then reads the last value).
    func alphaCumprod(at timestep: Int) -> Double {
        Double(alphasCumprod[timestep < 0 ? timestep + alphasCumprod.count : timestep])
    }

    /// sqrt((1 - ᾱ) / ᾱ) per training timestep, in float32 with libtorch's sqrt as diffusers computes it: its
    /// vector sqrt is not always the correctly rounded one (6 of SD's 1,000 sigmas differ from Swift's in the last
    /// bit on an Intel Xeon, among them t = 969, the first of 45 "leading" steps), and the sigmas a spacing picks
    /// from the table must be diffusers' own.
    var sigmas: [Float] {
        let alphas = Tensor(alphasCumprod)
        return ((1 - alphas) / alphas).sqrt().toArray(Float.self)
    }

    /// The DDPM forward process: sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε, with ᾱ looked up per timestep. Public for training,
    /// which noises with it whatever sampler the model folder names (the Euler schedulers' own `addNoise` scales by σ
    /// instead, and only at their sampling timesteps).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Double]) -> Tensor {
        let indices = timesteps.map { t -> Int in
            precondition(t == t.rounded() && Int(t) < alphasCumprod.count, "addNoise: timestep \(t) is not a training timestep")
            return Int(t)
        }
        // In float32 as diffusers does (1 - ᾱ rounds in float32 before the root).
        let alphas = indices.map { Float(alphaCumprod(at: $0)) }
        let signal = alphas.map { $0.squareRoot() }
        let noiseScale = alphas.map { (1 - $0).squareRoot() }
        return perItem(signal, like: original) * original + perItem(noiseScale, like: original) * noise
    }
}

/// One coefficient per batch item, shaped [n, 1, 1, ...] to broadcast over `like`, in its dtype and on its device.
func perItem(_ values: [Float], like tensor: Tensor) -> Tensor {
    let shape = [values.count] + Array(repeating: 1, count: max(tensor.rank - 1, 0))
    return Tensor(values, shape: shape).to(dtype: tensor.dtype, device: tensor.device)
}

/// Standard normal noise shaped like `tensor`, in its dtype or `dtype`, as diffusers' `randn_tensor` draws it: a CPU
/// generator draws on the CPU and the noise moves to the tensor's device (so CUDA runs seeded on the CPU repeat CPU
/// runs).
func noise(like tensor: Tensor, dtype: DType? = nil, generator: Generator?) -> Tensor {
    let dtype = dtype ?? tensor.dtype
    guard let generator, generator.device != tensor.device else {
        return Tensor.randn(tensor.shape, dtype: dtype, generator: generator, device: tensor.device)
    }
    precondition(generator.device == .cpu, "a \(generator.device) generator cannot make noise for a \(tensor.device) tensor")
    return Tensor.randn(tensor.shape, dtype: dtype, generator: generator, device: .cpu).to(tensor.device)
}

/// The `--steps` check shared by every scheduler.
func checkStepCount(_ count: Int, _ config: SchedulerConfig) throws {
    guard count >= 1 else { throw StableDiffusionError.invalidArgument("--steps must be at least 1 (got \(count))") }
    guard count <= config.numTrainTimesteps else {
        throw StableDiffusionError.invalidArgument(
            "--steps must be at most \(config.numTrainTimesteps), the scheduler's num_train_timesteps (got \(count))")
    }
}

// MARK: numpy, to the bit

/// The few numpy functions diffusers spaces timesteps with, reproduced operation by operation in float64 so that
/// the timesteps and interpolated sigmas equal diffusers' exactly.
enum NumPy {
    /// `np.linspace(start, stop, num)`: i * step + start, the last point set to stop.
    static func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        guard num > 0 else { return [] }
        let div = num - 1
        let delta = stop - start
        guard div > 0 else { return [0 * delta + start] }
        let step = delta / Double(div)
        var y = (0..<num).map { i in
            step == 0 ? Double(i) / Double(div) * delta + start : Double(i) * step + start
        }
        y[num - 1] = stop
        return y
    }

    /// `np.arange(start, stop, step)` for floats: ceil((stop - start) / step) values; after the first two, numpy fills
    /// start + i * (second - start), not start + i * step.
    static func arange(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
        let length = Int(((stop - start) / step).rounded(.up))
        guard length > 0 else { return [] }
        guard length > 1 else { return [start] }
        let second = start + step
        let delta = second - start
        return [start, second] + (2..<max(length, 2)).map { start + Double($0) * delta }
    }

    /// `np.round`: halves to even.
    static func round(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

    /// `np.interp(x, np.arange(len(fp)), fp)`, clamped to the ends.
    static func interp(_ x: Double, _ fp: [Float]) -> Double {
        let last = fp.count - 1
        if x.isNaN { return x }
        if x >= Double(last) { return Double(fp[last]) }
        if x <= 0 { return Double(fp[0]) }
        let j = Int(x.rounded(.down))
        if Double(j) == x { return Double(fp[j]) }
        let slope = (Double(fp[j + 1]) - Double(fp[j])) / (Double(j + 1) - Double(j))
        return slope * (x - Double(j)) + Double(fp[j])
    }
}
