import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// Blending and mixing on the tiny SDXL folder with "fine-tuned" encoders: both tiny encoders with seeded noise added
/// to every parameter (fresh copies; the pipeline's own stay as they are).
@Suite final class SDXLBlendTests {
    let pipeline: StableDiffusionPipeline
    let finetuned: CLIPTextModel
    let finetuned2: CLIPTextModelWithProjection

    init() throws {
        pipeline = try StableDiffusionPipeline.load(folder: TinySDXL.folder)
        let first = TinySDXL.folder.appendingPathComponent("text_encoder"), second = TinySDXL.folder.appendingPathComponent("text_encoder_2")
        finetuned = try CLIPTextModel.load(
            try Weights.open(first.appendingPathComponent("model.safetensors")), configFile: first.appendingPathComponent("config.json"))
        finetuned2 = try CLIPTextModelWithProjection.load(
            try Weights.open(second.appendingPathComponent("model.safetensors")), configFile: second.appendingPathComponent("config.json"))
        let generator = Generator(seed: 1234)
        withNoGrad {
            for p in finetuned.parameters + finetuned2.parameters where p.dtype.isFloatingPoint {
                p.add_(Tensor.randn(p.shape, generator: generator), alpha: 0.05)
            }
        }
    }

    func request(steps: Int = 4) -> GenerationRequest {
        var r = GenerationRequest(prompts: SDXLSetting.prompts)
        r.negativePrompts = SDXLSetting.negatives
        r.steps = steps
        r.seed = 42
        r.guidanceScale = 5
        r.height = 64
        r.width = 64
        return r
    }

    /// The pipeline with the given encoders as its own.
    func pipeline(_ first: CLIPTextModel?, _ second: CLIPTextModelWithProjection?) -> StableDiffusionPipeline {
        StableDiffusionPipeline(
            tokenizer: pipeline.tokenizer, textEncoder: first ?? pipeline.textEncoder, tokenizer2: pipeline.tokenizer2,
            textEncoder2: second ?? pipeline.textEncoder2, unet: pipeline.unet, vae: pipeline.vae,
            schedulerConfig: pipeline.schedulerConfig, schedulerConfigFile: pipeline.schedulerConfigFile,
            forceZerosForEmptyPrompt: pipeline.forceZerosForEmptyPrompt)
    }

    @Test func blendZeroIsTheOriginalAndOneTheFinetunedExactly() throws {
        let plain = try pipeline.generate(request())
        let zero = try pipeline.generate(request(), mix: .blend(finetuned, finetuned2, weight: 0))
        #expect(maxAbsDifference(zero.latents, plain.latents) == 0)
        #expect(maxAbsDifference(zero.images, plain.images) == 0)
        let tuned = try pipeline(finetuned, finetuned2).generate(request())
        #expect(maxAbsDifference(tuned.latents, plain.latents) > 1e-4, "the fine-tuned encoders change the image")
        let one = try pipeline.generate(request(), mix: .blend(finetuned, finetuned2, weight: 1))
        #expect(maxAbsDifference(one.latents, tuned.latents) == 0)
        #expect(maxAbsDifference(one.promptEmbeds, tuned.promptEmbeds) == 0)
        #expect(maxAbsDifference(one.pooledPromptEmbeds!, tuned.pooledPromptEmbeds!) == 0)
        // Half way: the hidden states and the pooled embeddings are the mean of both.
        let half = try pipeline.generate(request(), mix: .blend(finetuned, finetuned2, weight: 0.5))
        #expect(maxAbsDifference(half.promptEmbeds, (plain.promptEmbeds + tuned.promptEmbeds) * 0.5) < 1e-5)
        #expect(maxAbsDifference(half.pooledPromptEmbeds!, (plain.pooledPromptEmbeds! + tuned.pooledPromptEmbeds!) * 0.5) < 1e-5)
    }

    @Test func blendOfOneEncoderKeepsTheOther() throws {
        // A run that trained only text_encoder_2: the first place keeps the model's own encoder.
        let tuned = try pipeline(nil, finetuned2).generate(request())
        let one = try pipeline.generate(request(), mix: .blend(nil, finetuned2, weight: 1))
        #expect(maxAbsDifference(one.latents, tuned.latents) == 0)
        let d1 = pipeline.textEncoder.config.hidden_size
        let plain = try pipeline.generate(request())
        #expect(maxAbsDifference(one.promptEmbeds.narrow(dim: -1, start: 0, length: d1), plain.promptEmbeds.narrow(dim: -1, start: 0, length: d1)) == 0)
    }

    @Test func mixOfTwoIdenticalEncodersIsOne() throws {
        let single = try pipeline.generate(request(), mix: .finetuned(finetuned, finetuned2))
        let mixed = try pipeline.generate(
            request(),
            mix: EncoderMix([.init(encoder: finetuned, encoder2: finetuned2, weight: 0.5, name: "a"),
                             .init(encoder: finetuned, encoder2: finetuned2, weight: 0.5, name: "b")]))
        #expect(maxAbsDifference(mixed.latents, single.latents) == 0)
        let uneven = try pipeline.generate(
            request(),
            mix: EncoderMix([.init(encoder: finetuned, encoder2: finetuned2, weight: 0.3, name: "a"),
                             .init(encoder: finetuned, encoder2: finetuned2, weight: 0.7, name: "b")]))
        #expect(maxAbsDifference(uneven.latents, single.latents) < 1e-4)
    }

    @Test func finetunedStepsSwitchesEncodersMidSampling() throws {
        let calls = try pipeline.unetCalls(request())
        let throughout = try pipeline(finetuned, finetuned2).generate(request())
        let all = try pipeline.generate(request(), mix: .finetuned(finetuned, finetuned2, finetunedSteps: calls))
        #expect(maxAbsDifference(all.latents, throughout.latents) == 0)
        #expect(all.mixStart == 0)
        let plain = try pipeline.generate(request())
        let none = try pipeline.generate(request(), mix: .finetuned(finetuned, finetuned2, finetunedSteps: 0))
        #expect(maxAbsDifference(none.latents, plain.latents) == 0)
        let some = try pipeline.generate(request(), mix: .finetuned(finetuned, finetuned2, finetunedSteps: 2))
        #expect(some.mixStart == calls - 2)
        #expect(maxAbsDifference(some.latents, plain.latents) > 1e-5)
        #expect(maxAbsDifference(some.latents, throughout.latents) > 1e-5)
        #expect(throws: StableDiffusionError.self) {
            try self.pipeline.generate(self.request(), mix: .finetuned(self.finetuned, self.finetuned2, finetunedSteps: calls + 1))
        }
    }
}
