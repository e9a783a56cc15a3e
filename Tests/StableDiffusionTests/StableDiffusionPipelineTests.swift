import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// Full pipelines against diffusers' StableDiffusionPipeline on the tiny folders (scripts/parity/make_sd_fixtures.py):
/// the prompts, negative prompts and seed of the script, guidance 7.5, 64x64.
@Suite struct StableDiffusionPipelineTests {
    static let prompts = ["a red circle on a blue background", "two small squares, photo"]
    static let negatives = ["blurry", ""]

    func request(steps: Int, imagesPerPrompt: Int = 1) -> GenerationRequest {
        var r = GenerationRequest(prompts: Self.prompts)
        r.negativePrompts = Self.negatives
        r.steps = steps
        r.seed = 42
        r.height = 64
        r.width = 64
        r.imagesPerPrompt = imagesPerPrompt
        return r
    }

    func check(_ model: TinySD, _ prefix: String, _ result: GenerationResult) throws {
        #expect(maxAbsDifference(result.initLatents, try model.output("\(prefix).init_latents")) == 0, "initial noise")
        let latents = maxAbsDifference(result.latents, try model.output("\(prefix).latents"))
        #expect(latents <= 1e-3, "final latents differ by \(latents)")
        let pixels = maxAbsDifference(result.images, try model.output("\(prefix).images"))
        #expect(pixels <= 1, "8-bit images differ by \(pixels)")
    }

    @Test(arguments: TinySD.allCases)
    func tenStepsMatchDiffusers(model: TinySD) throws {
        let pipeline = try StableDiffusionPipeline.load(folder: model.folder)
        var steps: [Int] = []
        let result = try pipeline.generate(request(steps: 10)) { done, _ in steps.append(done) }
        // PNDM's 10 steps are 11 UNet calls (PLMS repeats 801 to warm up), and diffusers' progress counts them.
        #expect(steps == Array(1...(model == .sd15 ? 11 : 10)))
        try check(model, "pipeline", result)
        let ids = try model.output("text.input_ids")
        let expectedEmbeds = try model.output("text.last_hidden_state")
        #expect(maxAbsDifference(result.promptEmbeds, expectedEmbeds.narrow(dim: 0, start: 0, length: 2)) < 1e-5)
        #expect(maxAbsDifference(pipeline.tokenize(Self.prompts + Self.negatives).ids, ids) == 0)
    }

    @Test func severalImagesPerPromptMatchDiffusers() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        try check(.sd15, "pipeline_2x", try pipeline.generate(request(steps: 4, imagesPerPrompt: 2)))
    }

    @Test func eulerOnTheSameScheduleMatchesDiffusers() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        try check(.sd15, "pipeline_euler", try pipeline.generate(request(steps: 10), scheduler: try pipeline.makeScheduler("euler")))
    }

    /// The samplers `--scheduler` and `--karras` add, switched from the folder's PNDM config as a user switches them
    /// in diffusers (scripts/parity/make_sampler_fixtures.py): the same seed gives the same latents (within 1e-4
    /// relative L2: the UNet's float32 sums differ in order) and images. Euler ancestral and DPM++ 2M SDE draw noise
    /// at every step from the pipeline's generator, after the initial latents, in diffusers' order; a wrong draw would
    /// differ by the size of the noise.
    @Test(arguments: [
        ("euler_karras", "euler", true, 10, 1), ("dpm_karras", "dpm", true, 10, 1),
        ("euler_ancestral", "euler-ancestral", false, 10, 1), ("euler_ancestral_2x", "euler-ancestral", false, 4, 2),
        ("dpm_sde", "dpm-sde", false, 10, 1), ("dpm_sde_karras", "dpm-sde", true, 12, 1),
    ])
    func samplersMatchDiffusers(prefix: String, name: String, karras: Bool, steps: Int, imagesPerPrompt: Int) throws {
        let expected = try SafeTensorsFile(url: fixturesURL.appendingPathComponent("sd/outputs_samplers.safetensors"))
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        let scheduler = try pipeline.makeScheduler(name, karras: karras)
        let result = try pipeline.generate(request(steps: steps, imagesPerPrompt: imagesPerPrompt), scheduler: scheduler)
        let timesteps = try expected.tensor("\(prefix).timesteps").toArray(Double.self)
        // Euler's Karras timesteps: within 1e-4 (SchedulerTests' sameKarrasTimesteps says why); the others exactly.
        #expect(scheduler.timesteps.count == timesteps.count
            && zip(scheduler.timesteps, timesteps).allSatisfy { abs($0 - $1) <= (name == "euler" ? 1e-4 : 0) })
        #expect(maxAbsDifference(result.initLatents, try expected.tensor("\(prefix).init_latents")) == 0, "initial noise")
        let reference = try expected.tensor("\(prefix).latents").to(.float64)
        let relative = (result.latents.to(.float64) - reference).pow(2).sum().sqrt().item() / reference.pow(2).sum().sqrt().item()
        #expect(relative <= 1e-4, "\(prefix): final latents differ by \(relative) relative L2")
        let pixels = maxAbsDifference(result.images, try expected.tensor("\(prefix).images"))
        #expect(pixels <= 1, "\(prefix): 8-bit images differ by \(pixels)")
    }

    @Test func badRequestsAreRefusedBeforeSampling() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        var r = request(steps: 0)
        #expect(throws: StableDiffusionError.invalidArgument("--steps must be at least 1 (got 0)")) { try pipeline.generate(r) }
        r = request(steps: 2)
        r.guidanceScale = -1
        #expect(throws: StableDiffusionError.invalidArgument("--guidance must not be negative (got -1.0)")) { try pipeline.generate(r) }
        r = request(steps: 2)
        r.height = 60
        #expect(throws: StableDiffusionError.invalidArgument("--height must be a positive multiple of 8 (got 60)")) { try pipeline.generate(r) }
        r = request(steps: 2)
        r.negativePrompts = ["a", "b", "c"]
        #expect(throws: StableDiffusionError.invalidArgument("give one --negative-prompt, or one per prompt (2); got 3")) {
            try pipeline.generate(r)
        }
        #expect(throws: StableDiffusionError.invalidArgument("no prompt given (--prompt or --prompts-file)")) {
            try pipeline.generate(GenerationRequest(prompts: []))
        }
    }

    @Test func missingFolderOrComponentIsNamed() throws {
        #expect(throws: StableDiffusionError.missingFile("/nonexistent/model")) {
            try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: "/nonexistent/model"))
        }
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for item in try FileManager.default.contentsOfDirectory(atPath: TinySD.sd15.folder.path) where item != "vae" {
            try FileManager.default.copyItem(at: TinySD.sd15.folder.appendingPathComponent(item), to: folder.appendingPathComponent(item))
        }
        #expect(throws: StableDiffusionError.missingFile(folder.appendingPathComponent("vae").path)) {
            try StableDiffusionPipeline.load(folder: folder)
        }
    }
}
