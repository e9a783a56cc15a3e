import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// The LoRA files of scripts/parity/make_lora_fixtures.py (kohya, PEFT and older diffusers names, SD 1.5 and SDXL),
/// files textcraftor's own writer made (`ours_*`: `train --adapter lora`), and what diffusers' `load_lora_weights`
/// computes with them.
enum LoRAFixtures {
    static let folder = fixturesURL.appendingPathComponent("lora")
    static let prompts = ["a red circle on a blue background", "two small squares, photo"]

    static func file(_ name: String) -> String { folder.appendingPathComponent("\(name).safetensors").path }

    static func output(_ name: String) throws -> Tensor {
        try Tensor(SafeTensorsFile(url: folder.appendingPathComponent("outputs_lora.safetensors")).tensorData(name))
    }
}

/// max |a - b| / max |b|.
func relativeDifference(_ a: Tensor, _ b: Tensor) -> Double {
    maxAbsDifference(a, b) / b.to(.float64).abs().max().item()
}

@Suite struct LoRATests {
    func pipeline(sdxl: Bool) throws -> StableDiffusionPipeline {
        try StableDiffusionPipeline.load(folder: sdxl ? TinySDXL.folder : TinySD.sd15.folder)
    }

    func embeddings(_ pipeline: StableDiffusionPipeline) -> Conditioning {
        withNoGrad { pipeline.encode(pipeline.promptTokens(LoRAFixtures.prompts)) }
    }

    /// Prompt embeddings (and SDXL's pooled embeddings, and the UNet for files with UNet parts) under a LoRA equal
    /// diffusers' within 1e-5 relative, at scale 1 and at 0.5 (diffusers' fuse_lora(lora_scale=0.5)); the LoRA
    /// changes them by far more than that.
    @Test(arguments: ["sd15_kohya", "sd15_peft", "sd15_old", "sdxl_kohya", "sdxl_peft"])
    func embeddingsMatchDiffusers(name: String) throws {
        let sdxl = name.hasPrefix("sdxl")
        for scale in [1.0, 0.5] {
            let pipeline = try pipeline(sdxl: sdxl)
            try pipeline.mergeLoRAs([LoRASpec(path: LoRAFixtures.file(name), scale: scale)])
            let got = embeddings(pipeline)
            let prefix = scale == 1 ? name : "\(name).fused_0.5"
            let expected = try LoRAFixtures.output("\(prefix).prompt_embeds")
            #expect(relativeDifference(got.hiddenStates, expected) < 1e-5, "\(prefix) prompt_embeds")
            let base = try LoRAFixtures.output(sdxl ? "base_xl.prompt_embeds" : "base.prompt_embeds")
            #expect(relativeDifference(expected, base) > 1e-2, "the fixture's LoRA changes the embeddings")
            if sdxl {
                #expect(relativeDifference(got.textEmbeds!, try LoRAFixtures.output("\(prefix).pooled")) < 1e-5, "\(prefix) pooled")
            }
            if scale == 1, name == "sd15_kohya" || name == "sd15_peft" {
                try checkUNet(pipeline, name)
            }
        }
    }

    /// textcraftor's own files (one training step, kohya and PEFT, SD 1.5 and SDXL both encoders): diffusers reads
    /// them to the embeddings we compute, within 1e-5 relative.
    @Test(arguments: ["ours_sd15_kohya", "ours_sd15_peft", "ours_sdxl_kohya", "ours_sdxl_peft"])
    func ourFilesGiveDiffusersOurEmbeddings(name: String) throws {
        let sdxl = name.contains("sdxl")
        let pipeline = try pipeline(sdxl: sdxl)
        try pipeline.mergeLoRAs([LoRASpec(path: LoRAFixtures.file(name))])
        let got = embeddings(pipeline)
        let expected = try LoRAFixtures.output("\(name).prompt_embeds")
        #expect(relativeDifference(got.hiddenStates, expected) < 1e-5)
        #expect(relativeDifference(expected, try LoRAFixtures.output(sdxl ? "base_xl.prompt_embeds" : "base.prompt_embeds")) > 1e-3)
        if sdxl { #expect(relativeDifference(got.textEmbeds!, try LoRAFixtures.output("\(name).pooled")) < 1e-5) }
    }

    /// The UNet's noise prediction under the LoRA (its UNet parts: attention, feed-forward, 1x1 and 3x3 convs) equals
    /// diffusers'.
    func checkUNet(_ pipeline: StableDiffusionPipeline, _ name: String) throws {
        let sample = try LoRAFixtures.output("unet.sample"), timestep = try LoRAFixtures.output("unet.timestep")
        let context = try LoRAFixtures.output("unet.context")
        let unet = withNoGrad { pipeline.unet(sample, timestep: timestep, encoderHiddenStates: context) }
        let expected = try LoRAFixtures.output("\(name).unet")
        #expect(relativeDifference(unet, expected) < 1e-5, "\(name) unet")
        #expect(relativeDifference(expected, try LoRAFixtures.output("base.unet")) > 1e-3)
    }

    /// Scale 0 and a freshly initialised network (up = 0) leave the model exactly as it is.
    @Test func scaleZeroAndFreshAdaptersAreTheBaseModelExactly() throws {
        let base = embeddings(try pipeline(sdxl: true))
        let scaled = try pipeline(sdxl: true)
        try scaled.mergeLoRAs([LoRASpec(path: LoRAFixtures.file("sdxl_kohya"), scale: 0)])
        let zero = embeddings(scaled)
        #expect(maxAbsDifference(zero.hiddenStates, base.hiddenStates) == 0)
        #expect(maxAbsDifference(zero.textEmbeds!, base.textEmbeds!) == 0)

        let fresh = try pipeline(sdxl: true)
        let network = LoRANetwork(
            encoders: [(.textEncoder, fresh.textEncoder), (.textEncoder2, fresh.textEncoder2!.textModel)], twoEncoders: true,
            rank: 4, alpha: 8, dropout: 0, targets: LoRANetwork.targetNames, generator: Generator(seed: 1))
        #expect(network.entries.count == 2 * 3 * 6)
        #expect(network.entries.allSatisfy { $0.adapter.down.abs().max().item() > 0 && $0.adapter.up.abs().max().item() == 0 })
        let initial = embeddings(fresh)
        #expect(maxAbsDifference(initial.hiddenStates, base.hiddenStates) == 0)
        #expect(maxAbsDifference(initial.textEmbeds!, base.textEmbeds!) == 0)
    }

    /// What LoRANetwork writes, in either format, LoRAFile reads back to the embeddings the adapters compute, under
    /// the published names (kohya's lora_te1_/lora_te2_ and alpha; PEFT's text_encoder_2. with alpha folded in).
    @Test(arguments: [LoRAFormat.kohya, .peft])
    func writtenFilesReadBackToTheAdaptersEmbeddings(format: LoRAFormat) throws {
        let trained = try pipeline(sdxl: true)
        let network = LoRANetwork(
            encoders: [(.textEncoder, trained.textEncoder), (.textEncoder2, trained.textEncoder2!.textModel)], twoEncoders: true,
            rank: 2, alpha: 6, dropout: 0, targets: ["q_proj", "v_proj", "fc2"], generator: Generator(seed: 3))
        let generator = Generator(seed: 4)
        withNoGrad { for entry in network.entries { entry.adapter.up.copy_(Tensor.randn(entry.adapter.up.shape, generator: generator) * 0.3) } }
        let expected = embeddings(trained)
        let folder = try temporaryFolder("lora")
        defer { try? FileManager.default.removeItem(at: folder) }
        let url = folder.appendingPathComponent("lora.safetensors")
        let state = network.stateDict(format)
        try Tensor.save(state, to: url)
        switch format {
        case .kohya:
            #expect(state["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"]?.shape == [2, 32])
            #expect(state["lora_te2_text_model_encoder_layers_2_mlp_fc2.lora_up.weight"]?.shape == [48, 2])
            #expect(state["lora_te2_text_model_encoder_layers_2_mlp_fc2.alpha"]?.item() == 6)
        case .peft:
            #expect(state["text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj.lora_A.weight"]?.shape == [2, 48])
            #expect(!state.keys.contains { $0.hasSuffix("alpha") })
        }
        #expect(state.count == network.entries.count * (format == .kohya ? 3 : 2))
        let file = try LoRAFile(url)
        #expect(file.format == format.rawValue)
        let merged = try pipeline(sdxl: true)
        try merged.mergeLoRAs([LoRASpec(path: url.path)])
        let got = embeddings(merged)
        #expect(relativeDifference(got.hiddenStates, expected.hiddenStates) < 1e-5)
        #expect(relativeDifference(got.textEmbeds!, expected.textEmbeds!) < 1e-5)
    }

    /// Several LoRAs add up: a file at scale 0.5 twice is the file at scale 1.
    @Test func severalLoRAsAddUp() throws {
        let once = try pipeline(sdxl: false), twice = try pipeline(sdxl: false)
        try once.mergeLoRAs([LoRASpec(path: LoRAFixtures.file("sd15_peft"))])
        try twice.mergeLoRAs([LoRASpec(path: LoRAFixtures.file("sd15_peft"), scale: 0.5), LoRASpec(path: LoRAFixtures.file("sd15_peft"), scale: 0.5)])
        #expect(relativeDifference(embeddings(twice).hiddenStates, embeddings(once).hiddenStates) < 1e-5)
    }

    /// `inspect`'s summary: format, base, ranks, alphas, modules per part and kind.
    @Test func summaryNamesFormatBaseRanksAndTargets() throws {
        let kohya = try LoRAFile(URL(fileURLWithPath: LoRAFixtures.file("sd15_kohya"))).summary
        #expect(kohya[0] == "LoRA: kohya names, 32 modules, for stable-diffusion-v1")
        #expect(kohya[1] == "rank: 4 (32)")
        #expect(kohya[2] == "alpha: 2.0 (32)")
        #expect(kohya[3] == "text_encoder: fc1 (3), fc2 (3), k_proj (3), out_proj (3), q_proj (3), v_proj (3)")
        #expect(kohya[4] == "unet: conv1 (conv 3x3) (1), ff_net_0_proj (1), ff_net_2 (1), proj_in (conv 1x1) (1), proj_out (conv 1x1) (1), time_emb_proj (1), to_k (2), to_out_0 (2), to_q (2), to_v (2)")
        let old = try LoRAFile(URL(fileURLWithPath: LoRAFixtures.file("sd15_old"))).summary
        #expect(old[0] == "LoRA: diffusers (lora_linear_layer) names, 18 modules, for unknown (text encoder width 32)")
        #expect(old[2] == "alpha: none stored (= rank)")
        let xl = try LoRAFile(URL(fileURLWithPath: LoRAFixtures.file("sdxl_peft"))).summary
        #expect(xl[0] == "LoRA: peft names, 36 modules, for SDXL")
    }

    func write(_ tensors: [String: Tensor], metadata: [String: String]? = nil) throws -> URL {
        let url = try temporaryFolder("lora").appendingPathComponent("bad.safetensors")
        try Tensor.save(tensors, metadata: metadata, to: url)
        return url
    }

    /// Bad files: one line naming the file (and the key), and the model is left as it was.
    @Test func badFilesAreOneLineErrorsAndChangeNothing() throws {
        let q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        let noMatch = try write(["lora_te_text_model_encoder_layers_9_self_attn_q_proj.lora_down.weight": .zeros([2, 32]),
                                 "lora_te_text_model_encoder_layers_9_self_attn_q_proj.lora_up.weight": .zeros([32, 2])])
        let rank = try write(["\(q).lora_down.weight": .zeros([2, 32]), "\(q).lora_up.weight": .zeros([32, 3])])
        let wide = try write(["\(q).lora_down.weight": .zeros([2, 1024]), "\(q).lora_up.weight": .zeros([1024, 2])])
        let stray = try write(["\(q).lora_down.weight": .zeros([2, 32]), "\(q).lora_up.weight": .zeros([32, 2]), "model.weight": .zeros([2])])
        let xl = LoRAFixtures.file("sdxl_kohya"), sd = LoRAFixtures.file("sd15_kohya")
        let cases: [(String, Bool, String)] = [
            ("/nonexistent/x.safetensors", false, "/nonexistent/x.safetensors: no such LoRA file"),
            (noMatch.path, false,
             "\(noMatch.path): 'lora_te_text_model_encoder_layers_9_self_attn_q_proj' matches no module of the model's text_encoder"),
            (rank.path, false, "\(rank.path): '\(q)': rank mismatch: the down weight has rank 2, the up weight 3"),
            (wide.path, false,
             "\(wide.path) is a LoRA for SD 2.x ('\(q)' changes a [1024, 1024] weight, the model's is [32, 32]), and the model is Stable Diffusion 1.x/2.x"),
            (stray.path, false,
             "\(stray.path): 'model.weight' is not a LoRA tensor (expected lora_down/lora_up/alpha, lora_A/lora_B or lora_linear_layer.down/up)"),
            (xl, false, "\(xl) is a LoRA for sdxl_base_v1-0 (keys for two text encoders), and the model is Stable Diffusion 1.x/2.x"),
            (sd, true, "\(sd) is a LoRA for stable-diffusion-v1 (lora_te_ keys: one text encoder), and the model is Stable Diffusion XL"),
        ]
        for (path, sdxl, message) in cases {
            let pipeline = try pipeline(sdxl: sdxl)
            let before = embeddings(pipeline).hiddenStates
            #expect(throws: StableDiffusionError.invalidArgument(message)) {
                try pipeline.mergeLoRAs([LoRASpec(path: LoRAFixtures.file("sd15_peft")), LoRASpec(path: path)].suffix(sdxl ? 1 : 2).map { $0 })
            }
            #expect(maxAbsDifference(embeddings(pipeline).hiddenStates, before) == 0, "\(path) changed the model")
        }
        #expect(throws: StableDiffusionError.invalidArgument("x.safetensors:inf: the scale is not a finite number")) {
            try LoRASpec(spec: "x.safetensors:inf")
        }
        #expect(try LoRASpec(spec: "a:b.safetensors:0.7") == LoRASpec(path: "a:b.safetensors", scale: 0.7))
    }
}
