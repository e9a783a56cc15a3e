import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// The tiny SDXL folder of scripts/parity/make_sdxl_fixtures.py and what diffusers' StableDiffusionXLPipeline
/// computed with it.
enum TinySDXL {
    static var folder: URL { fixturesURL.appendingPathComponent("sdxl/tiny-sdxl") }

    static func output(_ name: String) throws -> Tensor {
        try SafeTensorsFile(url: fixturesURL.appendingPathComponent("sdxl/outputs_sdxl.safetensors")).tensor(name)
    }
}

/// ‖a − b‖ / ‖b‖.
func relativeL2(_ a: Tensor, _ b: Tensor) -> Double {
    let (x, y) = (a.to(.float64), b.to(.float64))
    return (x - y).square().sum().item().squareRoot() / y.square().sum().item().squareRoot()
}

/// One setting of the script's generations: the same prompts, seed 42, Euler (the folder's), 8 steps, guidance 5,
/// 64x64 unless the setting says otherwise.
struct SDXLSetting: CustomStringConvertible, Sendable {
    let name: String
    var hasImages = false
    var configure: @Sendable (inout GenerationRequest) -> Void = { _ in }

    var description: String { name }

    static let prompts = ["a red circle on a blue background", "two small squares, photo!"]
    static let prompts2 = ["a painting of a circle", "squares!! in the rain"]
    static let negatives = ["blurry", ""]

    static let all: [SDXLSetting] = [
        SDXLSetting(name: "square", hasImages: true) { $0.negativePrompts = negatives },
        SDXLSetting(name: "nonsquare", hasImages: true) {
            $0.negativePrompts = ["blurry, dark"]
            $0.height = 48
            $0.prompts2 = prompts2
            $0.negativePrompts2 = ["noisy"]
        },
        SDXLSetting(name: "guidance1") {
            $0.guidanceScale = 1
            $0.width = 48
        },
        // No negative prompt: force_zeros_for_empty_prompt gives zeros for the unconditional half.
        SDXLSetting(name: "zeros") { $0.imagesPerPrompt = 2 },
        SDXLSetting(name: "clip_skip") {
            $0.negativePrompts = negatives
            $0.clipSkip = 1
        },
        SDXLSetting(name: "crop") {
            $0.negativePrompts = negatives
            $0.cropTopLeft = (16, 8)
            $0.originalSize = (96, 80)
            $0.targetSize = (64, 48)
        },
    ]

    var request: GenerationRequest {
        var r = GenerationRequest(prompts: Self.prompts)
        r.steps = 8
        r.guidanceScale = 5
        r.seed = 42
        r.height = 64
        r.width = 64
        configure(&r)
        return r
    }
}

@Suite struct StableDiffusionXLTests {
    func pipeline() throws -> StableDiffusionPipeline { try StableDiffusionPipeline.load(folder: TinySDXL.folder) }

    @Test func loadsAsSDXLWithBothTokenizersAndEncoders() throws {
        let pipeline = try pipeline()
        #expect(pipeline.architecture == .sdxl)
        #expect(try StableDiffusionPipeline.architecture(of: TinySDXL.folder) == .sdxl)
        #expect(try StableDiffusionPipeline.architecture(of: TinySD.sd15.folder) == .sd)
        #expect(pipeline.forceZerosForEmptyPrompt)
        #expect(pipeline.tokenizer2?.padTokenId == 0, "tokenizer_2 pads with \"!\"")
        #expect(pipeline.tokenizer.padTokenId == 999)
        #expect(pipeline.vae.config.scaling_factor == 0.13025 && pipeline.vae.config.force_upcast)
        #expect(pipeline.unet.takesAddedConditioning)
        #expect(pipeline.defaultSize == 64)
        #expect(try pipeline.makeScheduler() is EulerDiscreteScheduler)
        #expect(pipeline.maxClipSkip == 2)
        #expect(pipeline.textEncoder2!.namedParameters.map(\.name).contains("text_projection.weight"))
    }

    /// Both tokenizers' ids, and text_encoder_2's penultimate hidden states and projected pooled output.
    @Test func textEncodersMatchTransformers() throws {
        let pipeline = try pipeline()
        let texts = SDXLSetting.prompts + SDXLSetting.negatives
        let tokens = pipeline.promptTokens(texts)
        #expect(maxAbsDifference(tokens.ids, try TinySDXL.output("text.input_ids")) == 0)
        #expect(maxAbsDifference(tokens.ids2!, try TinySDXL.output("text_2.input_ids")) == 0)
        let out = withNoGrad { pipeline.textEncoder2!(tokens.ids2!, outputHiddenStates: true) }
        let states = out.hiddenStates!
        #expect(maxAbsDifference(states[states.count - 2], try TinySDXL.output("text_2.penultimate")) < 1e-5)
        #expect(maxAbsDifference(out.textEmbeds, try TinySDXL.output("text_2.text_embeds")) < 1e-5)
        let first = withNoGrad { pipeline.textEncoder(tokens.ids, outputHiddenStates: true).hiddenStates! }
        #expect(maxAbsDifference(first[first.count - 2], try TinySDXL.output("text.penultimate")) < 1e-5)
    }

    /// diffusers' encode_prompt with prompt_2, negative_prompt_2 and clip_skip 1 (which the negatives ignore).
    @Test func encodingMatchesEncodePrompt() throws {
        let pipeline = try pipeline()
        let tokens = pipeline.promptTokens(SDXLSetting.prompts, secondPrompts: SDXLSetting.prompts2)
        let negatives = pipeline.promptTokens(SDXLSetting.negatives, secondPrompts: ["dark", "noisy"])
        let (prompt, negative) = withNoGrad {
            (pipeline.encode(tokens, clipSkip: 1), pipeline.encode(negatives))
        }
        #expect(prompt.hiddenStates.shape == [2, 77, 80])
        #expect(maxAbsDifference(prompt.hiddenStates, try TinySDXL.output("encode.prompt_embeds")) < 1e-5)
        #expect(maxAbsDifference(negative.hiddenStates, try TinySDXL.output("encode.negative_prompt_embeds")) < 1e-5)
        #expect(maxAbsDifference(prompt.textEmbeds!, try TinySDXL.output("encode.pooled")) < 1e-5)
        #expect(maxAbsDifference(negative.textEmbeds!, try TinySDXL.output("encode.negative_pooled")) < 1e-5)
        #expect(prompt.timeIds == nil, "no sizes given, no time ids")
        let sized = withNoGrad { pipeline.encode(tokens, sizes: SizeConditioning(height: 64, width: 48, cropTop: 16, cropLeft: 8)) }
        #expect(sized.timeIds!.toArray(Float.self) == [64, 48, 16, 8, 64, 48, 64, 48, 16, 8, 64, 48])
    }

    /// The encoding is differentiable: gradients reach both encoders' parameters, through the hidden states and the
    /// pooled embeddings (`Conditioning.backward`).
    @Test func encodingCarriesGradientsIntoBothEncoders() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: TinySDXL.folder)
        pipeline.textEncoder.setTrainable(true)
        pipeline.textEncoder2!.setTrainable(true)
        let conditioning = pipeline.encode(pipeline.promptTokens(SDXLSetting.prompts))
        let gradient = conditioning.detached().map { $0.onesLike() }
        conditioning.backward(gradient: gradient)
        let projection = pipeline.textEncoder2!.namedParameters.first { $0.name == "text_projection.weight" }!.tensor
        #expect(projection.grad.map { $0.abs().sum().item() > 0 } == true, "the pooled embeddings' gradient")
        let lastLayer = pipeline.textEncoder.namedParameters.first { $0.name.hasSuffix("layers.1.mlp.fc2.weight") }!.tensor
        #expect(lastLayer.grad.map { $0.abs().sum().item() > 0 } == true, "the first encoder's penultimate layer")
    }

    /// One UNet forward with the added conditioning (non-square, fractional timestep), and the gradients of a scalar
    /// of its output with respect to the text embeddings and the pooled embeddings.
    @Test func unetWithAddedConditioningMatchesDiffusers() throws {
        let unet = try pipeline().unet
        let context = try TinySDXL.output("unet.context").requiringGrad()
        let pooled = try TinySDXL.output("unet.text_embeds").requiringGrad()
        let out = unet(try TinySDXL.output("unet.sample"), timestep: try TinySDXL.output("unet.timesteps"),
                       conditioning: Conditioning(hiddenStates: context, textEmbeds: pooled, timeIds: try TinySDXL.output("unet.time_ids")))
        #expect(maxAbsDifference(out, try TinySDXL.output("unet.out")) < 1e-5)
        (out * (try TinySDXL.output("unet.w"))).sum().backward()
        #expect(relativeL2(context.grad!, try TinySDXL.output("unet.grad_context")) < 1e-5)
        #expect(relativeL2(pooled.grad!, try TinySDXL.output("unet.grad_text_embeds")) < 1e-5)
    }

    /// transformer_layers_per_block [1, [2]] and reverse_transformer_layers_per_block [[2, 1], [1, 3]]: per-layer
    /// depths on the way down, in the middle, and on the way up.
    @Test func reverseTransformerDepthsMatchDiffusers() throws {
        let folder = fixturesURL.appendingPathComponent("sdxl/unet_reverse_depths")
        let unet = try UNet2DConditionModel.load(folder: folder)
        #expect(unet.config.transformer_layers_per_block == .each([.same(1), .each([2])]))
        #expect(unet.config.reverse_transformer_layers_per_block == [.each([2, 1]), .each([1, 3])])
        let context = try TinySDXL.output("unet.context").narrow(dim: 2, start: 0, length: 16)
        let out = withNoGrad {
            unet(try! TinySDXL.output("unet.sample"), timestep: try! TinySDXL.output("unet.timesteps"), encoderHiddenStates: context)
        }
        #expect(maxAbsDifference(out, try TinySDXL.output("unet_reverse.out")) < 1e-5)
    }

    /// Latents within 1e-4 relative L2 of diffusers' (the initial noise exactly), 8-bit images within 1.
    @Test(arguments: SDXLSetting.all)
    func generationMatchesDiffusers(setting: SDXLSetting) throws {
        let pipeline = try pipeline()
        var calls: [Int] = []
        let result = try pipeline.generate(setting.request) { done, _ in calls.append(done) }
        #expect(calls == Array(1...8))
        #expect(maxAbsDifference(result.initLatents, try TinySDXL.output("\(setting.name).init_latents")) == 0)
        let error = relativeL2(result.latents, try TinySDXL.output("\(setting.name).latents"))
        print("SDXL \(setting.name): latents within \(error) relative L2 of diffusers'")
        #expect(error <= 1e-4, "\(setting.name): latents differ by \(error) relative L2")
        if setting.hasImages {
            let pixels = maxAbsDifference(result.images, try TinySDXL.output("\(setting.name).images"))
            #expect(pixels <= 1, "\(setting.name): 8-bit images differ by \(pixels)")
        }
        if setting.name == "zeros" {
            #expect(result.negativePromptEmbeds.map { $0.abs().max().item() == 0 } == true)
            #expect(result.negativePooledPromptEmbeds.map { $0.abs().max().item() == 0 } == true)
            #expect(result.pooledPromptEmbeds?.shape == [4, 40])
        }
    }

    /// Under float16 the SDXL VAE (force_upcast) stays float32 and decodes widened latents, as diffusers upcasts it;
    /// SD 1.x/2.x's pipeline keeps its VAE in float16, as diffusers' does.
    @Test func halfPrecisionKeepsAnUpcastVAEInFloat32() throws {
        let half = try StableDiffusionPipeline.load(folder: TinySDXL.folder, dtype: .float16)
        #expect(half.unet.dtype == .float16 && half.vae.dtype == .float32)
        #expect(half.textEncoder2!.parameters.allSatisfy { $0.dtype == .float16 })
        #expect(try StableDiffusionPipeline.load(folder: TinySD.sd15.folder, dtype: .float16).vae.dtype == .float16)
        var request = SDXLSetting.all[0].request
        request.steps = 3
        let result = try half.generate(request)
        #expect(result.latents.dtype == .float16)
        let reference = try pipeline().generate(request)
        let pixels = maxAbsDifference(result.images, reference.images)
        #expect(pixels <= 8, "float16 images differ from float32 ones by \(pixels) of 255")
        #expect(half.decode(result.latents).dtype == .float32)
    }

    /// What only SDXL takes is refused on SD 1.x/2.x, and clip_skip beyond the encoders' layers everywhere.
    @Test func requestsAreCheckedAgainstTheArchitecture() throws {
        let sd = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        var r = GenerationRequest(prompts: ["a"])
        r.prompts2 = ["b"]
        #expect(throws: StableDiffusionError.invalidArgument(
            "--prompt-2 is for SDXL models (a second text encoder and size conditioning); this is a Stable Diffusion 1.x/2.x model")) {
            try sd.validate(r)
        }
        r = GenerationRequest(prompts: ["a"])
        r.cropTopLeft = (8, 8)
        #expect(throws: StableDiffusionError.invalidArgument(
            "--crop is for SDXL models (a second text encoder and size conditioning); this is a Stable Diffusion 1.x/2.x model")) {
            try sd.validate(r)
        }
        r = GenerationRequest(prompts: ["a"])
        r.clipSkip = 4
        #expect(throws: StableDiffusionError.invalidArgument("--clip-skip must be between 0 and 3 (the text encoder's layers); got 4")) {
            try sd.validate(r)
        }
        let xl = try pipeline()
        r.clipSkip = 3
        #expect(throws: StableDiffusionError.invalidArgument(
            "--clip-skip must be between 0 and 2 (the text encoders' layers less the penultimate one); got 3")) {
            try xl.validate(r)
        }
        r = GenerationRequest(prompts: ["a", "b"])
        r.prompts2 = ["x", "y", "z"]
        #expect(throws: StableDiffusionError.invalidArgument("give one --prompt-2, or one per prompt (2); got 3")) { try xl.validate(r) }
        r = GenerationRequest(prompts: ["a"])
        r.cropTopLeft = (-1, 0)
        #expect(throws: StableDiffusionError.invalidArgument("--crop must be TOP,LEFT in pixels, each at least 0 (got -1,0)")) {
            try xl.validate(r)
        }
        // Encoder mixes are checked as on SD 1.x/2.x (SDXLBlendTests runs them).
        try xl.validate(EncoderMix.finetuned(xl.textEncoder, xl.textEncoder2), unetCalls: 8)
        #expect(throws: StableDiffusionError.invalidArgument(
            "--finetuned-steps must be between 0 and 8 (the scheduler's UNet calls); got 9")) {
            try xl.validate(EncoderMix.finetuned(xl.textEncoder, finetunedSteps: 9), unetCalls: 8)
        }
    }
}

/// diffusers' clip_skip on SD 1.5 (scripts/parity/make_sdxl_fixtures.py): hidden_states[-(N+1)] through the final
/// layer norm, for the prompts only.
@Suite struct ClipSkipTests {
    @Test(arguments: [1, 2])
    func sd15ClipSkipMatchesDiffusers(skip: Int) throws {
        let outputs = try SafeTensorsFile(url: fixturesURL.appendingPathComponent("sdxl/outputs_sd15_clip_skip.safetensors"))
        let pipeline = try StableDiffusionPipeline.load(folder: TinySD.sd15.folder)
        var r = GenerationRequest(prompts: ["a red circle on a blue background", "two small squares, photo"])
        r.negativePrompts = ["blurry", ""]
        r.steps = 6
        r.seed = 42
        r.height = 64
        r.width = 64
        r.clipSkip = skip
        let result = try pipeline.generate(r)
        #expect(maxAbsDifference(result.promptEmbeds, try outputs.tensor("clip_skip_\(skip).prompt_embeds")) < 1e-5)
        let error = relativeL2(result.latents, try outputs.tensor("clip_skip_\(skip).latents"))
        #expect(error <= 1e-4, "clip_skip \(skip): latents differ by \(error) relative L2")
        // Without clip_skip the embeddings are the last hidden state (so the skip changed them).
        #expect(maxAbsDifference(result.promptEmbeds, pipeline.encode(r.prompts)) > 1e-3)
    }
}

/// What is wrong with an SDXL folder is named in one line: the file, the key, and what would fit.
@Suite struct SDXLFolderErrorTests {
    /// A copy of tiny-sdxl without `leaving` (components) and with `edit` applied to the JSON files it names.
    func copy(leaving: Set<String> = [], edit: [String: (inout [String: Any]) -> Void] = [:]) throws -> URL {
        let folder = try temporaryFolder("sdxl")
        for item in try FileManager.default.contentsOfDirectory(atPath: TinySDXL.folder.path) where !leaving.contains(item) {
            try FileManager.default.copyItem(at: TinySDXL.folder.appendingPathComponent(item), to: folder.appendingPathComponent(item))
        }
        for (file, change) in edit {
            let url = folder.appendingPathComponent(file)
            var object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            change(&object)
            try JSONSerialization.data(withJSONObject: object).write(to: url)
        }
        return folder
    }

    /// What loading `folder` throws (nil when it loads); the folder is removed.
    func loadError(_ folder: URL) -> StableDiffusionError? {
        defer { try? FileManager.default.removeItem(at: folder) }
        do {
            _ = try StableDiffusionPipeline.load(folder: folder)
            return nil
        } catch {
            return error as? StableDiffusionError
        }
    }

    /// The message of an invalidConfig error about `file` in `folder`.
    func configMessage(_ folder: URL, _ file: String) -> String? {
        guard case .invalidConfig(let path, let message)? = loadError(folder) else { return nil }
        return path == folder.appendingPathComponent(file).path ? message : "(another file: \(path))"
    }

    @Test func aMissingTextEncoder2IsNamed() throws {
        let folder = try copy(leaving: ["text_encoder_2"])
        let error = loadError(folder)
        #expect(error == .missingFile(folder.appendingPathComponent("text_encoder_2").path))
        #expect(error?.description == "\(folder.path)/text_encoder_2: no such file or folder")
    }

    /// A refiner's model_index.json lists text_encoder as [null, null] and ships no text_encoder/.
    @Test func aRefinerIsRefused() throws {
        let folder = try copy(leaving: ["text_encoder", "tokenizer"], edit: ["model_index.json": {
            $0["_class_name"] = "StableDiffusionXLImg2ImgPipeline"
            $0["text_encoder"] = [NSNull(), NSNull()]
            $0["tokenizer"] = [NSNull(), NSNull()]
            $0["requires_aesthetics_score"] = true
        }])
        #expect(configMessage(folder, "model_index.json")
            == "an SDXL refiner (text_encoder_2 without text_encoder): refiners are not supported, use an SDXL base model")
    }

    @Test func aUNetThatDoesNotFitTheEncodersIsNamed() throws {
        let added = try copy(edit: ["unet/config.json": { $0["projection_class_embeddings_input_dim"] = 2816 }])
        #expect(configMessage(added, "unet/config.json")
            == "projection_class_embeddings_input_dim 2816 does not match text_encoder_2's projection_dim (40) + 6 x addition_time_embed_dim (8) = 88")
        let width = try copy(edit: ["unet/config.json": { $0["cross_attention_dim"] = 2048 }])
        #expect(configMessage(width, "unet/config.json")
            == "cross_attention_dim 2048 does not match the text encoders' hidden sizes (32 + 48 = 80)")
        let plain = try copy(edit: ["unet/config.json": { $0["addition_embed_type"] = NSNull() }])
        #expect(configMessage(plain, "unet/config.json")
            == "addition_embed_type \"null\" is not SDXL's \"text_time\", which an SDXL folder needs")
    }

    /// A VAE config's latents_mean and latents_std (both set) shift and scale the latents before decoding, per
    /// channel, as diffusers' SDXL pipeline does; one per latent channel.
    @Test func latentStatisticsOfTheVAEAreApplied() throws {
        let mean = [0.1, -0.2, 0.3, 0.05], std = [1.1, 0.9, 1.2, 0.8]
        let folder = try copy(edit: ["vae/config.json": { $0["latents_mean"] = mean; $0["latents_std"] = std }])
        defer { try? FileManager.default.removeItem(at: folder) }
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        let latents = Tensor.randn([1, 4, 8, 8], generator: Generator(seed: 3))
        func channels(_ values: [Double]) -> Tensor { Tensor(values.map(Float.init), shape: [1, 4, 1, 1]) }
        let expected = pipeline.vae.decode(latents * channels(std) / 0.13025 + channels(mean))
        #expect(maxAbsDifference(withNoGrad { pipeline.decode(latents) }, withNoGrad { expected }) < 1e-6)
        let short = try copy(edit: ["vae/config.json": { $0["latents_mean"] = [0.1, 0.2] }])
        #expect(configMessage(short, "vae/config.json") == "key \"latents_mean\" has 2 entries, latent_channels is 4")
    }

    @Test func anSDFolderWithAnSDXLUNetIsNamed() throws {
        let sd = try temporaryFolder("sd")
        for item in try FileManager.default.contentsOfDirectory(atPath: TinySD.sd15.folder.path) {
            try FileManager.default.copyItem(at: TinySD.sd15.folder.appendingPathComponent(item), to: sd.appendingPathComponent(item))
        }
        try FileManager.default.removeItem(at: sd.appendingPathComponent("unet/config.json"))
        try FileManager.default.copyItem(
            at: TinySDXL.folder.appendingPathComponent("unet/config.json"), to: sd.appendingPathComponent("unet/config.json"))
        #expect(configMessage(sd, "unet/config.json")
            == "addition_embed_type \"text_time\" is SDXL's, but the folder has one text encoder (no text_encoder_2 in model_index.json)")
    }

    @Test func textTimeNeedsItsSizesAndPerLayerDepthsTheirLayers() throws {
        var config = try decodeConfig(UNet2DConditionConfig.self, from: TinySDXL.folder.appendingPathComponent("unet/config.json"))
        config.addition_time_embed_dim = nil
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "unet.json", message: "key \"addition_time_embed_dim\" is needed with addition_embed_type \"text_time\"")) {
            try config.validate(file: "unet.json")
        }
        config = UNet2DConditionConfig()
        config.transformer_layers_per_block = .each([.same(1), .each([1]), .same(1), .same(1)])
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "unet.json", message: "key \"transformer_layers_per_block.1\" has 1 entries, the block has 2 layers")) {
            try config.validate(file: "unet.json")
        }
        config = UNet2DConditionConfig()
        config.reverse_transformer_layers_per_block = [.same(1)]
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "unet.json", message: "key \"reverse_transformer_layers_per_block\" has 1 entries, down_block_types has 4")) {
            try config.validate(file: "unet.json")
        }
    }
}
