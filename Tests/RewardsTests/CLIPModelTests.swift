import Foundation
import NN
import StableDiffusion
import Testing
import Torch

@testable import Rewards

@Suite struct CLIPModelTests {
    /// Both towers, both projections, the tokenizer found in the folder: everything transformers computed.
    @Test(arguments: ["pickscore", "clip"])
    func matchesTransformers(name: String) throws {
        let model = try CLIPModel.load(folder: HFFixtures.root.appendingPathComponent(name))
        func expected(_ key: String) throws -> Tensor { try HFFixtures.output("\(name).\(key)") }
        let ids = tokenIds(model.tokenizer, HFFixtures.prompts)
        #expect(ids.toArray(Int64.self) == (try expected("input_ids")).toArray(Int64.self))
        let pixels = try expected("pixels")
        let vision = model.visionModel(pixels, outputHiddenStates: true)
        #expect(vision.hiddenStates?.count == 3)
        #expect(HFFixtures.relativeError(vision.lastHiddenState, try expected("vision.last_hidden_state")) < 1e-5)
        #expect(HFFixtures.relativeError(vision.pooledOutput, try expected("vision.pooler_output")) < 1e-5)
        #expect(HFFixtures.relativeError(model.textModel(ids).pooledOutput, try expected("text.pooler_output")) < 1e-5)
        #expect(HFFixtures.relativeError(model.imageFeatures(pixels), try expected("image_embeds")) < 1e-5)
        #expect(HFFixtures.relativeError(model.textFeatures(ids), try expected("text_embeds")) < 1e-5)
    }

    /// PickScore_v1's older config.json: `text_config_dict` wins over `text_config` (quick_gelu and
    /// intermediate_size 99 there would not even load).
    @Test func textConfigDictOverridesTextConfig() throws {
        let config = try CLIPConfig.load(HFFixtures.pickscore.appendingPathComponent("config.json"))
        #expect(config.text_config.hidden_act == "gelu")
        #expect(config.text_config.intermediate_size == 37)
        #expect(config.text_config.eos_token_id == 2)
        #expect(config.vision_config.image_size == 32 && config.vision_config.patch_size == 8)
        #expect(config.vision_config.hidden_act == "gelu")
        #expect(config.projection_dim == 16)
        // transformers' defaults where keys are absent
        let empty = try JSONDecoder().decode(CLIPConfig.self, from: Data("{}".utf8))
        #expect(empty.vision_config == CLIPVisionConfig())
        #expect(empty.vision_config.patch_size == 32 && empty.vision_config.hidden_size == 768)
        #expect(empty.text_config == CLIPTextConfig() && empty.projection_dim == 512)
        #expect(empty.logit_scale_init_value == 2.6592)
    }

    /// The names are the checkpoint's, each tower's relative to itself; the position_ids buffers of the .bin are
    /// skipped (not parameters), so saving gives back the checkpoint less those.
    @Test func parameterNamesFollowTheCheckpoint() throws {
        let model = try CLIPModel.load(folder: HFFixtures.pickscore)
        let checkpoint = try Weights.open(HFFixtures.pickscore.appendingPathComponent("pytorch_model.bin"))
        let names = Set(model.namedParameters.map(\.name))
        #expect(names == Set(checkpoint.keys.filter { !$0.hasSuffix("position_ids") }))
        #expect(names.contains("vision_model.pre_layrnorm.weight") && names.contains("logit_scale"))
        #expect(model.textModel.namedParameters.first?.name == "embeddings.token_embedding.weight")
        #expect(model.textModel.namedParameters.count == 2 + 2 * 16 + 2)
        #expect(model.visionModel.namedParameters.allSatisfy { !$0.name.hasPrefix("vision_model") })
        #expect(model.visionModel.namedParameters.count == 3 + 2 + 2 * 16 + 2)
        #expect(abs(model.logitScaleParameter.item() - (try checkpoint.tensor("logit_scale")).item()) == 0)
    }

    /// A fresh model (no checkpoint) has the shapes of its config and transformers' initial logit_scale.
    @Test func freshModelFromConfig() throws {
        let config = try CLIPConfig.load(HFFixtures.clip.appendingPathComponent("config.json"))
        let tokenizer = try CLIPTokenizer(directory: HFFixtures.clip.appendingPathComponent("tokenizer"))
        let model = try CLIPModel(VarBuilder(initializingWith: Generator(seed: 3)), config: config, tokenizer: tokenizer)
        #expect(abs(model.logitScaleParameter.item() - 2.6592) < 1e-6)
        let loaded = try CLIPModel.load(folder: HFFixtures.clip)
        #expect(Dictionary(uniqueKeysWithValues: model.namedParameters.map { ($0.name, $0.tensor.shape) })
            == Dictionary(uniqueKeysWithValues: loaded.namedParameters.map { ($0.name, $0.tensor.shape) }))
        let embeddings = model.imageFeatures(Tensor.randn([1, 3, 64, 64], generator: Generator(seed: 4)))
        #expect(embeddings.shape == [1, 16])
    }

    /// A config whose vision tower does not fit the weights: the error names every key that differs.
    @Test func towerThatDoesNotMatchItsConfig() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let files = FileManager.default
        try files.copyItem(at: HFFixtures.clip.appendingPathComponent("tokenizer"), to: folder.appendingPathComponent("tokenizer"))
        try files.copyItem(
            at: HFFixtures.clip.appendingPathComponent("model.safetensors"), to: folder.appendingPathComponent("model.safetensors"))
        var json = try String(contentsOf: HFFixtures.clip.appendingPathComponent("config.json"), encoding: .utf8)
        json = json.replacingOccurrences(of: "\"patch_size\": 8", with: "\"patch_size\": 16")
        try json.write(to: folder.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        let weights = folder.appendingPathComponent("model.safetensors").path
        let error = #expect(throws: WeightLoadingError.self) { try CLIPModel.load(folder: folder) }
        #expect(error?.description == "\(weights) does not fit the model: "
            + "'vision_model.embeddings.patch_embedding.weight' has shape [40, 3, 8, 8] in the checkpoint, "
            + "the model expects [40, 3, 16, 16]; "
            + "'vision_model.embeddings.position_embedding.weight' has shape [65, 40] in the checkpoint, "
            + "the model expects [17, 40]")
    }

    @Test func unknownVisionActivationNamesItsKey() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        try FileManager.default.copyItem(
            at: HFFixtures.clip.appendingPathComponent("model.safetensors"), to: folder.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(
            at: HFFixtures.clip.appendingPathComponent("tokenizer"), to: folder.appendingPathComponent("tokenizer"))
        let config = folder.appendingPathComponent("config.json")
        var json = try String(contentsOf: HFFixtures.clip.appendingPathComponent("config.json"), encoding: .utf8)
        let vision = try #require(json.range(of: "\"vision_config\""))
        json = json.replacingOccurrences(of: "\"quick_gelu\"", with: "\"swish9\"", range: vision.lowerBound..<json.endIndex)
        try json.write(to: config, atomically: true, encoding: .utf8)
        #expect(throws: StableDiffusionError.unsupported(
            file: config.path, key: "vision_config.hidden_act", value: "swish9",
            supported: ["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"])) {
            try CLIPModel.load(folder: folder)
        }
    }

    /// A lone text encoder's config is not taken for a CLIPModel's.
    @Test func otherModelTypeIsRefused() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let config = folder.appendingPathComponent("config.json")
        try #"{"model_type": "clip_text_model", "hidden_size": 32}"#.write(to: config, atomically: true, encoding: .utf8)
        #expect(throws: StableDiffusionError.invalidConfig(
            file: config.path, message: "model_type \"clip_text_model\" is not a CLIPModel config (expected \"clip\")")) {
            try CLIPModel.load(folder: folder)
        }
    }

    /// The bundled 49408-token tokenizer would index past a 1000-row embedding table: refused when loading.
    @Test func tokenizerLargerThanTheVocabularyIsRefused() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(
                at: HFFixtures.clip.appendingPathComponent(file), to: folder.appendingPathComponent(file))
        }
        #expect(throws: StableDiffusionError.invalidTokenizer(
            file: "the bundled CLIP tokenizer",
            message: "the tokenizer has 49408 tokens but text_config.vocab_size in "
                + "\(folder.appendingPathComponent("config.json").path) is 1000")) {
            try CLIPModel.load(folder: folder)
        }
    }
}
