import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// Batches from a `BatchSampler`, with its cursor as checkpoint data so that a resumed run sees the same batches.
public final class SampledBatches<Element: Sendable> {
    private var sampler: BatchSampler<Element>

    public init(_ items: [Element], batchSize: Int, shuffle: Bool, seed: UInt64) throws {
        sampler = try BatchSampler(items, batchSize: batchSize, shuffle: shuffle, seed: seed)
    }

    public func next() -> [Element] { sampler.next() }
    public func cursor() throws -> Data { try JSONEncoder().encode(sampler.cursor) }
    public func restore(cursor: Data) throws {
        sampler = try BatchSampler(sampler.items, batchSize: sampler.batchSize, shuffle: sampler.shuffle,
                                   resumingFrom: try JSONDecoder().decode(SamplerCursor.self, from: cursor))
    }
}

/// What a run learns from: prompts (prompt-based TextCraftor) or images with captions (direct fine-tuning).
public enum TrainingData {
    case prompts(SampledBatches<String>)
    case pairs(SampledBatches<ImageCaption>)

    func cursor() throws -> Data {
        switch self {
        case .prompts(let batches): try batches.cursor()
        case .pairs(let batches): try batches.cursor()
        }
    }

    func restore(cursor: Data) throws {
        switch self {
        case .prompts(let batches): try batches.restore(cursor: cursor)
        case .pairs(let batches): try batches.restore(cursor: cursor)
        }
    }
}

/// What the trainer reports after each step.
public struct StepReport: Sendable {
    public let step: Int
    public let loss: Double
    public let rewards: [String: Double]
    public let learningRate: Double
    public let gradNorm: Double
    public let seconds: Double
    /// The guards' numbers (`Guards.swift`): `proximity`, the drawn `grad_window`, `held_out`.
    public var guards: [String: Double] = [:]
}

/// TextCraftor's trainer: the text encoder(s) (or, in the second stage, the UNet) are trained so that images sampled
/// from the model score higher on the rewards. On SDXL either encoder or both train (`TrainedNetwork`), with one
/// AdamW over the union of their parameters. With `adapter = .lora` the encoders stay frozen and LoRA adapters on
/// their linear layers train instead (`LoRARun`, written as `OUT/lora.safetensors`).
public final class Trainer {
    public let pipeline: StableDiffusionPipeline
    /// The frozen originals that condition the sampling steps before the window (prompt mode, text stage): copies of
    /// the trained encoders taken before any update, and an encoder that is not trained as itself.
    public let original: TextEncoders
    public let rewards: WeightedReward
    public let data: TrainingData
    public let config: TrainingConfig
    public var target: TrainedNetwork { config.train }
    public let run: RunFolder
    /// The trained modules, each with the diffusers component it is written as.
    let trained: [RunFolder.Trained]
    /// `adapter token`: the new token's rows, the only parameters trained (nil: full training).
    public let tokenAdapter: TokenAdapter?
    /// `adapter = "lora"`: the LoRA adapters trained instead (the encoders then stay frozen).
    public let adapters: [any RunAdapter]
    let optimizer: AdamW
    /// The run's CPU generator: the latent noise is each step's first draw from it.
    let noise: Generator
    public private(set) var step = 0
    /// fp16: the loss scale (nil under bf16 and float32, whose range needs none).
    public private(set) var lossScaler: LossScaler?
    /// Steps skipped because fp16 gradients overflowed (their scale was halved).
    public private(set) var skippedSteps = 0
    /// Checked after every step; when true the trainer saves a checkpoint and returns (SIGINT).
    public var stopRequested: @Sendable () -> Bool = { false }
    /// Data-parallel training: this process's rank in its group. Only rank 0 writes the run folder.
    public var parallel: DataParallel? = nil
    /// Whether this process writes checkpoints and metrics (rank 0, or the only process).
    public var isWriter: Bool { (parallel?.rank ?? 0) == 0 }
    /// The run's TensorBoard event file (`TrainingTelemetry.swift`), opened at the first step this process logs.
    var tensorBoardWriter: TensorBoardWriter?
    /// `early_stop`: the held-out evaluation (set by `TrainingSession`) and its bookkeeping, restored on resume.
    public var heldOut: HeldOutEvaluator?
    public internal(set) var earlyStopping: EarlyStopping?

    /// The modules being trained: one encoder, SDXL's two, or the UNet.
    public var trainedModules: [any Module] { trained.map(\.module) }

    /// The folders the trained weights are written to in the run folder (`text_encoder/`, `text_encoder_2/`, `unet/`).
    /// With LoRA: the adapter's file (`lora.safetensors`).
    public var weightsFolders: [URL] {
        trained.map { run.url.appendingPathComponent($0.component.name) } + adapters.map { run.url.appendingPathComponent($0.fileName) }
    }

    /// The weight files the run folder gets: `text_encoder/model.safetensors` (and the other trained components'),
    /// `lora.safetensors`, or the token's `token/STEM.safetensors`.
    public var weightFiles: [URL] {
        trained.map { run.url.appendingPathComponent($0.component.name).appendingPathComponent($0.component.weights) }
            + adapters.map { run.url.appendingPathComponent($0.fileName) }
    }

    /// `original`: the frozen encoders for the sampling steps before the window (prompt mode, text stage); each
    /// encoder `config.train` trains must be a copy there, not the pipeline's own. `modelFolder`: the diffusers folder,
    /// whose component configs are copied next to the trained weights. `modelName`: the model's name in the written
    /// files' metadata (default: the folder's; a single file's name when the model is one).
    public init(
        pipeline: StableDiffusionPipeline, original: TextEncoders, modelFolder: URL, modelName: String? = nil,
        rewards: WeightedReward, data: TrainingData, config: TrainingConfig, run: RunFolder
    ) throws {
        let modelName = modelName ?? modelFolder.lastPathComponent
        try config.validate()
        let target = config.train
        try target.requireSupported(by: pipeline.architecture, model: modelFolder.path)
        precondition(config.adapter == .token || !(target.trainsFirstEncoder && original.first === pipeline.textEncoder)
                     && !(target.trainsSecondEncoder && original.second === pipeline.textEncoder2),
                     "Trainer: the original of a trained encoder must be a frozen copy")
        self.pipeline = pipeline
        self.original = original
        self.rewards = rewards
        self.data = data
        self.config = config
        self.run = run
        func component(_ name: String, weights: String) -> RunFolder.Component {
            RunFolder.Component(name: name, weights: weights, config: modelFolder.appendingPathComponent("\(name)/config.json"))
        }
        var trained: [RunFolder.Trained] = []
        if target.trainsFirstEncoder { trained.append((component("text_encoder", weights: "model.safetensors"), pipeline.textEncoder)) }
        if target.trainsSecondEncoder, let second = pipeline.textEncoder2 {
            trained.append((component("text_encoder_2", weights: "model.safetensors"), second))
        }
        if target == .unet { trained.append((component("unet", weights: "diffusion_pytorch_model.safetensors"), pipeline.unet)) }
        let lora = config.adapter == .lora
        if config.adapter == .token, let token = config.token, let initWord = config.initWord {  // validated above
            let adapter = try TokenAdapter(pipeline: pipeline, token: token, initWord: initWord, vectors: config.vectors,
                                           train: target, modelName: modelName)
            tokenAdapter = adapter
            trained = [(adapter.component(modelFolder: modelFolder), adapter)]
        } else {
            tokenAdapter = nil
        }
        self.trained = lora ? [] : trained
        adapters = lora ? [LoRARun(pipeline: pipeline, config: config, modelName: modelName)] : []
        rewards.setPreprocessing(.training)
        original.first.setTrainable(false)
        original.second?.setTrainable(false)
        pipeline.vae.setTrainable(false)
        pipeline.textEncoder.setTrainable(config.adapter == .full && target.trainsFirstEncoder)
        pipeline.textEncoder2?.setTrainable(config.adapter == .full && target.trainsSecondEncoder)
        pipeline.unet.setTrainable(target == .unet)
        optimizer = AdamW(
            parameters: self.trained.flatMap { $0.module.trainableParameters } + adapters.flatMap(\.parameters),
            learningRate: config.learningRate, betas: config.betas.pair, eps: config.eps, weightDecay: config.weightDecay)
        noise = Generator(seed: config.seed)
        lossScaler = config.mixedPrecision == .fp16 ? LossScaler() : nil
        earlyStopping = config.earlyStop.map { _ in EarlyStopping(patience: config.earlyStopPatience) }
    }

    /// Continues from the newest complete checkpoint of the run folder.
    public func resume() throws {
        let checkpoint = try run.latestCheckpoint()
        let state = try run.restore(checkpoint, trained, adapters: adapters, optimizer: optimizer, generator: noise)
        try data.restore(cursor: state.promptCursor)
        step = state.step
        if lossScaler != nil { lossScaler = state.lossScaler ?? LossScaler() }
        restoreGuards(state)
        if let moments = state.rewardMoments { rewards.runningMoments = moments }
        if isWriter {
            try truncateMetrics(after: step)
            try TensorBoardLog.truncate(run.tensorBoard, after: step)
        }
    }

    /// Trains until `maxSteps` (or a stop request), saving every `saveEvery` steps and at the end.
    public func train(onStep: (StepReport) -> Void = { _ in }) throws {
        if let parallel {
            guard case .prompts = data else {
                throw TextCraftorError.invalidSetting(key: "mode", message: "data-parallel training is for prompt mode")
            }
            guard config.batchSize % parallel.worldSize == 0 else {
                throw TextCraftorError.invalidSetting(key: "batch_size",
                    message: "\(config.batchSize) does not split across \(parallel.worldSize) processes: use a multiple of \(parallel.worldSize)")
            }
        }
        if isWriter { try run.prepare() }
        let size = config.resolution ?? pipeline.defaultSize
        let latentShape = [config.batchSize, pipeline.unet.config.in_channels, size / pipeline.vaeScaleFactor, size / pipeline.vaeScaleFactor]
        var stopAgreed = false  // data-parallel: every rank stops after the same step, once any rank was asked to
        let encoders = TextEncoders(of: pipeline)  // trainable where `target` says, frozen elsewhere
        try evaluateBaseline(encoders: encoders, size: size)
        while step < config.maxSteps, !(earlyStopping?.stopped ?? false) {
            if parallel == nil ? stopRequested() : stopAgreed { break }
            let start = Date()
            optimizer.learningRate = config.learningRate(at: step)
            var loss = 0.0
            var rewardSums: [String: Double] = [:]
            var images: Tensor?  // the last batch's decoded images, for TensorBoard
            var guards = stepGuards()  // random_window: this step's K
            for _ in 0..<config.gradientAccumulation {
                let outcome: StepOutcome
                let scale = (lossScaler?.scale ?? 1) / Double(config.gradientAccumulation)
                switch data {
                case .prompts(let batches):
                    var noiseTensor = Tensor.randn(latentShape, generator: noise)  // the step's first random draw
                    var prompts = batches.next()
                    var conditioned: [String]? = nil  // adapter token: the prompts with the token
                    if let shard = parallel?.shard(config.batchSize) {  // this rank's rows of the global batch
                        noiseTensor = noiseTensor.narrow(dim: 0, start: shard.lowerBound, length: shard.count)
                        prompts = Array(prompts[shard])
                    }
                    if let tokenAdapter { conditioned = prompts.map(tokenAdapter.prompt) }
                    // The UNet stage samples with the (fine-tuned) encoders throughout: they are frozen there.
                    outcome = try promptTrainingStep(
                        pipeline: pipeline, trainable: encoders,
                        original: target.trainsTextEncoder && tokenAdapter == nil ? original : encoders,
                        rewards: rewards, prompts: conditioned ?? prompts, initialNoise: noiseTensor, settings: sampling(guards),
                        lossScale: scale, trainsTextEncoder: target.trainsTextEncoder, rewardPrompts: prompts)
                    loss += proximity(encoders: encoders, prompts: conditioned ?? prompts, size: size, scale: scale, into: &guards)
                case .pairs(let batches):
                    let batch = batches.next()
                    let images = try Tensor.stack(batch.map { try Self.loadImage($0.image, size: size) }).to(pipeline.device)
                    outcome = try directTrainingStep(
                        pipeline: pipeline, textEncoders: encoders, rewards: rewards, images: images,
                        captions: batch.map { tokenAdapter?.prompt($0.caption) ?? $0.caption }, rewardCaptions: batch.map(\.caption),
                        timestepRange: config.timestepRange.range, generator: noise,
                        lossScale: scale, trainsTextEncoder: target.trainsTextEncoder)
                    loss += proximity(encoders: encoders, prompts: batch.map { tokenAdapter?.prompt($0.caption) ?? $0.caption },
                                      size: size, scale: scale, into: &guards)
                }
                images = outcome.images
                loss += outcome.loss / Double(config.gradientAccumulation)
                for (name, mean) in outcome.rewards { rewardSums[name, default: 0] += mean / Double(config.gradientAccumulation) }
            }
            if let parallel {
                let names = rewardSums.keys.sorted()
                let averaged = try parallel.average(
                    gradientsOf: optimizer.parameters,
                    scalars: [loss, stopRequested() ? 1 : 0, guards["proximity"] ?? 0] + names.map { rewardSums[$0]! }, step: step + 1)
                loss = averaged[0]
                stopAgreed = averaged[1] > 0
                if guards["proximity"] != nil { guards["proximity"] = averaged[2] }
                for (name, value) in zip(names, averaged.dropFirst(3)) { rewardSums[name] = value }
            }
            if let scale = lossScaler?.scale {  // the gradients of the scaled loss, back to the loss's
                withNoGrad { optimizer.parameters.compactMap(\.grad).forEach { $0 *= 1 / scale } }
            }
            let gradNorm = clipGradients()
            guard loss.isFinite else { throw TextCraftorError.nonFinite(step: step + 1, what: "loss") }
            if lossScaler == nil {
                guard gradNorm.isFinite else { throw TextCraftorError.nonFinite(step: step + 1, what: "gradient norm") }
                optimizer.step()
            } else if lossScaler!.update(gradientsFinite: gradNorm.isFinite) {
                optimizer.step()
            } else {
                skippedSteps += 1  // overflowed in float16: no update, a smaller scale next time
            }
            optimizer.zeroGrad()
            step += 1
            if let parallel, step % parallel.syncCheckEvery == 0 || step == config.maxSteps {
                try parallel.checkInSync(optimizer.parameters, step: step)
            }
            let seconds = Date().timeIntervalSince(start)  // the step's own time, without the held-out evaluation
            try evaluateHeldOut(encoders: encoders, size: size, into: &guards)
            var report = StepReport(step: step, loss: loss, rewards: rewardSums, learningRate: optimizer.learningRate,
                                    gradNorm: gradNorm, seconds: seconds)
            report.guards = guards
            if isWriter {
                try appendMetrics(report)
                try logTensorBoard(report, images: images)
            }
            onStep(report)
            if step % config.saveEvery == 0 || step == config.maxSteps { try save() }
        }
        if step < config.maxSteps { try save() }  // stopped early: keep where we are
    }

    /// The optimizer's moments and counters (for tests and inspection).
    public func optimizerState() -> (tensors: [String: Tensor], metadata: [String: String]) { optimizer.state() }

    public func save() throws {
        guard isWriter else { return }
        tokenAdapter?.step = step
        try run.save(trained, adapters: adapters, optimizer: optimizer, generator: noise,
                     state: try state(),
                     keep: config.keepCheckpoints)
    }

    func state() throws -> TrainingState {
        var state = TrainingState(step: step, promptCursor: try data.cursor(), seed: config.seed)
        state.lossScaler = lossScaler
        state.earlyStopping = earlyStopping
        state.rewardMoments = rewards.normalization == .running ? rewards.runningMoments : nil
        return state
    }

    /// An image file as [3, size, size] in [0, 1]: the short side resized (bicubic, antialiased), centre-cropped.
    static func loadImage(_ url: URL, size: Int) throws -> Tensor {
        let image = try ImageIO.read(url).unsqueeze(0)
        let (h, w) = (image.size(2), image.size(3))
        let (newH, newW) = h <= w ? (size, max(size, w * size / h)) : (max(size, h * size / w), size)
        let resized = (newH, newW) == (h, w) ? image
            : Functional.interpolate(image, size: (newH, newW), mode: .bicubic, antialias: true).clamp(min: 0, max: 1)
        return resized.narrow(dim: 2, start: (newH - size) / 2, length: size).narrow(dim: 3, start: (newW - size) / 2, length: size)[0]
    }

    /// The global gradient norm, clipped to `maxGradNorm` as `torch.nn.utils.clip_grad_norm_` does.
    func clipGradients() -> Double {
        let grads = optimizer.parameters.compactMap(\.grad)
        let norm = grads.reduce(0.0) { $0 + $1.to(.float64).square().sum().item() }.squareRoot()
        if let maxNorm = config.maxGradNorm, norm.isFinite {
            let coefficient = maxNorm / (norm + 1e-6)
            if coefficient < 1 { withNoGrad { grads.forEach { $0 *= coefficient } } }
        }
        return norm
    }

    /// A step's line of metrics.jsonl (TensorBoard's scalars are its numbers).
    func metricsRecord(_ report: StepReport) -> [String: Any] {
        var object: [String: Any] = ["step": report.step, "loss": report.loss, "lr": report.learningRate,
                                     "grad_norm": report.gradNorm, "step_time": report.seconds]
        for (name, value) in report.rewards { object[name] = value }
        for (name, value) in report.guards { object[name] = value }
        if let lossScaler { object["loss_scale"] = lossScaler.scale }
        if !report.gradNorm.isFinite {  // an fp16 step skipped for overflow (JSON has no inf)
            object["grad_norm"] = nil
            object["skipped"] = true
        }
        return object
    }

    func appendMetrics(_ report: StepReport) throws {
        try appendMetricsLine(metricsRecord(report))
    }

    /// One JSON object as a line of `metrics.jsonl`.
    func appendMetricsLine(_ object: [String: Any]) throws {
        var line = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        line.append(0x0A)
        if !FileManager.default.fileExists(atPath: run.metrics.path) { _ = FileManager.default.createFile(atPath: run.metrics.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: run.metrics)
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: line)
    }

    /// On resume, drops metric lines of steps after the checkpoint (they will be done again).
    func truncateMetrics(after step: Int) throws {
        guard let data = FileManager.default.contents(atPath: run.metrics.path) else { return }
        let kept = String(decoding: data, as: UTF8.self).split(separator: "\n").filter { line in
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return (object?["step"] as? Int ?? 0) <= step
        }
        try writeSynced(Data((kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n")).utf8), to: run.metrics)
    }
}
