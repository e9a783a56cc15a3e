import Foundation
import NN
import Testing
import Torch

import Rewards
@testable import StableDiffusion
@testable import TextCraftor

/// `synth-model`'s presets against diffusers, transformers and open_clip (scripts/parity/make_preset_fixtures.py):
/// the same models built on the meta device, so a 1-billion-parameter model costs nothing here.
@Suite struct ModelPresetTests {
    func fixture(_ preset: ModelPreset) throws -> [String: [String: Any]] {
        let url = repository.appendingPathComponent("Tests/TextCraftorTests/Fixtures/presets/\(preset.rawValue).json")
        return try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: [String: Any]]
    }

    /// Every value the reference config names, equal in ours (nested dictionaries likewise); numbers compare as
    /// numbers (1 and 1.0). Returns the paths that differ.
    func differences(_ reference: Any, _ ours: Any?, path: String) -> [String] {
        if let reference = reference as? [String: Any] {
            guard let ours = ours as? [String: Any] else { return ["\(path): missing"] }
            return reference.keys.sorted().flatMap { differences(reference[$0]!, ours[$0], path: "\(path).\($0)") }
        }
        guard let ours else { return ["\(path): missing (reference \(reference))"] }
        if let a = reference as? [Any], let b = ours as? [Any] {
            return a.count == b.count && zip(a, b).allSatisfy { "\($0)" == "\($1)" || ($0 as? NSNumber) == ($1 as? NSNumber) }
                ? [] : ["\(path): \(b) vs reference \(a)"]
        }
        if let a = reference as? NSNumber, let b = ours as? NSNumber, !(reference is String) {
            return a == b ? [] : ["\(path): \(b) vs reference \(a)"]
        }
        return "\(reference)" == "\(ours)" ? [] : ["\(path): \(ours) vs reference \(reference)"]
    }

    @Test(arguments: ModelPreset.allCases)
    func keysShapesAndConfigsMatchTheReferenceLibraries(preset: ModelPreset) throws {
        let reference = try fixture(preset)
        var seen: [String] = []
        var parameters = 0
        try preset.forEachComponent({ VarBuilder(shapesOn: .meta) }) { component in
            seen.append(component.name)
            let expected = try #require(reference[component.name], "no reference for \(component.name)")
            let shapes = (expected["shapes"] as! [String: [Int]])
            let ours = component.module.stateDict()
            #expect(ours.values.allSatisfy { $0.device == .meta })
            let missing = Set(shapes.keys).subtracting(ours.keys).sorted()
            let extra = Set(ours.keys).subtracting(shapes.keys).sorted()
            #expect(missing.isEmpty, "\(preset).\(component.name): keys the reference has and we lack: \(missing.prefix(5))")
            #expect(extra.isEmpty, "\(preset).\(component.name): keys we have and the reference lacks: \(extra.prefix(5))")
            let wrong = shapes.keys.sorted().filter { ours[$0].map { $0.shape } != shapes[$0] && ours[$0] != nil }
            #expect(wrong.isEmpty, "\(preset).\(component.name): shapes differ for \(wrong.prefix(5))")
            let configDifferences = differences(expected["config"]!, component.config, path: component.name)
            #expect(configDifferences.isEmpty, "\(preset): \(configDifferences)")
            parameters += ours.values.reduce(0) { $0 + $1.elementCount }
        }
        #expect(seen == preset.componentNames())
        #expect(Set(seen) == Set(reference.keys).subtracting(["scheduler"]))
        let millions = Double(parameters) / 1e6
        let expected: Double = switch preset {
        case .sd15: 1066.2  // 123.1M text + 859.5M UNet + 83.7M VAE
        case .sd21: 1290.0
        case .sdxl: 3468.8  // 123.1M + 694.7M text + 2567.5M UNet + 83.7M VAE
        case .pickscore, .hpsv2: 986.1
        case .aesthetic: 428.5
        case .aesthetic25: 429.5  // 428.2M SigLIP so400m vision tower + 1.3M head
        case .imagereward: 446.7  // 303.3M ViT-L/16 + 142.3M BERT with cross-attention + 0.9M head + projections
        }
        #expect(abs(millions - expected) < 0.1, "\(preset): \(millions)M parameters")
    }

    /// ImageReward's med_config.json is read as the model's config, and the placeholder vocabulary puts BERT's
    /// special tokens at BERT's ids.
    @Test func imageRewardConfigAndPlaceholderVocabulary() throws {
        let data = try JSONSerialization.data(withJSONObject: ModelPreset.imageRewardMedConfig)
        let decoded = try JSONDecoder().decode(BLIPTextConfig.self, from: data)
        #expect(decoded == ModelPreset.imageRewardText)
        let tokenizer = try ModelPreset.placeholderWordPiece()
        #expect(ModelPreset.placeholderVocabulary.count == 30522 && Set(ModelPreset.placeholderVocabulary).count == 30522)
        let specials: [Int] = [tokenizer.padTokenId, tokenizer.unknownTokenId, tokenizer.clsTokenId, tokenizer.sepTokenId]
        #expect(specials == [0, 100, 101, 102])
        #expect(tokenizer.vocabularySize == ModelPreset.imageRewardText.vocab_size)
        #expect(tokenizer.encode("[DEC]") == [Int](arrayLiteral: 30522))
        #expect(tokenizer.tokens("Red cat!") == ["r", "##e", "##d", "c", "##a", "##t", "!"])
    }

    /// The SD presets' UNets fit their text encoders as the loader checks it (SDXL: 768 + 1280 = 2048 wide text,
    /// 1280 + 6 x 256 = 2816 into add_embedding).
    @Test func presetUNetsFitTheirTextEncoders() throws {
        try StableDiffusionPipeline.checkComponents(
            unet: ModelPreset.sdxlUNet, unetConfigFile: "unet/config.json", text: ModelPreset.vitL14Text, text2: ModelPreset.bigGText)
        try StableDiffusionPipeline.checkComponents(
            unet: ModelPreset.sd15UNet, unetConfigFile: "unet/config.json", text: ModelPreset.vitL14Text, text2: nil)
        try StableDiffusionPipeline.checkComponents(
            unet: ModelPreset.sd21UNet, unetConfigFile: "unet/config.json", text: ModelPreset.sd21Text, text2: nil)
    }

    /// The pipelines' scheduler configs are the released ones; SD 2.1's tokenizer pads with "!", and so does
    /// SDXL's second.
    @Test(arguments: [ModelPreset.sd15, .sd21, .sdxl])
    func schedulerAndTokenizerAreTheReleasedOnes(preset: ModelPreset) throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("preset-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try preset.writeSchedulerAndTokenizer(to: folder)
        let written = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("scheduler/scheduler_config.json")))
        let found = differences(try fixture(preset)["scheduler"]!["config"]!, written, path: "scheduler")
        #expect(found.isEmpty, "\(found)")
        let tokenizer = try CLIPTokenizer(directory: folder.appendingPathComponent("tokenizer"))
        #expect(tokenizer.padTokenId == (preset == .sd21 ? 0 : 49407))
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("model_index.json"))) as! [String: Any]
        let schedulers: [ModelPreset: String] = [.sd15: "PNDMScheduler", .sd21: "DDIMScheduler", .sdxl: "EulerDiscreteScheduler"]
        #expect((index["scheduler"] as? [String])?.last == schedulers[preset])
        if preset == .sdxl {
            #expect(try CLIPTokenizer(directory: folder.appendingPathComponent("tokenizer_2")).padTokenId == 0)
            #expect(index["_class_name"] as? String == "StableDiffusionXLPipeline")
            #expect((index["text_encoder_2"] as? [String])?.last == "CLIPTextModelWithProjection")
        }
    }
}

/// `FLOPCounter`'s analytic counts on SD 1.5's real shapes (built on the meta device, so nothing is computed)
/// against torch.utils.flop_counter.FlopCounterMode on diffusers' and transformers' models (flops.json).
@Suite struct FLOPCountTests {
    let reference: [String: Double] = {
        let url = repository.appendingPathComponent("Tests/TextCraftorTests/Fixtures/presets/flops.json")
        return try! JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Double]
    }()

    func sd15() throws -> [String: any Module] {
        var models: [String: any Module] = [:]
        try ModelPreset.sd15.forEachComponent({ VarBuilder(shapesOn: .meta) }) { models[$0.name] = $0.module }
        return models
    }

    @Test func sd15CountsMatchTorchsFlopCounter() throws {
        let models = try sd15()
        let unet = models["unet"] as! UNet2DConditionModel
        let vae = models["vae"] as! AutoencoderKL
        let text = models["text_encoder"] as! CLIPTextModel
        func near(_ ours: Double, _ key: String, within tolerance: Double) {
            let theirs = reference[key]!
            print("FLOPs \(key): ours \(ours / 1e12) TFLOP, torch.utils.flop_counter \(theirs / 1e12) TFLOP")
            #expect(abs(ours / theirs - 1) <= tolerance, "\(key): ours \(ours / 1e12) TFLOP, torch \(theirs / 1e12) TFLOP")
        }
        let x = Tensor.zeros([2, 4, 64, 64], device: .meta), c = Tensor.zeros([2, 77, 768], device: .meta)
        let t = Tensor([Float(500), 500]).to(.meta)
        let (_, forward) = withNoGrad { FLOPCounter.counting { unet(x, timestep: t, encoderHiddenStates: c) } }
        near(forward.forward, "unet_forward", within: 1e-9)
        #expect(forward.backward == 0)  // no gradients wanted: no backward
        // With gradients to the latents and the embeddings (frozen weights), the backward estimate.
        let (_, graph) = FLOPCounter.counting {
            unet(x.requiringGrad(), timestep: t, encoderHiddenStates: c.requiringGrad())
        }
        #expect(graph.forward == forward.forward)
        near(graph.backward, "unet_backward_frozen", within: 1e-9)
        let (_, decode) = withNoGrad { FLOPCounter.counting { vae.decode(Tensor.zeros([1, 4, 64, 64], device: .meta)) } }
        near(decode.forward, "vae_decode", within: 1e-9)
        let ids = Tensor.zeros([2, 77], dtype: .int64, device: .meta)
        let (_, encode) = withNoGrad { FLOPCounter.counting { text(ids) } }
        near(encode.forward, "text_encoder", within: 1e-9)
    }
}
