import ArgumentParser
import Foundation
import StableDiffusion
import Torch

/// Sampling speed: one UNet forward and whole pipelines, against the same in Python diffusers (scripts/bench/sd.py).
struct BenchSD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Time sampling (images per second, UNet forward, TFLOP/s) against diffusers' StableDiffusion(XL)Pipeline.",
        discussion: """
            Best of --repeats after a warm-up, without gradients, the same thread count, device and dtype on both \
            sides. The pipeline samples --batch prompts with guidance 7.5 (a guided batch of 2 x --batch through the \
            UNet) and decodes them. TFLOP/s is the analytic count of one pipeline run's products over its time. \
            An SDXL folder runs both text encoders and the UNet's added conditioning (random pooled embeddings, the \
            size conditioning of --size) on both sides. `bench sd` is the old name.

            The paper's setting on real shapes (models from `textcraftor synth-model --preset sd15`): --size 512 \
            --steps 25 --batch 4 --device cuda --dtype float16.
            """,
        aliases: ["sd"])

    @Option(help: "A diffusers model folder or a single file (default: the ShapesWorld bundle).", completion: .file())
    var model: String?
    @Option(help: "Image size in pixels.") var size = 64
    @Option(help: "Denoising steps of the pipeline.") var steps = 10
    @Option(help: "Prompts per pipeline run.") var batch = 2
    @Option(help: "Repeats; the best is kept.") var repeats = 3
    @OptionGroup var deviceOptions: DeviceOptions
    @OptionGroup var dtypeOptions: DTypeOptions
    @Option(help: "Python with torch and diffusers for the reference run.")
    var python = ProcessInfo.processInfo.environment["TEXTCRAFTOR_PYTHON"] ?? "python3"
    @Option(help: "The reference script.") var script = "scripts/bench/sd.py"

    func run() throws {
        let bench = try BenchModel(self.model ?? shapesBundle(nil).path)
        defer { bench.cleanUp() }
        let model = bench.referenceFolder
        guard batch >= 1, steps >= 1, repeats >= 1 else { throw CommandError("--batch, --steps and --repeats must be at least 1") }
        let (type, device) = (dtypeOptions.dtype.dtype, try speakingFlags { try deviceOptions.opened() })
        // Ours in a scope of its own, its models freed before the reference loads (as bench train).
        func measureOurs() throws -> (numbers: [String: Double], runFLOP: Double) {
            let pipeline = try bench.source.load(dtype: type, device: device)
            let g = Generator(seed: 0)
            let latent = size / pipeline.vaeScaleFactor
            let sample = Tensor.randn([2 * batch, pipeline.unet.config.in_channels, latent, latent], generator: g).to(dtype: type, device: device)
            let width = pipeline.unet.config.cross_attention_dim.values(count: 1)[0]
            var conditioning = Conditioning(hiddenStates: Tensor.randn([2 * batch, 77, width], generator: g))
            if let second = pipeline.textEncoder2 {  // SDXL: what its UNet adds to the time embedding
                conditioning.textEmbeds = Tensor.randn([2 * batch, second.config.projection_dim ?? width], generator: g)
                conditioning.timeIds = SizeConditioning(height: size, width: size).timeIds(batch: 2 * batch)
            }
            conditioning = conditioning.to(dtype: type, device: device)
            let t = Tensor(Array(repeating: Float(500), count: 2 * batch)).to(device)
            let prompts = ["a red circle", "a blue square", "a green triangle", "two yellow stars"]
            var request = GenerationRequest(prompts: (0..<batch).map { prompts[$0 % prompts.count] })
            request.steps = steps
            request.height = size
            request.width = size
            func best(_ body: () throws -> Void) rethrows -> Double {
                try body()
                var times: [Double] = []
                for _ in 0..<repeats {
                    let start = DispatchTime.now().uptimeNanoseconds
                    try body()
                    Torch.synchronize(device)
                    times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                }
                return times.min()!
            }
            let (_, flops) = try withNoGrad { try FLOPCounter.counting { try pipeline.generate(request) } }
            let ours: [String: Double] = try withNoGrad {
                let unet = best { _ = pipeline.unet(sample, timestep: t, conditioning: conditioning) }
                let run = try best { _ = try pipeline.generate(request) }
                var ours = ["unet_ms": unet * 1e3, "pipeline_s": run, "images_per_s": Double(batch) / run,
                            "tflops": flops.total / run / 1e12]
                if case .cuda = device { ours["peak_cuda_mb"] = Double(try Torch.cudaMemory(device).peakAllocated) / 1_048_576 }
                return ours
            }
            return (ours, flops.total)
        }
        let (ours, runFLOP) = try measureOurs()
        releaseFreedMemory()
        var (reference, failure) = runPythonReference(python: python, script: script, arguments: [
            "--model", model, "--size", "\(size)", "--steps", "\(steps)", "--repeats", "\(repeats)", "--batch", "\(batch)",
            "--threads", "\(Torch.threadCount)", "--device", "\(device)", "--dtype", "\(type)",
        ])
        if let seconds = reference?["pipeline_s"] { reference?["tflops"] = runFLOP / seconds / 1e12 }
        printComparison(
            "Stable Diffusion sampling: \(model), \(size)x\(size), \(steps) steps, batch \(batch), \(type), \(device), "
                + "\(Torch.threadCount) thread(s), best of \(repeats); \(String(format: "%.4g", runFLOP / 1e12)) TFLOP per run",
            measures: [
                ("images_per_s", "images per second", "", true),
                ("pipeline_s", "pipeline, \(batch) prompt(s), \(steps) steps", "s", false),
                ("unet_ms", "UNet forward, batch \(2 * batch)", "ms", false),
                ("tflops", "achieved TFLOP/s", "", true),
            ] + (ours["peak_cuda_mb"] == nil ? [] : [("peak_cuda_mb", "peak CUDA memory (allocated)", "MB", false)]),
            ours: ours, reference: reference, failure: failure)
    }
}
