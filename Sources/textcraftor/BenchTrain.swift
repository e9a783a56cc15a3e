import ArgumentParser
import Foundation
import NN
import Rewards
import StableDiffusion
import TextCraftor
import Torch

/// One prompt-based training step, timed, with the process's peak resident memory, beside the PyTorch reference
/// (scripts/bench/train_step.py: the authors' per-UNet-call gradient checkpointing).
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Time one TextCraftor training step and report peak memory, against the PyTorch reference.",
        discussion: """
            The step: B prompts, DDIM with --steps steps, the last --window with gradient, guidance 7.5, decode, an \
            aesthetic reward on a CLIP, AdamW. Peak memory is the process's maximum resident set (VmHWM), so each \
            configuration should run in its own process. --json prints one JSON object (for scripts and tests).
            """)

    @Option(help: "A diffusers model folder.") var model = "Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15"
    @Option(help: "A transformers CLIP folder for the aesthetic reward.") var clip = "Tests/RewardsTests/Fixtures/hf/clip"
    @Option(help: "The aesthetic head.") var aesthetic = "Tests/RewardsTests/Fixtures/hf/aesthetic.pth"
    @Option(help: "Prompts per step.") var batch = 2
    @Option(help: "Sampling steps.") var steps = 5
    @Option(help: "Steps with gradient.") var window = 5
    @Option(help: "Image size in pixels.") var size = 64
    @Option(help: "Timed steps; the best is kept.") var repeats = 3
    @Option(help: "windowed (ours) or full (plain backprop through the window, for comparison).") var gradient = "windowed"
    @Option(help: "cpu, cuda or cuda:N.") var device = "cpu"
    @Option(help: "no, bf16 or fp16: the frozen models in that type, the text encoder in float32 (as `train`).")
    var mixedPrecision = "no"
    @Flag(help: "Print one JSON object with our numbers only.") var json = false
    @Option(help: "Python with torch, diffusers and transformers for the reference run.")
    var python = ProcessInfo.processInfo.environment["TEXTCRAFTOR_PYTHON"] ?? "python3"
    @Option(help: "The reference script.") var script = "scripts/bench/train_step.py"

    func run() throws {
        guard let mode: GradientMode = ["windowed": .windowed, "full": .fullBackprop][gradient] else {
            throw CommandError("--gradient \(gradient): expected windowed or full")
        }
        let precision = try MixedPrecision(flag: mixedPrecision)
        let device = try ModelOptions.device(device)
        if case .cuda = device { Torch.setTF32(true) }
        let pipeline = try precision.loadPipeline(folder: URL(fileURLWithPath: model), device: device, training: .text)
        let folder = URL(fileURLWithPath: model).appendingPathComponent("text_encoder")
        let original = try CLIPTextModel.load(
            try componentWeights(in: folder, baseName: "model", binBaseName: "pytorch_model"),
            configFile: folder.appendingPathComponent("config.json"), dtype: precision.frozenDType, device: device)
        let rewards = WeightedReward()
        rewards.add(try AestheticReward(clipFolder: URL(fileURLWithPath: clip), weights: URL(fileURLWithPath: aesthetic),
                                        dtype: precision.frozenDType, device: device))
        pipeline.textEncoder.setTrainable(true)
        let optimizer = AdamW(parameters: pipeline.textEncoder.trainableParameters, learningRate: 1e-6)
        let settings = SamplingSettings(samplingSteps: steps, gradientWindow: window)
        let prompts = Array(["a red circle on a blue background", "two small squares, photo"].prefix(batch))
            + Array(repeating: "a green triangle", count: max(0, batch - 2))
        let generator = Generator(seed: 0)
        let latent = size / pipeline.vaeScaleFactor
        var times: [Double] = []
        for _ in 0...repeats {  // the first is a warm-up
            let start = DispatchTime.now().uptimeNanoseconds
            _ = try promptTrainingStep(
                pipeline: pipeline, trainable: pipeline.textEncoder, original: original, rewards: rewards, prompts: prompts,
                initialNoise: Tensor.randn([batch, pipeline.unet.config.in_channels, latent, latent], generator: generator),
                settings: settings, mode: mode)
            optimizer.step()
            optimizer.zeroGrad()
            Torch.synchronize(device)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        let ours = ["train_step_s": times.dropFirst().min()!, "peak_rss_mb": peakResidentMemoryMB()]
        if json {
            let data = try JSONSerialization.data(withJSONObject: ours, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        var reference = runPythonReference(python: python, script: script, arguments: [
            "--model", model, "--clip", clip, "--aesthetic", aesthetic, "--batch", "\(batch)", "--steps", "\(steps)",
            "--window", "\(window)", "--size", "\(size)", "--repeats", "\(repeats)", "--threads", "\(Torch.threadCount)",
        ])
        if let kb = reference?["peak_rss_kb"] { reference?["peak_rss_mb"] = kb / 1024 }
        printComparison(
            "TextCraftor training step: \(model), batch \(batch), \(steps) steps, window \(window), \(size)x\(size), "
                + "\(gradient) gradient, \(Torch.threadCount) thread(s), best of \(repeats)",
            measures: [
                ("train_step_s", "one training step", "s", false),
                ("peak_rss_mb", "peak resident memory", "MB", false),
            ], ours: ours, reference: reference, python: python)
    }
}
