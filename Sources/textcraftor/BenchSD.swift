import ArgumentParser
import Foundation
import StableDiffusion
import Torch

/// One UNet forward and one whole pipeline, against the same in Python diffusers (scripts/bench/sd.py).
struct BenchSD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sd",
        abstract: "Time one UNet forward (batch 2) and one full pipeline (2 prompts, guidance 7.5) against diffusers.",
        discussion: "Best of --repeats after a warm-up, without gradients, the same thread count on both sides.")

    @Option(help: "A diffusers model folder.", completion: .directory)
    var model = "Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15"
    @Option(help: "Image size in pixels.") var size = 64
    @Option(help: "Denoising steps of the pipeline.") var steps = 10
    @Option(help: "Repeats; the best is kept.") var repeats = 3
    @Option(help: "Python with torch and diffusers for the reference run.")
    var python = ProcessInfo.processInfo.environment["TEXTCRAFTOR_PYTHON"] ?? "python3"
    @Option(help: "The reference script.") var script = "scripts/bench/sd.py"

    func run() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: model))
        let g = Generator(seed: 0)
        let latent = size / pipeline.vaeScaleFactor
        let sample = Tensor.randn([2, pipeline.unet.config.in_channels, latent, latent], generator: g)
        let context = Tensor.randn([2, 77, pipeline.textEncoder.config.hidden_size], generator: g)
        let t = Tensor([Float(500), 500])
        var request = GenerationRequest(prompts: ["a red circle", "a blue square"])
        request.steps = steps
        request.height = size
        request.width = size
        func best(_ body: () throws -> Void) rethrows -> Double {
            try body()
            var times: [Double] = []
            for _ in 0..<repeats {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            return times.min()!
        }
        let ours: [String: Double] = try withNoGrad {
            [
                "unet_ms": best { _ = pipeline.unet(sample, timestep: t, encoderHiddenStates: context) } * 1e3,
                "pipeline_s": try best { _ = try pipeline.generate(request) },
            ]
        }
        let reference = runPythonReference(python: python, script: script, arguments: [
            "--model", model, "--size", "\(size)", "--steps", "\(steps)", "--repeats", "\(repeats)",
            "--threads", "\(Torch.threadCount)",
        ])
        printComparison(
            "Stable Diffusion benchmark: \(model), \(size)x\(size), \(Torch.threadCount) thread(s), best of \(repeats)",
            measures: [
                ("unet_ms", "UNet forward, batch 2", "ms", false),
                ("pipeline_s", "pipeline, 2 prompts, \(steps) steps", "s", false),
            ], ours: ours, reference: reference, python: python)
    }
}
