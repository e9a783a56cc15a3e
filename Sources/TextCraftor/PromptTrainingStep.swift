import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// The sampling side of prompt-based TextCraftor (METHOD.md): a DDIM sampler with eta 0 and trailing timesteps
/// (999, 959, ..., 39 for 25 steps, the authors' "lead=999" spacing) whose last `gradientWindow` steps use the
/// trainable encoder's embeddings, for both the conditional and the unconditional ("") halves.
public struct SamplingSettings: Sendable, Equatable {
    public var samplingSteps: Int
    public var gradientWindow: Int
    public var guidanceScale: Double
    /// Windowed gradients only: the VAE decoder's backward recomputes it piece by piece (`CheckpointedChain`) instead
    /// of keeping its whole graph, whose activations at 512x512 outweigh a UNet step's; one more decoder forward.
    public var checkpointsVAE = true

    /// The defaults of a training run are `TrainingConfig`'s; this is what one step is given.
    public init(samplingSteps: Int, gradientWindow: Int, guidanceScale: Double, checkpointsVAE: Bool = true) {
        self.samplingSteps = samplingSteps
        self.gradientWindow = gradientWindow
        self.guidanceScale = guidanceScale
        self.checkpointsVAE = checkpointsVAE
    }

    public func validate() throws {
        guard samplingSteps >= 1 else {
            throw TextCraftorError.invalidSetting(key: "sampling_steps", message: "expected an integer >= 1, found \(samplingSteps)")
        }
        guard gradientWindow >= 1, gradientWindow <= samplingSteps else {
            throw TextCraftorError.invalidSetting(
                key: "grad_window", message: "expected an integer between 1 and sampling_steps (\(samplingSteps)), found \(gradientWindow)")
        }
        guard guidanceScale >= 0 else {
            throw TextCraftorError.invalidSetting(key: "guidance", message: "expected a number >= 0, found \(guidanceScale)")
        }
    }

    /// The trainer's scheduler: DDIM on the model's noise schedule, trailing spacing, no sample clipping.
    public func makeScheduler(_ pipeline: StableDiffusionPipeline) throws -> any Scheduler {
        var config = pipeline.schedulerConfig.converted(to: "DDIMScheduler")
        config.timestepSpacing = "trailing"
        config.clipSample = false
        let scheduler = try StableDiffusion.makeScheduler(config: config, configFile: pipeline.schedulerConfigFile)
        try scheduler.prepareSampling(steps: samplingSteps)
        return scheduler
    }
}

/// How the gradient reaches the text encoder through the sampling window.
public enum GradientMode: Sendable {
    /// ARCHITECTURE.md's design: the window runs forward without a graph, keeping its latents; then each step is
    /// recomputed with a graph, one at a time from the last, and a vector-Jacobian product passes the gradient on.
    /// Exact, with the memory of one UNet step whatever the window.
    case windowed
    /// Plain backpropagation through the whole window (the graph of every step held at once): the reference.
    case fullBackprop
}

/// What one training step measured.
public struct StepOutcome {
    public let loss: Double
    /// Each reward's mean over the batch, by name.
    public let rewards: [(name: String, mean: Double)]
    /// The decoded images [B, 3, H, W] in [0, 1] (detached).
    public let images: Tensor
}

/// The text encoders that condition a pipeline's UNet: SD 1.x/2.x's one, SDXL's two (`second`: `text_encoder_2`,
/// whose projected pooled output is the UNet's `text_embeds`). A step is given two such sets, the trainable one and
/// the frozen originals; an encoder that is not trained is simply the same object in both.
public struct TextEncoders {
    public let first: CLIPTextModel
    /// SDXL's second encoder; nil: the pipeline's own (so an SD set is an SDXL set whose second encoder is frozen).
    public let second: CLIPTextModelWithProjection?

    public init(_ first: CLIPTextModel, _ second: CLIPTextModelWithProjection? = nil) {
        self.first = first
        self.second = second
    }

    /// The pipeline's own encoders.
    public init(of pipeline: StableDiffusionPipeline) { self.init(pipeline.textEncoder, pipeline.textEncoder2) }

    /// The frozen originals of a run that trains `target`: a copy of each encoder that trains, loaded from the model
    /// in `dtype`; the pipeline's own for one that does not.
    public static func originals(
        of pipeline: StableDiffusionPipeline, model: ModelSource, training target: TrainedNetwork, dtype: DType, device: Device
    ) throws -> TextEncoders {
        func weights(_ name: String) throws -> (any WeightSource, URL) { try model.weights(name) }
        var original = TextEncoders(of: pipeline)
        if target.trainsFirstEncoder {
            let (source, configFile) = try weights("text_encoder")
            original = TextEncoders(try CLIPTextModel.load(source, configFile: configFile, dtype: dtype, device: device), original.second)
        }
        if target.trainsSecondEncoder {
            let (source, configFile) = try weights("text_encoder_2")
            original = TextEncoders(
                original.first, try CLIPTextModelWithProjection.load(source, configFile: configFile, dtype: dtype, device: device))
        }
        return original
    }
}

/// The conditioning of one training step's guidance batch, built as the pipeline builds it at inference
/// (`StableDiffusionPipeline.generate` with no negative prompt), so that training optimises what generation uses:
///
/// - the unconditional rows first: SD 1.x/2.x's encoder of "" (trainable, it gets gradient too, as the authors');
///   SDXL's zeros where the model sets `force_zeros_for_empty_prompt` (constant: no gradient), else both encoders
///   of "";
/// - SDXL's time ids are constant: original size = target size = the training resolution, crop (0, 0), diffusers'
///   defaults, for every row.
struct StepConditioning {
    let pipeline: StableDiffusionPipeline
    let tokens: PromptTokens
    let sizes: SizeConditioning?
    /// SDXL with `force_zeros_for_empty_prompt` under guidance: the unconditional rows are zeros, not encoded.
    let zeroUnconditional: Bool

    /// `guided`: classifier-free guidance (scale above 1) adds the unconditional rows. `height`, `width`: the image's
    /// size in pixels (SDXL's time ids).
    init(pipeline: StableDiffusionPipeline, prompts: [String], guided: Bool, height: Int, width: Int) {
        self.pipeline = pipeline
        let isXL = pipeline.architecture == .sdxl
        zeroUnconditional = guided && isXL && pipeline.forceZerosForEmptyPrompt
        let encodesEmpty = guided && !zeroUnconditional
        tokens = pipeline.promptTokens(encodesEmpty ? Array(repeating: "", count: prompts.count) + prompts : prompts)
        sizes = isXL ? SizeConditioning(height: height, width: width) : nil
    }

    /// The batch's conditioning through `encoders` (differentiable: `pipeline.encode`).
    func encode(_ encoders: TextEncoders) -> Conditioning {
        let encoded = pipeline.encode(tokens, textEncoder: encoders.first, textEncoder2: encoders.second, sizes: sizes)
        return zeroUnconditional ? Conditioning.cat([encoded.zeroingText(), encoded]) : encoded
    }
}

/// One prompt-based TextCraftor forward and backward: samples images for `prompts` from `initialNoise`, scores them,
/// and accumulates d(loss)/d(parameters) into the trainable text encoders' `.grad` (loss = −mean Σ γ·scale·R). Only
/// parameters that require grad receive one: on SDXL, freezing one of `trainable`'s encoders trains the other alone.
///
/// `trainsTextEncoder` false is the UNet stage: `trainable` are then frozen encoders (the fine-tuned ones) whose
/// conditioning is used in the window, and the gradient accumulates into the UNet's parameters instead.
public func promptTrainingStep(
    pipeline: StableDiffusionPipeline, trainable: TextEncoders, original: TextEncoders, rewards: WeightedReward,
    prompts: [String], initialNoise: Tensor, settings: SamplingSettings, mode: GradientMode = .windowed,
    lossScale: Double = 1, trainsTextEncoder: Bool = true, rewardPrompts: [String]? = nil
) throws -> StepOutcome {
    try settings.validate()
    let scheduler = try settings.makeScheduler(pipeline)
    let timesteps = scheduler.timesteps
    let windowStart = timesteps.count - min(settings.gradientWindow, timesteps.count)
    // Guidance above 1 conditions on the unconditional rows too (first, as diffusers' CFG batch); at 1 or less the
    // pipeline runs the prompts alone, and so does the step.
    let conditioning = StepConditioning(
        pipeline: pipeline, prompts: prompts, guided: settings.guidanceScale > 1,
        height: initialNoise.size(2) * pipeline.vaeScaleFactor, width: initialNoise.size(3) * pipeline.vaeScaleFactor)
    func encode(_ encoders: TextEncoders) -> Conditioning { conditioning.encode(encoders) }

    func denoise(_ z: Tensor, _ i: Int, _ conditioning: Conditioning) -> Tensor {
        pipeline.denoise(z, timestep: timesteps[i], conditioning: conditioning, guidanceScale: settings.guidanceScale,
                         scheduler: scheduler, generator: nil)
    }

    // Outside the window: the frozen original encoders, no graph.
    var z = withNoGrad { (initialNoise * scheduler.initNoiseSigma).to(dtype: initialNoise.dtype, device: pipeline.device) }
    let originalContext = withNoGrad { encode(original) }
    for i in 0..<windowStart { z = withNoGrad { denoise(z, i, originalContext) } }

    /// Decodes, scores and returns the loss (with its graph back to `latents`) and the outcome.
    func lossOf(_ latents: Tensor) throws -> (Tensor, StepOutcome) {
        try scoreDecoded(pipeline.decode(latents))
    }

    /// Scores images in [-1, 1] and returns the loss (with its graph back to them) and the outcome.
    func scoreDecoded(_ decoded: Tensor) throws -> (Tensor, StepOutcome) {
        let images = (decoded / 2 + 0.5).clamp(min: 0, max: 1)
        let (total, terms) = try rewards.evaluate(images.to(.float32), prompts: rewardPrompts ?? prompts)
        let loss = -total.mean() * lossScale
        let outcome = StepOutcome(
            loss: loss.item() / lossScale, rewards: terms.map { ($0.name, $0.scores.mean().item()) } + rewards.contributionMetrics,
            images: images.detach())
        return (loss, outcome)
    }

    switch mode {
    case .fullBackprop:
        let context = trainsTextEncoder ? encode(trainable) : withNoGrad { encode(trainable) }
        for i in windowStart..<timesteps.count { z = denoise(z, i, context) }
        let (loss, outcome) = try lossOf(z)
        loss.backward()
        return outcome

    case .windowed:
        // 1. The window forward without a graph, keeping the latent entering each step and the guided noise it
        //    stepped with (a latent's size each).
        let context = withNoGrad { encode(trainable) }
        var entering: [Tensor] = [], noises: [Tensor] = []
        for i in windowStart..<timesteps.count {
            entering.append(z)
            let noise = withNoGrad {
                pipeline.guidedNoise(z, timestep: timesteps[i], conditioning: context, guidanceScale: settings.guidanceScale,
                                     scheduler: scheduler)
            }
            noises.append(noise)
            z = withNoGrad { scheduler.step(modelOutput: noise, timestep: timesteps[i], sample: z, generator: nil, eta: 0) }
        }
        // 2. d(loss)/d(final latents) through the VAE and the rewards (the decoder checkpointed piece by piece).
        var latentGradient: Tensor
        let outcome: StepOutcome
        if settings.checkpointsVAE {
            // The map from latents to the decoder's input (unscaling; SDXL's per-channel latents_mean/std) is
            // differentiated with autograd, the decoder piece by piece.
            let final = z.detach().requiringGrad()
            let input = pipeline.decoderInput(final)
            var decoder = CheckpointedChain(pipeline.vae.decodeStages(latentType: z.dtype))
            let decoded = withNoGrad { decoder.forward(input.detach()) }.requiringGrad()
            let (loss, scored) = try scoreDecoded(decoded)
            outcome = scored
            latentGradient = Autograd.grad(
                outputs: [input], inputs: [final], gradOutputs: [decoder.backward(Autograd.grad(outputs: [loss], inputs: [decoded])[0]!)])[0]!
        } else {
            let final = z.detach().requiringGrad()
            let (loss, scored) = try lossOf(final)
            outcome = scored
            latentGradient = Autograd.grad(outputs: [loss], inputs: [final])[0]!
        }
        // 3. Back through the window one step at a time: recompute the step with a graph and backpropagate the
        //    incoming gradient through it (a vector-Jacobian product). The latent's part goes on to the step before;
        //    the conditioning's part (hidden states, and SDXL's pooled embeddings) is summed (text-encoder stage), or the
        //    UNet's parameters accumulate theirs (UNet stage). The scheduler's step is differentiated at the noise
        //    step 1 kept; the guided noise uncond + g (cond - uncond) then splits its gradient into (1 - g) for the
        //    unconditional half and g for the conditional one, and each half's UNet call is recomputed and
        //    backpropagated on its own, so that the graph alive is that of one UNet call on the prompts' batch, half
        //    of the guidance batch's.
        let contextGradient = context.zeroGradients()
        let guidance = settings.guidanceScale
        for (k, i) in (windowStart..<timesteps.count).enumerated().reversed() {
            let zIn = entering[k].detach().requiringGrad()
            let noise = noises[k].detach().requiringGrad()
            scheduler.step(modelOutput: noise, timestep: timesteps[i], sample: zIn, generator: nil, eta: 0)
                .backward(gradient: latentGradient)
            var zGradient = zIn.grad!
            let noiseGradient = noise.grad!
            let c = trainsTextEncoder ? context.requiringGrad() : context
            let calls: [(Conditioning, Tensor)]
            if guidance > 1 {
                let (unconditional, conditional) = c.halves()
                calls = [(unconditional, noiseGradient * (1 - guidance)), (conditional, noiseGradient * guidance)]
            } else {
                calls = [(c, noiseGradient)]
            }
            for (conditioning, gradient) in calls {
                let zCall = entering[k].detach().requiringGrad()
                pipeline.noise(zCall, timestep: timesteps[i], conditioning: conditioning, scheduler: scheduler)
                    .backward(gradient: gradient)
                zGradient = zGradient + zCall.grad!
            }
            latentGradient = zGradient
            if trainsTextEncoder { contextGradient.accumulate(c.gradients) }
        }
        // 4. The summed conditioning gradient through the text encoders, once, from both tensors at once.
        if trainsTextEncoder { encode(trainable).backward(gradient: contextGradient) }
        return outcome
    }
}

/// `promptTrainingStep` with one text encoder (SD 1.x/2.x's; on SDXL the first, the second staying the pipeline's).
public func promptTrainingStep(
    pipeline: StableDiffusionPipeline, trainable: CLIPTextModel, original: CLIPTextModel, rewards: WeightedReward,
    prompts: [String], initialNoise: Tensor, settings: SamplingSettings, mode: GradientMode = .windowed,
    lossScale: Double = 1, trainsTextEncoder: Bool = true
) throws -> StepOutcome {
    try promptTrainingStep(
        pipeline: pipeline, trainable: TextEncoders(trainable), original: TextEncoders(original), rewards: rewards,
        prompts: prompts, initialNoise: initialNoise, settings: settings, mode: mode, lossScale: lossScale,
        trainsTextEncoder: trainsTextEncoder)
}

/// Gradient checkpointing of a chain of pieces: `forward` runs them (without a graph, under `withNoGrad`) keeping
/// each piece's input; `backward`, given d(loss)/d(output), recomputes each piece with a graph from its input, one at
/// a time from the last, and passes the gradient on, returning d(loss)/d(input). The same ops give the same gradient
/// as backpropagating through the whole chain, with the activations of one piece alive at a time.
struct CheckpointedChain {
    let stages: [(Tensor) -> Tensor]
    private(set) var inputs: [Tensor] = []

    init(_ stages: [(Tensor) -> Tensor]) { self.stages = stages }

    mutating func forward(_ input: Tensor) -> Tensor {
        inputs = []
        return stages.reduce(input) { x, stage in
            inputs.append(x)
            return stage(x)
        }
    }

    func backward(_ outputGradient: Tensor) -> Tensor {
        var gradient = outputGradient
        for (stage, input) in zip(stages, inputs).reversed() {
            let x = input.detach().requiringGrad()
            stage(x).backward(gradient: gradient)
            gradient = x.grad!
        }
        return gradient
    }
}

/// One direct fine-tuning step (METHOD.md's baseline): encode the images, noise them at t ~ U[tRange], predict the
/// noise conditioned on the captions (no guidance), take the one-step estimate x̂0 = (z_t − √(1−ᾱ)·ε̂)/√ᾱ, decode
/// and score it against the captions. Random draws, in order: the noise, the timesteps, the VAE's latent sample.
///
/// The captions condition the UNet through `textEncoders` as at inference (`pipeline.encode`): on SDXL both encoders'
/// penultimate states, the pooled embeddings of the second, and constant time ids (original = target = the images'
/// size, crop (0, 0)). Gradient reaches the encoder parameters that require it; none when `trainsTextEncoder` is false
/// (the UNet stage, where the UNet's parameters take it).
public func directTrainingStep(
    pipeline: StableDiffusionPipeline, textEncoders: TextEncoders, rewards: WeightedReward, images: Tensor,
    captions: [String], rewardCaptions: [String]? = nil, timestepRange: ClosedRange<Int>, generator: Generator, lossScale: Double = 1,
    trainsTextEncoder: Bool = true
) throws -> StepOutcome {
    let scheduler = try StableDiffusion.makeScheduler(config: pipeline.schedulerConfig, configFile: pipeline.schedulerConfigFile)
    let factor = pipeline.vae.config.scaling_factor
    let b = images.size(0)
    let latentShape = [b, pipeline.unet.config.in_channels, images.size(2) / pipeline.vaeScaleFactor, images.size(3) / pipeline.vaeScaleFactor]
    let device = images.device  // the draws come from the CPU generator, as every run's, then move
    let noise = Tensor.randn(latentShape, generator: generator).to(device)
    let steps = Tensor.randint(timestepRange.lowerBound, timestepRange.upperBound + 1, [b], generator: generator).toArray(Int64.self)
    let timesteps = steps.map(Double.init)
    let z0 = withNoGrad { pipeline.vae.encode(images * 2 - 1).sample(generator: generator) * factor }
    // DDPM's noising (diffusers' training scripts use DDPMScheduler.add_noise), which the x̂0 estimate below inverts,
    // whatever sampler the folder names: SDXL's Euler noises by σ, and only at its sampling timesteps.
    let zt = scheduler.noiseSchedule.addNoise(original: z0, noise: noise, timesteps: timesteps)
    let alphaBar = Tensor(steps.map { Float(scheduler.noiseSchedule.alphasCumprod[Int($0)]) }, shape: [b, 1, 1, 1]).to(device)
    let conditioning = StepConditioning(pipeline: pipeline, prompts: captions, guided: false, height: images.size(2), width: images.size(3))
    let context = trainsTextEncoder ? conditioning.encode(textEncoders) : withNoGrad { conditioning.encode(textEncoders) }
    let epsilon = pipeline.unet(zt, timestep: Tensor(timesteps.map(Float.init)).to(device), conditioning: context)
    let x0 = (zt - (1 - alphaBar).sqrt() * epsilon) / alphaBar.sqrt()
    let decoded = (pipeline.decode(x0).to(.float32) / 2 + 0.5).clamp(min: 0, max: 1)
    let (total, terms) = try rewards.evaluate(decoded, prompts: rewardCaptions ?? captions)
    let loss = -total.mean() * lossScale
    loss.backward()
    return StepOutcome(loss: loss.item() / lossScale, rewards: terms.map { ($0.name, $0.scores.mean().item()) } + rewards.contributionMetrics,
                       images: decoded.detach())
}

