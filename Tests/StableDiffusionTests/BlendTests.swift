import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// Controllable generation on the tiny SD 1.5 folder (PNDM: 4 steps are 5 UNet calls) with a "fine-tuned" encoder:
/// the tiny text encoder with seeded noise added to every parameter, saved as the trainer saves one
/// (config.json + model.safetensors, keys `text_model.*`).
@Suite final class BlendTests {
    static let prompts = ["a red circle on a blue background", "two small squares, photo"]
    static let negatives = ["blurry", ""]

    let pipeline: StableDiffusionPipeline
    let finetuned: CLIPTextModel
    let folder: URL

    init() throws {
        pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        folder = try Self.saveFinetuned()
        finetuned = try pipeline.loadTextEncoder(folder: folder)
    }

    deinit { try? FileManager.default.removeItem(at: folder) }

    /// The tiny text encoder, every parameter shifted by 0.05 x seeded N(0, 1) noise, saved into a temporary folder.
    static func saveFinetuned() throws -> URL {
        let source = TinySD.sd15.folder.appendingPathComponent("text_encoder")
        let encoder = try CLIPTextModel.load(
            try Weights.open(source.appendingPathComponent("model.safetensors")),
            configFile: source.appendingPathComponent("config.json"))
        let generator = Generator(seed: 1234)
        withNoGrad {
            for p in encoder.parameters where p.dtype.isFloatingPoint {
                p.add_(Tensor.randn(p.shape, generator: generator), alpha: 0.05)
            }
        }
        let folder = try temporaryFolder("finetuned")
        try encoder.save(to: folder.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: folder.appendingPathComponent("config.json"))
        return folder
    }

    func request(steps: Int = 4) -> GenerationRequest {
        var r = GenerationRequest(prompts: Self.prompts)
        r.negativePrompts = Self.negatives
        r.steps = steps
        r.seed = 42
        r.height = 64
        r.width = 64
        return r
    }

    /// The pipeline with the fine-tuned encoder as its own text encoder.
    func finetunedPipeline() -> StableDiffusionPipeline {
        StableDiffusionPipeline(
            tokenizer: pipeline.tokenizer, textEncoder: finetuned, unet: pipeline.unet, vae: pipeline.vae,
            schedulerConfig: pipeline.schedulerConfig, schedulerConfigFile: pipeline.schedulerConfigFile)
    }

    func latents(_ mix: EncoderMix?) throws -> Tensor { try pipeline.generate(request(), mix: mix).latents }

    @Test func savedEncoderReloadsAndDiffersFromTheOriginal() throws {
        let ids = pipeline.tokenize(Self.prompts).ids
        let original = pipeline.textEncoder(ids).lastHiddenState, tuned = finetuned(ids).lastHiddenState
        #expect(finetuned.namedParameters.first?.name == "text_model.embeddings.token_embedding.weight")
        #expect(maxAbsDifference(original, tuned) > 0.1, "the perturbation moves the embeddings")
        // A trainer's output folder (holding text_encoder/) is read from its text_encoder/.
        let out = try temporaryFolder("trainer-out")
        defer { try? FileManager.default.removeItem(at: out) }
        try FileManager.default.copyItem(at: folder, to: out.appendingPathComponent("text_encoder"))
        #expect(maxAbsDifference(try pipeline.loadTextEncoder(folder: out)(ids).lastHiddenState, tuned) == 0)
    }

    @Test func blendZeroIsTheOriginalExactly() throws {
        let plain = try pipeline.generate(request())
        let blended = try pipeline.generate(request(), mix: .blend(finetuned, weight: 0))
        #expect(maxAbsDifference(blended.latents, plain.latents) == 0)
        #expect(maxAbsDifference(blended.images, plain.images) == 0)
        #expect(maxAbsDifference(blended.negativePromptEmbeds!, plain.negativePromptEmbeds!) == 0)
    }

    @Test func blendOneIsTheFinetunedEncoderAsTheTextEncoder() throws {
        let reference = try finetunedPipeline().generate(request())
        let blended = try pipeline.generate(request(), mix: .blend(finetuned, weight: 1))
        #expect(maxAbsDifference(blended.latents, reference.latents) == 0)
        #expect(maxAbsDifference(blended.images, reference.images) == 0)
        #expect(maxAbsDifference(try latents(.finetuned(finetuned)), reference.latents) == 0)
    }

    @Test func blendHalfDiffersFromBoth() throws {
        let original = try latents(nil), tuned = try latents(.finetuned(finetuned))
        let half = try latents(.blend(finetuned, weight: 0.5))
        let gap = maxAbsDifference(original, tuned)
        #expect(gap > 0.5, "fine-tuned vs original latents differ by \(gap)")  // 1.37 when written
        #expect(maxAbsDifference(half, original) > 0.1)  // 0.64
        #expect(maxAbsDifference(half, tuned) > 0.1)  // 0.73
    }

    /// e(W) = W e_ft + (1 - W) e_orig, for the prompts and the negative prompts, in `encode` and in `generate`.
    @Test(arguments: [0.25, 0.5, 0.8, 1.7])
    func blendedEmbeddingsAreTheInterpolation(weight: Double) throws {
        try withNoGrad {
            let ids = pipeline.tokenize(Self.prompts).ids, negativeIds = pipeline.tokenize(Self.negatives).ids
            func expected(_ ids: Tensor) -> Tensor {
                weight * finetuned(ids).lastHiddenState + (1 - weight) * pipeline.textEncoder(ids).lastHiddenState
            }
            let mix = EncoderMix.blend(finetuned, weight: weight)
            #expect(maxAbsDifference(pipeline.encode(Self.prompts, mix: mix), expected(ids)) <= 1e-6)
            var r = request(steps: 1)
            r.imagesPerPrompt = 2
            let result = try pipeline.generate(r, mix: mix)
            let repeated = { (t: Tensor) in t.repeatInterleave(2, dim: 0) }
            #expect(maxAbsDifference(result.promptEmbeds, repeated(expected(ids))) <= 1e-6)
            #expect(maxAbsDifference(result.negativePromptEmbeds!, repeated(expected(negativeIds))) <= 1e-6)
        }
    }

    @Test func mixOfTheOriginalAloneIsTheOriginal() throws {
        #expect(maxAbsDifference(try latents(.mix([(nil, 1)])), try latents(nil)) == 0)
    }

    @Test func evenMixIsBlendHalf() throws {
        let mixed = try latents(.mix([(nil, 0.5), (finetuned, 0.5)]))
        #expect(maxAbsDifference(mixed, try latents(.blend(finetuned, weight: 0.5))) == 0)
    }

    /// Three encoders, the paper's style-mixing shape: Σ wᵢ eᵢ at the embedding level.
    @Test func threeWayMixIsTheWeightedSum() throws {
        let second = try pipeline.loadTextEncoder(folder: folder)
        withNoGrad { for p in second.parameters { p *= 1.1 } }
        let ids = pipeline.tokenize(Self.prompts).ids
        let got = pipeline.encode(Self.prompts, mix: .mix([(nil, 0.1), (finetuned, 0.7), (second, 0.2)]))
        let expected = withNoGrad {
            0.1 * pipeline.textEncoder(ids).lastHiddenState + 0.7 * finetuned(ids).lastHiddenState + 0.2 * second(ids).lastHiddenState
        }
        #expect(maxAbsDifference(got, expected) <= 1e-6)
    }

    @Test func finetunedStepsZeroIsTheOriginalAndAllIsTheFinetuned() throws {
        let calls = try pipeline.unetCalls(request())
        #expect(calls == 5, "PNDM: 4 steps, 5 UNet calls")
        let none = try pipeline.generate(request(), mix: .finetuned(finetuned, finetunedSteps: 0))
        #expect(maxAbsDifference(none.latents, try latents(nil)) == 0)
        #expect(none.mixStart == 5)
        let all = try pipeline.generate(request(), mix: .finetuned(finetuned, finetunedSteps: calls))
        #expect(maxAbsDifference(all.latents, try latents(.finetuned(finetuned))) == 0)
        #expect(all.mixStart == 0 && all.originalPromptEmbeds == nil)
    }

    /// The last N calls fine-tuned, the first S - N original: generate equals a hand-written loop that switches the
    /// context at S - N, and differs from both ends.
    @Test(arguments: [1, 3])
    func finetunedStepsSwitchesTheContextForTheLastCalls(n: Int) throws {
        let result = try pipeline.generate(request(), mix: .blend(finetuned, weight: 0.8, finetunedSteps: n))
        #expect(result.mixStart == 5 - n)
        let manual = try withNoGrad {
            let ids = pipeline.tokenize(Self.prompts).ids, negativeIds = pipeline.tokenize(Self.negatives).ids
            func context(_ e: (Tensor) -> Tensor) -> Tensor { Tensor.cat([e(negativeIds), e(ids)]) }
            let original = context { pipeline.textEncoder($0).lastHiddenState }
            let blended = context { 0.8 * finetuned($0).lastHiddenState + 0.2 * pipeline.textEncoder($0).lastHiddenState }
            let scheduler = try pipeline.makeScheduler()
            try scheduler.setTimesteps(4)
            let generator = Generator(seed: 42)
            var latents = Tensor.randn(result.initLatents.shape, generator: generator) * scheduler.initNoiseSigma
            for (i, t) in scheduler.timesteps.enumerated() {
                latents = pipeline.denoise(latents, timestep: t, context: i < 5 - n ? original : blended, guidanceScale: 7.5,
                                           scheduler: scheduler, generator: generator)
            }
            return latents
        }
        let difference = maxAbsDifference(result.latents, manual)
        #expect(difference <= 1e-6, "generate vs the hand-written loop: \(difference)")
        #expect(maxAbsDifference(result.latents, try latents(nil)) > 1e-4)
        #expect(maxAbsDifference(result.latents, try latents(.blend(finetuned, weight: 0.8))) > 1e-4)
        #expect(maxAbsDifference(result.originalPromptEmbeds!, pipeline.encode(Self.prompts)) == 0)
    }

    @Test func plainGenerateReportsNoMix() throws {
        let result = try pipeline.generate(request(steps: 1))
        #expect(result.mixStart == nil && result.originalPromptEmbeds == nil && result.originalNegativePromptEmbeds == nil)
    }

    @Test func badMixesAreRefusedBeforeSampling() throws {
        #expect(throws: StableDiffusionError.invalidArgument("--finetuned-steps must be between 0 and 5 (the scheduler's UNet calls); got 6")) {
            try pipeline.generate(request(), mix: .finetuned(finetuned, finetunedSteps: 6))
        }
        #expect(throws: StableDiffusionError.invalidArgument("--finetuned-steps must be between 0 and 5 (the scheduler's UNet calls); got -1")) {
            try pipeline.generate(request(), mix: .finetuned(finetuned, finetunedSteps: -1))
        }
        #expect(throws: StableDiffusionError.invalidArgument("an encoder mix needs at least one encoder")) {
            try pipeline.generate(request(), mix: EncoderMix([]))
        }
        #expect(throws: StableDiffusionError.invalidArgument("the weight of text encoder original must be a finite number (got nan)")) {
            try pipeline.generate(request(), mix: .blend(finetuned, weight: .nan))
        }
    }

    @Test func encoderFoldersAreCheckedBeforeTheirWeights() throws {
        #expect(throws: StableDiffusionError.missingFile("/nonexistent/text_encoder")) {
            try pipeline.loadTextEncoder(folder: URL(fileURLWithPath: "/nonexistent/text_encoder"))
        }
        let bad = try temporaryFolder("bad-encoder")
        defer { try? FileManager.default.removeItem(at: bad) }
        let config = bad.appendingPathComponent("config.json")
        #expect(throws: StableDiffusionError.missingFile(config.path)) { try pipeline.loadTextEncoder(folder: bad) }
        // A wider encoder (no weights at all: the config is refused first).
        try #"{"hidden_size": 16, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 3, "vocab_size": 1000}"#
            .write(to: config, atomically: true, encoding: .utf8)
        #expect(throws: StableDiffusionError.invalidConfig(
            file: config.path, message: "hidden_size 16 does not match the model's text encoder (32)")) {
            try pipeline.loadTextEncoder(folder: bad)
        }
    }
}
