import Foundation
import NN
import Rewards
import ShapesWorld
import StableDiffusion
import TOMLKit
import Torch

// Guards against reward hacking (issue 21), each an option of a training run:
//
// - the embedding-proximity penalty (`proximity_weight`): W x the mean squared difference between the conditioning the
//   trained encoders give the step's prompts and the one the original encoders give them, added to the loss;
// - a random gradient window (`random_window`): each step's K drawn uniformly from 1...grad_window, as AlignProp's
//   randomised truncation and DRaFT-LV vary it;
// - early stopping (`early_stop`, `early_stop_every`, `early_stop_patience`, `held_out_prompts`) on a held-out signal
//   that is not trained: the run keeps the best evaluation's weights in `OUT/best/` and stops when it stops improving.

// MARK: - The proximity penalty

/// The embedding-proximity term of one batch: the mean squared difference between `trainable`'s conditioning of
/// `prompts` and `original`'s (no unconditional rows: the prompts' own), on SDXL the hidden states' mean plus the
/// pooled embeddings'. With a reward token (`tokenAdapter`) the original is the same encoders reading the token's
/// initial rows (the init word's). With `weight` > 0, d(weight · lossScale · term)/d(parameters) is accumulated into the trainable
/// parameters' `.grad` (a separate backward pass through the encoders: it adds to the reward's gradient, whatever path
/// that took). Returns the term's value (not weighted, not scaled).
public func proximityTerm(
    pipeline: StableDiffusionPipeline, trainable: TextEncoders, original: TextEncoders, prompts: [String],
    height: Int, width: Int, weight: Double, lossScale: Double = 1, tokenAdapter: TokenAdapter? = nil
) -> Double {
    let conditioning = StepConditioning(pipeline: pipeline, prompts: prompts, guided: false, height: height, width: width)
    let reference = withNoGrad {
        tokenAdapter.map { token in token.withInitialRows(pipeline) { conditioning.encode(original) } } ?? conditioning.encode(original)
    }
    let current = conditioning.encode(trainable)
    var term = (current.hiddenStates - reference.hiddenStates.to(current.hiddenStates.dtype)).square().mean()
    if let pooled = current.textEmbeds, let referencePooled = reference.textEmbeds {
        term = term + (pooled - referencePooled.to(pooled.dtype)).square().mean()
    }
    let value = term.item()
    if weight > 0, term.requiresGrad { (term * (weight * lossScale)).backward() }
    return value
}

extension TokenAdapter {
    /// `body` with the pipeline's encoders reading the token's initial rows in place of the trained ones (a swap of
    /// the tensor they look the token up in, undone after).
    func withInitialRows<T>(_ pipeline: StableDiffusionPipeline, _ body: () -> T) -> T {
        var places: [(CLIPTextModel, Tensor, Tensor)] = [(pipeline.textEncoder, first, initialFirst)]
        if let encoder = pipeline.textEncoder2?.textModel, let second, let initialSecond { places.append((encoder, second, initialSecond)) }
        let swapped = places.filter { $0.0.addedTokenEmbeddings === $0.1 }
        for (encoder, _, initial) in swapped { encoder.addedTokenEmbeddings = initial }
        defer { for (encoder, rows, _) in swapped { encoder.addedTokenEmbeddings = rows } }
        return body()
    }
}

// MARK: - The random window

/// `random_window`: the gradient window of a step, uniform in 1...`maximum`, drawn from a generator seeded by the run's
/// seed and the step, so a resumed run draws the same lengths and the noise stream is not touched.
public enum WindowDraw {
    /// The window of step `step` (0-based) of a run seeded `seed`.
    public static func length(seed: UInt64, step: Int, maximum: Int) -> Int {
        precondition(maximum >= 1)
        var random = SplitMix64(seed: seed ^ 0x5749_4E44_4F57_4B00 &+ UInt64(step) &* 0x9E37_79B9_7F4A_7C15)
        _ = random.next()
        return 1 + Int(random.next(below: UInt64(maximum)))
    }
}

// MARK: - Early stopping

/// Early stopping's bookkeeping: the best held-out value so far and its step, and how many evaluations since it
/// improved. Kept in each checkpoint's `state.json`, so a resumed run goes on counting.
public struct EarlyStopping: Codable, Equatable, Sendable {
    public var patience: Int
    /// The best value and the step it was measured at (nil before the first evaluation).
    public var best: Double?
    public var bestStep: Int?
    /// Evaluations since the best one.
    public var sinceBest = 0
    /// Patience ran out: the run stops (and a resumed run does not go on).
    public var stopped = false

    public init(patience: Int) {
        precondition(patience >= 1)
        self.patience = patience
    }

    /// Records an evaluation; returns whether it is the new best (its weights are then to be kept). Higher is better;
    /// a value that is not finite never improves.
    @discardableResult
    public mutating func record(_ value: Double, step: Int) -> Bool {
        if value.isFinite, best.map({ value > $0 }) ?? true {
            best = value
            bestStep = step
            sinceBest = 0
            return true
        }
        sinceBest += 1
        if sinceBest >= patience { stopped = true }
        return false
    }
}

/// The held-out signal of `early_stop`: a reward of the registry (`NAME=PATH[,PATH]`, as `reward` takes it, without a
/// weight) or `oracle`, ShapesWorld's alignment (the share of the prompt's attributes the oracle reads off the image).
public enum EarlyStopSignal: Equatable, Sendable {
    case reward(name: String, paths: [String])
    case oracle

    public init(spec: String) throws {
        if spec == "oracle" {
            self = .oracle
            return
        }
        guard let equals = spec.firstIndex(of: "="), equals != spec.startIndex else {
            throw TextCraftorError.invalidSetting(
                key: "early_stop", message: "\(excerpt(spec, limit: 80)): expected NAME=PATH (a reward that is not trained) or oracle")
        }
        let name = String(spec[..<equals])
        guard RewardRegistry.names.contains(name) else {
            throw TextCraftorError.invalidSetting(
                key: "early_stop",
                message: "unknown reward \"\(excerpt(name, limit: 40))\" (known: \(RewardRegistry.names.joined(separator: ", ")), oracle)")
        }
        let paths = spec[spec.index(after: equals)...].split(separator: ",").map(String.init)
        guard !paths.isEmpty else {
            throw TextCraftorError.invalidSetting(key: "early_stop", message: "\(excerpt(spec, limit: 80)): no path given")
        }
        self = .reward(name: name, paths: paths)
    }

    /// The name metrics and messages use (`clip`, `oracle`).
    public var name: String {
        switch self {
        case .reward(let name, _): name
        case .oracle: "oracle"
        }
    }

    var spec: String {
        switch self {
        case .reward(let name, let paths): "\(name)=\(paths.joined(separator: ","))"
        case .oracle: "oracle"
        }
    }

    /// `validate()`'s check of the key.
    static func problem(_ spec: String) -> String? {
        do { _ = try EarlyStopSignal(spec: spec) } catch TextCraftorError.invalidSetting(_, let message) { return message } catch {
            return "\(error)"
        }
        return nil
    }

    /// The spec with its paths made absolute (run.json).
    static func absolutePaths(_ spec: String, _ absolute: (String) -> String) -> String {
        guard case .reward(let name, let paths)? = try? EarlyStopSignal(spec: spec) else { return spec }
        return EarlyStopSignal.reward(name: name, paths: paths.map(absolute)).spec
    }
}

extension ConfigFile.Reader {
    /// `early_stop = "clip=rewards/clip"`: the paths taken from the config file's folder when relative.
    func earlyStopSpec(_ value: TOMLValueConvertible, _ key: String) throws -> String {
        let spec = try string(value, key)
        guard case .reward(let name, let paths)? = try? EarlyStopSignal(spec: spec) else { return spec }  // validate() names it
        return EarlyStopSignal.reward(name: name, paths: paths.map { path in
            let expanded = NSString(string: path).expandingTildeInPath
            return expanded.hasPrefix("/") ? expanded : folder.appendingPathComponent(expanded).standardizedFileURL.path
        }).spec
    }
}

extension TrainingConfig {
    /// The guards' checks between keys.
    func validateGuards() throws {
        if proximityWeight > 0 {
            if train == .unet {
                throw TextCraftorError.invalidSetting(
                    key: "proximity_weight", message: "the UNet stage trains no text encoder: there is no embedding to keep close")
            }
        }
        guard let earlyStop else { return }
        let signal = try EarlyStopSignal(spec: earlyStop)
        if rewards.contains(where: { $0.name == signal.name }) {
            throw TextCraftorError.invalidSetting(
                key: "early_stop",
                message: "\(signal.name) is a trained reward: early stopping needs a signal the run does not optimise (e.g. clip when training aesthetic)")
        }
        if mode == .direct, heldOutPrompts == nil {
            throw TextCraftorError.invalidSetting(key: "held_out_prompts", message: "direct mode has no prompt file to hold prompts out of: give one")
        }
    }
}

/// The held-out prompts a run evaluates, and the rest (what it trains on): `held_out_prompts`'s file, or else every
/// tenth prompt of the training prompts (the 10th, 20th, ..., at most 32), which are then not trained on.
public func heldOutSplit(_ prompts: [String], heldOutFile: String?, column: String) throws -> (train: [String], heldOut: [String]) {
    if let heldOutFile {
        let source = try PromptSource(contentsOf: URL(fileURLWithPath: heldOutFile), column: column)
        return (prompts, source.prompts)
    }
    guard prompts.count >= 10 else {
        throw TextCraftorError.invalidSetting(
            key: "held_out_prompts",
            message: "early stopping holds out every tenth prompt, and the prompt file has \(prompts.count): give held-out prompts")
    }
    let held = Set(prompts.indices.filter { $0 % 10 == 9 }.prefix(32))
    return (prompts.indices.filter { !held.contains($0) }.map { prompts[$0] }, held.sorted().map { prompts[$0] })
}

/// Samples the held-out prompts with the current encoders (no gradient; the training sampler: DDIM, trailing
/// timesteps, the run's guidance and resolution; the same noise at every evaluation, from its own generator seeded
/// with the run's seed) and scores them with the held-out signal, in evaluation preprocessing.
public final class HeldOutEvaluator {
    public let prompts: [String]
    public let signal: EarlyStopSignal
    let reward: (any Reward)?

    /// Loads the signal's reward (the oracle needs nothing).
    public init(prompts: [String], signal: EarlyStopSignal, dtype: DType? = nil, device: Device = .cpu) throws {
        guard !prompts.isEmpty else { throw TextCraftorError.invalidSetting(key: "held_out_prompts", message: "no held-out prompts") }
        self.prompts = prompts
        self.signal = signal
        switch signal {
        case .reward(let name, let paths):
            do {
                let reward = try RewardRegistry.load(name: name, paths: paths, dtype: dtype, device: device)
                reward.preprocessing = .evaluation
                self.reward = reward
            } catch {
                throw TextCraftorError.invalidSetting(key: "early_stop", message: "\(error)")
            }
        case .oracle:
            reward = nil
        }
    }

    /// The mean score of the held-out prompts' images. `conditioned`: each prompt as the encoders see it (a reward
    /// token appended); the signal judges the prompt as written.
    public func evaluate(
        pipeline: StableDiffusionPipeline, encoders: TextEncoders, settings: SamplingSettings, size: Int, batchSize: Int,
        seed: UInt64, conditioned: (String) -> String = { $0 }
    ) throws -> Double {
        let generator = Generator(seed: seed)
        let latent = size / pipeline.vaeScaleFactor
        var total = 0.0
        for start in stride(from: 0, to: prompts.count, by: batchSize) {
            let batch = Array(prompts[start..<min(start + batchSize, prompts.count)])
            let noise = Tensor.randn([batch.count, pipeline.unet.config.in_channels, latent, latent], generator: generator)
            let scheduler = try settings.makeScheduler(pipeline)
            let images = withNoGrad { () -> Tensor in
                let context = StepConditioning(pipeline: pipeline, prompts: batch.map(conditioned), guided: settings.guidanceScale > 1,
                                               height: size, width: size).encode(encoders)
                var z = (noise * scheduler.initNoiseSigma).to(dtype: noise.dtype, device: pipeline.device)
                for t in scheduler.timesteps {
                    z = pipeline.denoise(z, timestep: t, conditioning: context, guidanceScale: settings.guidanceScale,
                                         scheduler: scheduler, generator: nil)
                }
                return (pipeline.decode(z).to(.float32) / 2 + 0.5).clamp(min: 0, max: 1)
            }
            switch signal {
            case .reward:
                total += try withNoGrad { try reward!.score(images, prompts: batch).to(.float64).sum().item() }
            case .oracle:
                let cpu = images.to(.cpu)
                total += batch.indices.reduce(0.0) { $0 + Oracle.alignment(cpu[$1], prompt: batch[$1]) }
            }
        }
        return total / Double(prompts.count)
    }
}

// MARK: - The trainer's side

extension Trainer {
    /// A step's guards before it runs: with `random_window`, the drawn window (`grad_window` in metrics.jsonl).
    func stepGuards() -> [String: Double] {
        guard config.randomWindow else { return [:] }
        return ["grad_window": Double(WindowDraw.length(seed: config.seed, step: step, maximum: config.gradientWindow))]
    }

    /// The sampler of this step: the run's, with the drawn window when there is one.
    func sampling(_ guards: [String: Double]) -> SamplingSettings {
        var settings = config.sampling
        if let window = guards["grad_window"] { settings.gradientWindow = Int(window) }
        return settings
    }

    /// `proximity_weight` > 0: the penalty of one batch (its gradient accumulated, its value added to `proximity` in
    /// `guards`, as a share of the step's batches); returns what it adds to the step's loss. 0 when it is off.
    func proximity(encoders: TextEncoders, prompts: [String], size: Int, scale: Double, into guards: inout [String: Double]) -> Double {
        let weight = config.proximityWeight
        guard weight > 0 else { return 0 }
        let term = proximityTerm(pipeline: pipeline, trainable: encoders, original: tokenAdapter == nil ? original : encoders,
                                 prompts: prompts, height: size, width: size, weight: weight, lossScale: scale, tokenAdapter: tokenAdapter)
        let share = 1 / Double(config.gradientAccumulation)
        guards["proximity", default: 0] += term * share
        return weight * term * share
    }

    /// A fresh run with early stopping measures the original encoders first (step 0 in metrics.jsonl, and in
    /// `best/` until a step beats it).
    func evaluateBaseline(encoders: TextEncoders, size: Int) throws {
        guard let heldOut, let state = earlyStopping, step == 0, state.best == nil else { return }
        let value = try heldOutValue(heldOut, encoders: encoders, size: size)
        if earlyStopping!.record(value, step: 0) { try writeBest(value) }
        if isWriter { try appendMetricsLine(["step": 0, "held_out": value]) }
    }

    /// Every `early_stop_every` steps (and at the last): the held-out value (`held_out` in `guards`), the best weights
    /// kept in `OUT/best/` when it improves, and the patience counted.
    func evaluateHeldOut(encoders: TextEncoders, size: Int, into guards: inout [String: Double]) throws {
        guard let heldOut, earlyStopping != nil, step % config.earlyStopEvery == 0 || step == config.maxSteps else { return }
        let value = try heldOutValue(heldOut, encoders: encoders, size: size)
        guards["held_out"] = value
        if earlyStopping!.record(value, step: step) { try writeBest(value) }
    }

    func heldOutValue(_ heldOut: HeldOutEvaluator, encoders: TextEncoders, size: Int) throws -> Double {
        let value = try heldOut.evaluate(
            pipeline: pipeline, encoders: encoders, settings: config.sampling, size: size, batchSize: config.batchSize,
            seed: config.seed, conditioned: { [tokenAdapter] in tokenAdapter?.prompt($0) ?? $0 })
        guard let parallel else { return value }
        // Every rank measured the same images; the mean keeps their decisions the same even if the devices round apart.
        return try parallel.averaged(value, like: optimizer.parameters.first, step: step)
    }

    /// `OUT/best/`: the trained weights as the run folder holds them (`text_encoder/`, `lora.safetensors`, ...) and
    /// `best.json` (the step, the held-out value, the signal), swapped in whole.
    func writeBest(_ value: Double) throws {
        guard isWriter, let heldOut else { return }
        tokenAdapter?.step = step
        try run.prepare()
        try run.replaceFolder(run.best) { folder in
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            for (component, model) in trained { try run.writeModel(model, component, to: folder.appendingPathComponent(component.name)) }
            for adapter in adapters { try adapter.export(to: folder.appendingPathComponent(adapter.fileName)) }
            let record: [String: Any] = ["step": step, "held_out": value, "signal": heldOut.signal.name]
            try writeSynced(try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .prettyPrinted]),
                            to: folder.appendingPathComponent("best.json"))
        }
    }

    /// Resume: early stopping goes on from the checkpoint's count; a patience changed with the resume applies.
    func restoreGuards(_ state: TrainingState) {
        guard earlyStopping != nil else { return }
        var restored = state.earlyStopping ?? EarlyStopping(patience: config.earlyStopPatience)
        restored.patience = config.earlyStopPatience
        restored.stopped = restored.sinceBest >= restored.patience
        earlyStopping = restored
    }
}

extension RunFolder {
    /// `early_stop`: the best held-out evaluation's weights.
    public var best: URL { url.appendingPathComponent("best") }
}

extension DataParallel {
    /// The mean of one number across the ranks.
    func averaged(_ value: Double, like parameter: Tensor?, step: Int) throws -> Double {
        let values = staged(Tensor([value], shape: [1]), like: parameter)
        try collective(step: step) { try group.allReduce([values], .sum) }
        return values.to(.cpu).toArray(Double.self)[0] / Double(worldSize)
    }
}
