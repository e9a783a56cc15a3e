import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// The sampling side of prompt-based TextCraftor (METHOD.md): a DDIM sampler with eta 0 and trailing timesteps
/// (999, 959, ..., 39 for 25 steps, the authors' "lead=999" spacing) whose last `gradientWindow` steps use the
/// trainable encoder's embeddings, for both the conditional and the unconditional ("") halves.
public struct SamplingSettings: Sendable, Equatable {
    public var samplingSteps = 25
    public var gradientWindow = 5
    public var guidanceScale = 7.5

    public init(samplingSteps: Int = 25, gradientWindow: Int = 5, guidanceScale: Double = 7.5) {
        self.samplingSteps = samplingSteps
        self.gradientWindow = gradientWindow
        self.guidanceScale = guidanceScale
    }

    public func validate() throws {
        guard samplingSteps >= 1 else {
            throw TextCraftorError.invalidArgument("--sampling-steps must be at least 1 (got \(samplingSteps))")
        }
        guard gradientWindow >= 1, gradientWindow <= samplingSteps else {
            throw TextCraftorError.invalidArgument(
                "--grad-window must be between 1 and --sampling-steps (\(samplingSteps)); got \(gradientWindow)")
        }
        guard guidanceScale >= 0 else { throw TextCraftorError.invalidArgument("--guidance must not be negative (got \(guidanceScale))") }
    }

    /// The trainer's scheduler: DDIM on the model's noise schedule, trailing spacing, no sample clipping.
    public func makeScheduler(_ pipeline: StableDiffusionPipeline) throws -> any Scheduler {
        var config = pipeline.schedulerConfig.converted(to: "DDIMScheduler")
        config.timestepSpacing = "trailing"
        config.clipSample = false
        let scheduler = try StableDiffusion.makeScheduler(config: config, configFile: pipeline.schedulerConfigFile)
        try scheduler.setTimesteps(samplingSteps)
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

/// One prompt-based TextCraftor forward and backward: samples images for `prompts` from `initialNoise`, scores them,
/// and accumulates d(loss)/d(parameters) into the trainable text encoder's `.grad` (loss = −mean Σ γ·scale·R).
public func promptTrainingStep(
    pipeline: StableDiffusionPipeline, trainable: CLIPTextModel, original: CLIPTextModel, rewards: WeightedReward,
    prompts: [String], initialNoise: Tensor, settings: SamplingSettings, mode: GradientMode = .windowed,
    lossScale: Double = 1
) throws -> StepOutcome {
    try settings.validate()
    let scheduler = try settings.makeScheduler(pipeline)
    let timesteps = scheduler.timesteps
    let windowStart = timesteps.count - min(settings.gradientWindow, timesteps.count)
    let (ids, _) = pipeline.tokenize(Array(repeating: "", count: prompts.count) + prompts)  // uncond first, as CFG

    func denoise(_ z: Tensor, _ i: Int, _ context: Tensor) -> Tensor {
        pipeline.denoise(z, timestep: timesteps[i], context: context, guidanceScale: settings.guidanceScale,
                         scheduler: scheduler, generator: nil)
    }

    // Outside the window: the frozen original encoder, no graph.
    var z = withNoGrad { (initialNoise * scheduler.initNoiseSigma).to(dtype: initialNoise.dtype, device: pipeline.device) }
    let originalContext = withNoGrad { original(ids).lastHiddenState }
    for i in 0..<windowStart { z = withNoGrad { denoise(z, i, originalContext) } }

    /// Decodes, scores and returns the loss (with its graph back to `latents`) and the outcome.
    func lossOf(_ latents: Tensor) throws -> (Tensor, StepOutcome) {
        let images = (pipeline.decode(latents) / 2 + 0.5).clamp(min: 0, max: 1)
        let (total, terms) = try rewards.evaluate(images.to(.float32), prompts: prompts)
        let loss = -total.mean() * lossScale
        let outcome = StepOutcome(
            loss: loss.item() / lossScale, rewards: terms.map { ($0.name, $0.scores.mean().item()) }, images: images.detach())
        return (loss, outcome)
    }

    switch mode {
    case .fullBackprop:
        let context = trainable(ids).lastHiddenState
        for i in windowStart..<timesteps.count { z = denoise(z, i, context) }
        let (loss, outcome) = try lossOf(z)
        loss.backward()
        return outcome

    case .windowed:
        // 1. The window forward without a graph, keeping the latent entering each step.
        let context = withNoGrad { trainable(ids).lastHiddenState }
        var entering: [Tensor] = []
        for i in windowStart..<timesteps.count {
            entering.append(z)
            z = withNoGrad { denoise(z, i, context) }
        }
        // 2. d(loss)/d(final latents) through the VAE and the rewards.
        let final = z.detach().requiringGrad()
        let (loss, outcome) = try lossOf(final)
        var latentGradient = Autograd.grad(outputs: [loss], inputs: [final])[0]!
        // 3. Back through the window one step at a time: recompute the step with a graph, take the vector-Jacobian
        //    product with the incoming gradient, keep the context's part and pass the latent's part on.
        let contextGradient = context.zerosLike()
        for (k, i) in (windowStart..<timesteps.count).enumerated().reversed() {
            let zIn = entering[k].detach().requiringGrad()
            let c = context.detach().requiringGrad()
            let zOut = denoise(zIn, i, c)
            let grads = Autograd.grad(outputs: [zOut], inputs: [zIn, c], gradOutputs: [latentGradient])
            latentGradient = grads[0]!
            contextGradient += grads[1]!
        }
        // 4. The summed embedding gradient through the text encoder, once.
        trainable(ids).lastHiddenState.backward(gradient: contextGradient)
        return outcome
    }
}
