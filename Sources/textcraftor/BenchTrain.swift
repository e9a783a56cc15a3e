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
            The step: B prompts, DDIM with --steps steps, the last --window with gradient, guidance, decode, the \
            aesthetic and CLIP-score rewards on one CLIP (and PickScore, HPSv2, HPSv2.1, ImageReward and Aesthetic \
            Predictor v2.5 when given, each with its default scale), AdamW. Peak memory is \
            the process's maximum resident set (VmHWM), so each configuration should run in its own process. TFLOP/s \
            is an analytic count of the step's products (linear, conv, attention; the backward pass estimated from \
            the operands that need gradients) over its time. --json prints one JSON object (for scripts and tests).

            An SDXL folder conditions as SDXL's pipeline (both encoders, the pooled projection and time ids, zeros \
            for the unconditional half) and trains the encoders --train names; its reference is the SDXL step of \
            scripts/parity/make_sdxl_trainer_fixtures.py, with the same checkpointing and precision choices.

            The paper's setting on real shapes (models from `textcraftor synth-model`): --size 512 --steps 25 \
            --window 5 --batch 1 (and 4) --pickscore P --hpsv2 H, on --device cuda. Ours in bf16 against the \
            authors' float32: --mixed-precision bf16 --reference-precision fp32.
            """)

    @Option(help: "A diffusers model folder or a single file (default: the ShapesWorld bundle).") var model: String?
    @Option(help: "A transformers CLIP folder for the aesthetic reward (default: the bundle's rewards/clip).") var clip: String?
    @Option(help: "The aesthetic head (default: the bundle's rewards/aesthetic.safetensors).") var aesthetic: String?
    @Option(help: "Prompts per step.") var batch = 2
    @Option(help: "Sampling steps.") var steps = 5
    @Option(help: "Steps with gradient.") var window = 5
    @Option(help: "Image size in pixels.") var size = 64
    @Option(help: "Classifier-free guidance.") var guidance = 7.5
    @Option(help: "A PickScore folder (transformers CLIPModel): adds its reward.") var pickscore: String?
    @Option(help: "An HPSv2 checkpoint (open_clip ViT-H-14): adds its reward.") var hpsv2: String?
    @Option(name: .customLong("hpsv2.1"), help: ArgumentHelp(
        "An HPSv2.1 checkpoint (HPS_v2.1_compressed.pt; the same model and loader as HPSv2): adds its reward, named hpsv2.1 (scale 100).",
        valueName: "FILE"))
    var hpsv21: String?
    @Option(help: ArgumentHelp(
        "ImageReward.pt (or its safetensors copy) with med_config.json beside it, and optionally bert-base-uncased's vocab.txt (else beside it): adds its reward (scale 1).",
        valueName: "CKPT[,VOCAB]"))
    var imagereward: String?
    @Option(help: ArgumentHelp(
        "A SigLIP folder (transformers, google/siglip-so400m-patch14-384's layout) and the Aesthetic Predictor v2.5 head (.pth or .safetensors): adds its reward (scale 3).",
        valueName: "SIGLIP_DIR,HEAD"))
    var aesthetic25: String?
    @Option(help: "Timed steps; the best is kept.") var repeats = 3
    @Option(help: "text-encoder, text-encoder-2 or text-encoders: the encoders that train (the last two: SDXL).")
    var train = TrainedNetwork.textEncoder
    @Option(help: "windowed (ours) or full (plain backprop through the window, for comparison).") var gradient = "windowed"
    @OptionGroup var deviceOptions: DeviceOptions
    @Option(help: "no, bf16 or fp16: the frozen models in that type, the text encoder in float32 (as `train`).")
    var mixedPrecision = MixedPrecision.no
    @Option(help: ArgumentHelp(
        "fp32 or bf16: the reference's precision (default: bf16 with --mixed-precision bf16, else fp32).",
        discussion: "fp32 is the authors' setting, the one the speed and memory targets are stated against."))
    var referencePrecision: String?
    @Flag(name: .customLong("no-vae-checkpoint"), help: "Keep the VAE decoder's whole graph instead of recomputing it piece by piece (windowed gradient).")
    var noVAECheckpoint = false
    @Flag(help: "Print one JSON object with our numbers only.") var json = false
    @Option(help: "Python with torch, diffusers and transformers for the reference run.")
    var python = ProcessInfo.processInfo.environment["TEXTCRAFTOR_PYTHON"] ?? "python3"
    @Option(help: "The reference script.") var script = "scripts/bench/train_step.py"

    func run() throws {
        let bundle = model == nil || clip == nil || aesthetic == nil ? try shapesBundle(nil) : nil
        let given = self.model ?? bundle!.path
        let clip = self.clip ?? bundle!.appendingPathComponent("rewards/clip").path
        let aesthetic = self.aesthetic ?? bundle!.appendingPathComponent("rewards/aesthetic.safetensors").path
        guard let mode: GradientMode = ["windowed": .windowed, "full": .fullBackprop][gradient] else {
            throw CommandError("--gradient \(gradient): expected windowed or full")
        }
        let precision = mixedPrecision
        let referencePrecision = referencePrecision ?? (precision == .bf16 ? "bf16" : "fp32")
        guard ["fp32", "bf16"].contains(referencePrecision) else {
            throw CommandError("--reference-precision \(referencePrecision): expected fp32 or bf16")
        }
        let bench = try BenchModel(given)
        defer { bench.cleanUp() }
        let source = bench.source
        let model = bench.referenceFolder
        try speakingFlags {
            guard train.trainsTextEncoder else { throw CommandError("--train unet: bench train times the text-encoder step") }
            try train.requireSupported(by: try source.architecture, model: given)
        }
        let device = try speakingFlags { try deviceOptions.opened() }
        // Ours first, in a scope of its own: its models are freed (and the allocator's free pages returned) before
        // the reference loads its own, so that the two never share the machine's memory (SDXL's would not fit).
        func measureOurs() throws -> (numbers: [String: Double], stepFLOP: Double, rewardNames: String) {
            let pipeline = try precision.loadPipeline(source, device: device, training: train)
            let original = try TextEncoders.originals(
                of: pipeline, model: source, training: train, dtype: precision.frozenDType, device: device)
            // The reference's rewards: aesthetic and CLIP score on one CLIP, then the others given, in this order.
            let rewards = WeightedReward()
            let sharedCLIP = try CLIPModel.load(folder: URL(fileURLWithPath: clip), dtype: precision.frozenDType, device: device)
            rewards.add(try AestheticReward(embedder: sharedCLIP, weights: URL(fileURLWithPath: aesthetic),
                                            dtype: precision.frozenDType, device: device), gamma: 1, scale: 3)
            rewards.add(CLIPScoreReward(model: sharedCLIP), gamma: 0.5, scale: 100)
            func paths(_ list: String?) -> [String]? { list.map { $0.split(separator: ",").map(String.init) } }
            for (name, paths) in [("pickscore", pickscore.map { [$0] }), ("hpsv2", hpsv2.map { [$0] }), ("hpsv2.1", hpsv21.map { [$0] }),
                                  ("imagereward", paths(imagereward)), ("aesthetic25", paths(aesthetic25))] {
                guard let paths else { continue }
                rewards.add(try RewardRegistry.load(name: name, paths: paths, dtype: precision.frozenDType, device: device))
            }
            rewards.setPreprocessing(.training)
            pipeline.textEncoder.setTrainable(train.trainsFirstEncoder)
            pipeline.textEncoder2?.setTrainable(train.trainsSecondEncoder)
            let optimizer = AdamW(
                parameters: pipeline.textEncoder.trainableParameters + (pipeline.textEncoder2?.trainableParameters ?? []),
                learningRate: 1e-6)
            let settings = SamplingSettings(samplingSteps: steps, gradientWindow: window, guidanceScale: guidance,
                                            checkpointsVAE: !noVAECheckpoint)
            let prompts = Array(["a red circle on a blue background", "two small squares, photo"].prefix(batch))
                + Array(repeating: "a green triangle", count: max(0, batch - 2))
            let generator = Generator(seed: 0)
            let latent = size / pipeline.vaeScaleFactor
            func step() throws {
                _ = try promptTrainingStep(
                    pipeline: pipeline, trainable: TextEncoders(of: pipeline), original: original, rewards: rewards, prompts: prompts,
                    initialNoise: Tensor.randn([batch, pipeline.unet.config.in_channels, latent, latent], generator: generator),
                    settings: settings, mode: mode)
                optimizer.step()
                optimizer.zeroGrad()
                Torch.synchronize(device)
            }
            let (_, flops) = try FLOPCounter.counting { try step() }  // the warm-up step, counted
            var times: [Double] = []
            for _ in 0..<repeats {
                let start = DispatchTime.now().uptimeNanoseconds
                try step()
                times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            let best = times.min()!
            var ours = ["train_step_s": best, "peak_rss_mb": peakResidentMemoryMB(), "tflops": flops.total / best / 1e12,
                        "step_tflop": flops.total / 1e12]
            // As the reference's torch.cuda.max_memory_allocated: the whole run, loading included.
            if case .cuda = device { ours["peak_cuda_mb"] = Double(try Torch.cudaMemory(device).peakAllocated) / 1_048_576 }
            return (ours, flops.total, rewards.terms.map(\.reward.name).joined(separator: "+"))
        }
        let (ours, stepFLOP, rewardNames) = try measureOurs()
        releaseFreedMemory()
        if json {
            let data = try JSONSerialization.data(withJSONObject: ours, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        var (reference, failure) = runPythonReference(python: python, script: script, arguments: [
            "--model", model, "--clip", clip, "--aesthetic", aesthetic, "--batch", "\(batch)", "--steps", "\(steps)",
            "--window", "\(window)", "--size", "\(size)", "--repeats", "\(repeats)", "--threads", "\(Torch.threadCount)",
            "--guidance", "\(guidance)", "--device", "\(device)", "--precision", referencePrecision, "--train", train.rawValue,
        ] + (pickscore.map { ["--pickscore", $0] } ?? []) + (hpsv2.map { ["--hpsv2", $0] } ?? [])
            + (hpsv21.map { ["--hpsv2.1", $0] } ?? []) + (imagereward.map { ["--imagereward", $0] } ?? [])
            + (aesthetic25.map { ["--aesthetic25", $0] } ?? []))
        if let seconds = reference?["train_step_s"] { reference?["tflops"] = stepFLOP / seconds / 1e12 }  // the same work
        if let kb = reference?["peak_rss_kb"] { reference?["peak_rss_mb"] = kb / 1024 }
        printComparison(
            "TextCraftor training step: \(model), \(train.rawValue) trained, batch \(batch), \(steps) steps, window \(window), \(size)x\(size), "
                + "\(rewardNames), \(gradient) gradient\(gradient == "windowed" && !noVAECheckpoint ? " (VAE checkpointed)" : ""), mixed precision \(precision.rawValue) "
                + "(reference \(referencePrecision)), "
                + "\(device), \(Torch.threadCount) thread(s), best of \(repeats); \(String(format: "%.4g", stepFLOP / 1e12)) TFLOP per step",
            measures: [
                ("train_step_s", "one training step", "s", false),
                ("tflops", "achieved TFLOP/s", "", true),
                ("peak_rss_mb", "peak resident memory", "MB", false),
            ] + (ours["peak_cuda_mb"] == nil ? [] : [("peak_cuda_mb", "peak CUDA memory (allocated)", "MB", false)]),
            ours: ours, reference: reference, failure: failure)
        if precision == .fp16 && reference != nil { print("(the reference has no fp16 variant: it ran in \(referencePrecision))") }
    }
}
