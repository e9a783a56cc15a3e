import Foundation
import NN
import Testing
import Torch

@testable import Rewards
@testable import StableDiffusion

/// The fixtures of scripts/parity/make_reward_fixtures_openclip.py (open_clip 3.3.0, torch 2.11.0).
enum OpenCLIPFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("openclip")
    static let tokenizerFolder = root.appendingPathComponent("tokenizer")
    /// Model A (the ViT-H-14 recipe, tiny) in its three files: safetensors, HPSv2's torch.save, and the same with
    /// DDP's `module.` prefix.
    static let weightFiles = ["open_clip_model.safetensors", "hps_tiny.pt", "hps_tiny_ddp.pt"]
    static let prompts = ["a photo of a red cat", "An astronaut riding a horse, 4k, trending on artstation!!"]

    static func url(_ path: String) -> URL { root.appendingPathComponent(path) }

    static func tensor(_ file: String, _ name: String) throws -> Tensor {
        try SafeTensorsFile(url: url(file)).tensor(name)
    }

    static func tiny(_ file: String = "open_clip_model.safetensors") throws -> OpenCLIPModel {
        let config = try OpenCLIPConfig.load(from: url("tiny/open_clip_config.json"))
        return try OpenCLIPModel.load(checkpoint: url("tiny/\(file)"), config: config, tokenizerFolder: tokenizerFolder)
    }

    static func tokenizer() throws -> CLIPTokenizer { try CLIPTokenizer(directory: tokenizerFolder) }

    /// max |a − b| / max |b|.
    static func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
        let (a, b) = (a.to(.float64), b.to(.float64))
        return (a - b).abs().max().item() / b.abs().max().item()
    }

    static func ids(_ rows: [[Int]]) -> Tensor { Tensor(rows.flatMap { $0.map(Int64.init) }, shape: [rows.count, rows[0].count]) }
}

/// A checkpoint of shapes only: every tensor is a broadcast zero, so the largest models build without memory.
struct ShapesOnly: WeightSource {
    let origin: String
    let shapes: [String: [Int]]
    var keys: [String] { shapes.keys.sorted() }
    func info(_ key: String) -> (dtype: DType, shape: [Int])? { shapes[key].map { (.float32, $0) } }
    func tensor(_ key: String) throws -> Tensor {
        let shape = shapes[key]!
        return Tensor.zeros(shape.map { _ in 1 }).expand(shape)
    }
}

@Suite struct OpenCLIPTests {
    typealias F = OpenCLIPFixtures

    /// Model A from each file: image embeddings of the preprocessed pixels of both modes, text embeddings of
    /// open_clip's ids and of our tokenizer's, logit_scale.
    @Test(arguments: OpenCLIPFixtures.weightFiles)
    func embeddingsMatchOpenCLIP(file: String) throws {
        let model = try F.tiny(file)
        let outputs = "tiny/outputs.safetensors"
        for mode in PreprocessingMode.allCases {
            let embeds = model.imageEmbeddings(try F.tensor(outputs, "pixels_\(mode)"))
            let error = F.relativeError(embeds, try F.tensor(outputs, "image_embeds_\(mode)"))
            #expect(embeds.shape == [2, 24])
            #expect(error < 1e-5, "image embeddings, \(mode): relative error \(error)")
        }
        let expected = try F.tensor(outputs, "text_embeds")
        let fromOpenCLIPIds = F.relativeError(model.encodeText(try F.tensor(outputs, "ids")), expected)
        let fromOurIds = F.relativeError(model.textEmbeddings(tokenIds(model.tokenizer, F.prompts)), expected)
        #expect(fromOpenCLIPIds < 1e-5, "text embeddings from open_clip's ids: \(fromOpenCLIPIds)")
        #expect(fromOurIds < 1e-5, "text embeddings from our tokenizer's ids: \(fromOurIds)")
        #expect(abs(model.logitScale!.item() - (try F.tensor(outputs, "logit_scale")).item()) < 1e-7)
    }

    /// Model B: quick_gelu, LayerScale, no ln_pre, average pooling with ln_post after it, mlp_ratio 2.6, a biased
    /// text projection, a bidirectional text tower pooled at the last position.
    @Test func variantMatchesOpenCLIP() throws {
        let config = try OpenCLIPConfig.load(from: F.url("variant/model_config.json"))
        #expect(config.quick_gelu && config.vision_cfg.mlpWidth == 62 && config.vision_cfg.pool_type == "avg")
        let model = try OpenCLIPModel.load(
            checkpoint: F.url("variant/open_clip_model.safetensors"), config: config, tokenizerFolder: F.tokenizerFolder)
        let outputs = "variant/outputs.safetensors"
        let image = F.relativeError(model.encodeImage(try F.tensor(outputs, "pixels")), try F.tensor(outputs, "image_embeds"))
        #expect(image < 1e-5, "image embeddings: \(image)")
        let expected = try F.tensor(outputs, "text_embeds")
        let ours = tokenIds(model.tokenizer, F.prompts)
        let text = F.relativeError(model.textEmbeddings(ours), expected)
        #expect(text < 1e-5, "text embeddings: \(text)")
        // Pooled at the last position without a causal mask, the padding is seen: ours (the end token) is not
        // open_clip's (0), which is why textEmbeddings rewrites it.
        let unpadded = F.relativeError(model.encodeText(ours), expected)
        #expect(unpadded > 1e-2, "our padding should change this tower's output: \(unpadded)")
    }

    /// Our tokenizer and open_clip's SimpleTokenizer agree up to padding: the 1000-token fixture tokenizer against
    /// open_clip's on the same merges, and the bundled one against open_clip's own (ViT-H-14's).
    @Test func tokenizerGivesOpenCLIPIds() throws {
        struct Ids: Decodable { let prompts: [String]; let ids: [[Int]]; let ids_full: [[Int]] }
        let data = try Data(contentsOf: F.url("ids.json"))
        let expected = try JSONDecoder().decode(Ids.self, from: data)
        let model = try F.tiny()
        let small = model.openCLIPPadding(tokenIds(try F.tokenizer(), expected.prompts))
        #expect(small.toArray(Int64.self) == expected.ids.flatMap { $0.map(Int64.init) })
        let bundled = try OpenCLIPModel.load(
            ShapesOnly(origin: "shapes", shapes: try presetShapes("ViT-L-14")), config: .vitL14)
        #expect(bundled.tokenizer.vocabularySize == 49408)
        let full = bundled.openCLIPPadding(tokenIds(bundled.tokenizer, expected.prompts))
        #expect(full.toArray(Int64.self) == expected.ids_full.flatMap { $0.map(Int64.init) })
        // The long prompt is truncated with the end token kept last, as open_clip does.
        #expect(expected.ids_full.last!.last == 49407)
        // open_clip's padding is a fixed point.
        let theirs = F.ids(expected.ids)
        #expect(model.openCLIPPadding(theirs).toArray(Int64.self) == theirs.toArray(Int64.self))
    }

    func presetShapes(_ name: String) throws -> [String: [Int]] {
        let data = try Data(contentsOf: F.url("presets/shapes.json"))
        return try JSONDecoder().decode([String: [String: [Int]]].self, from: data)[name]!
    }

    /// open_clip's own config files decode to the presets, and the presets build exactly the keys and shapes of
    /// the models open_clip builds from them (strict loading of a shapes-only checkpoint).
    @Test(arguments: ["ViT-H-14", "ViT-g-14", "ViT-L-14", "ViT-bigG-14"])
    func presetsAreOpenCLIPsConfigs(name: String) throws {
        let preset = try OpenCLIPConfig.preset(named: name)
        #expect(try OpenCLIPConfig.load(from: F.url("presets/\(name).json")) == preset)
        let shapes = try presetShapes(name)
        let model = try OpenCLIPModel.load(ShapesOnly(origin: name, shapes: shapes), config: preset)
        #expect(model.namedParameters.count == shapes.count)
        #expect(model.imageSize == 224)
    }

    @Test func presetNumbers() throws {
        let h = OpenCLIPConfig.vitH14, g = OpenCLIPConfig.vitG14
        #expect((h.embed_dim, h.vision_cfg.heads, h.vision_cfg.mlpWidth, h.vision_cfg.layerCount) == (1024, 16, 5120, 32))
        #expect((h.text_cfg.width, h.text_cfg.heads, h.text_cfg.layers, h.quick_gelu) == (1024, 16, 24, false))
        #expect((g.vision_cfg.heads, g.vision_cfg.mlpWidth, g.vision_cfg.layerCount) == (16, 6144, 40))
        #expect(try OpenCLIPConfig.preset(named: "ViT-L-14-quickgelu").quick_gelu)
        #expect(throws: StableDiffusionError.invalidArgument(
            "unknown open_clip model \"ViT-Q-14\" (known: ViT-H-14, ViT-L-14, ViT-bigG-14, ViT-g-14, each also with -quickgelu)"
        )) { try OpenCLIPConfig.preset(named: "ViT-Q-14") }
    }

    /// The hub file nests the model config under `model_cfg`; both forms read the same.
    @Test func hubConfigAndBareConfigAgree() throws {
        let hub = try OpenCLIPConfig.load(from: F.url("tiny/open_clip_config.json"))
        #expect(hub == (try OpenCLIPConfig.load(from: F.url("tiny/model_config.json"))))
        #expect((hub.embed_dim, hub.vision_cfg.imageSize, hub.vision_cfg.heads, hub.text_cfg.vocab_size) == (24, 32, 4, 1000))
        let encoded = try JSONEncoder().encode(hub)
        #expect(try JSONDecoder().decode(OpenCLIPConfig.self, from: encoded) == hub)
    }

    /// Weights that do not fit the config: the loader names each key and both shapes (under the file's own name
    /// for a DDP checkpoint).
    @Test(arguments: [("open_clip_model.safetensors", ""), ("hps_tiny_ddp.pt", "module.")])
    func towerNotMatchingItsConfig(file: String, prefix: String) throws {
        var config = try OpenCLIPConfig.load(from: F.url("tiny/model_config.json"))
        config.embed_dim = 16
        let url = F.url("tiny/\(file)")
        #expect(throws: WeightLoadingError.mismatch(
            origin: url.path, missing: [], unused: [],
            mismatched: [("\(prefix)visual.proj", [32, 24], [32, 16]), ("\(prefix)text_projection", [32, 24], [32, 16])]
        )) { try OpenCLIPModel.load(checkpoint: url, config: config, tokenizerFolder: F.tokenizerFolder) }
        do {
            _ = try OpenCLIPModel.load(checkpoint: url, config: config, tokenizerFolder: F.tokenizerFolder)
        } catch {
            #expect("\(error)" == "\(url.path) does not fit the model: "
                + "'\(prefix)visual.proj' has shape [32, 24] in the checkpoint, the model expects [32, 16]; "
                + "'\(prefix)text_projection' has shape [32, 24] in the checkpoint, the model expects [32, 16]")
        }
    }

    @Test func missingLayerScaleIsAMissingKey() throws {
        var config = try OpenCLIPConfig.load(from: F.url("tiny/model_config.json"))
        config.text_cfg.ls_init_value = 1e-5
        let url = F.url("tiny/open_clip_model.safetensors")
        let missing = ["transformer.resblocks.0.ls_1.gamma [32]", "transformer.resblocks.0.ls_2.gamma [32]",
                       "transformer.resblocks.1.ls_1.gamma [32]", "transformer.resblocks.1.ls_2.gamma [32]"]
        do {
            _ = try OpenCLIPModel.load(checkpoint: url, config: config, tokenizerFolder: F.tokenizerFolder)
            Issue.record("loaded weights without LayerScale into a model with it")
        } catch {
            #expect("\(error)" == "\(url.path) does not fit the model: 4 missing keys: \(missing.joined(separator: ", "))")
        }
    }

    /// A torch.save file whose pickle calls os.system("true"): refused at the global, never run.
    @Test func unknownPickleGlobalIsRefused() throws {
        let url = F.url("tiny/bad_unknown_global.pt")
        let config = try OpenCLIPConfig.load(from: F.url("tiny/model_config.json"))
        #expect(throws: SerializationError.disallowedGlobal(path: url.path, name: "os.system")) {
            try OpenCLIPModel.load(checkpoint: url, config: config, tokenizerFolder: F.tokenizerFolder)
        }
        do {
            _ = try HPSv2Reward.load(checkpoint: url, config: config, tokenizerFolder: F.tokenizerFolder)
        } catch {
            #expect("\(error)" == "refusing to load torch checkpoint \(url.path): data.pkl refers to 'os.system', "
                + "which is not an allowed global")
        }
    }

    @Test func unsupportedConfigsAreNamed() throws {
        let file = "config.json"
        func check(_ edit: (inout OpenCLIPConfig) -> Void, key: String, value: String, supported: [String]) throws {
            var config = OpenCLIPConfig.vitH14
            edit(&config)
            #expect(throws: StableDiffusionError.unsupported(file: file, key: key, value: value, supported: supported)) {
                try config.validate(file: file)
            }
        }
        try check({ $0.custom_text = true }, key: "custom_text", value: "true", supported: ["false"])
        try check({ $0.vision_cfg.layers = .each([3, 4, 6, 3]) }, key: "vision_cfg.layers",
                  value: "[3, 4, 6, 3] (a ModifiedResNet)", supported: ["an int (a ViT)"])
        try check({ $0.vision_cfg.timm_model_name = "vit_base_patch16_224" }, key: "vision_cfg.timm_model_name",
                  value: "vit_base_patch16_224", supported: ["null"])
        try check({ $0.text_cfg.qk_norm = true }, key: "text_cfg.qk_norm", value: "true", supported: ["false"])
        try check({ $0.vision_cfg.pool_type = "none" }, key: "vision_cfg.pool_type", value: "none", supported: ["tok", "avg"])
        try check({ $0.text_cfg.hf_tokenizer_name = "timm/ViT-B-16-SigLIP" }, key: "text_cfg.hf_tokenizer_name",
                  value: "timm/ViT-B-16-SigLIP", supported: ["null (CLIP's BPE tokenizer)"])
        try check({ $0.vision_cfg.norm_kwargs = ["elementwise_affine": .bool(false)] }, key: "vision_cfg.norm_kwargs.elementwise_affine",
                  value: "false", supported: ["eps"])
    }

    /// The bundled 49408-token tokenizer cannot feed a 1000-token embedding table.
    @Test func tokenizerLargerThanTheVocabularyIsRefused() throws {
        let config = try OpenCLIPConfig.load(from: F.url("tiny/model_config.json"))
        #expect(throws: StableDiffusionError.invalidTokenizer(
            file: "open_clip_config.json", message: "the tokenizer has 49408 tokens but text_cfg.vocab_size is 1000"
        )) { try OpenCLIPModel.load(Weights.open(F.url("tiny/open_clip_model.safetensors")), config: config) }
    }

    /// Loaded from DDP keys, parameters keep open_clip's own names, and gradients reach them.
    @Test func parametersKeepOpenCLIPNamesAndTrain() throws {
        let model = try F.tiny("hps_tiny_ddp.pt")
        let names = model.namedParameters.map(\.name)
        #expect(names.first == "visual.conv1.weight")
        #expect(names.contains("visual.transformer.resblocks.1.attn.in_proj_weight"))
        #expect(names.contains("transformer.resblocks.0.mlp.c_proj.bias"))
        #expect(names.last == "logit_scale")
        #expect(!names.contains { $0.hasPrefix("module.") })
        model.setTrainable(true)
        let ids = tokenIds(model.tokenizer, F.prompts)
        let pixels = try F.tensor("tiny/outputs.safetensors", "pixels_training")
        (model.imageEmbeddings(pixels) * model.textEmbeddings(ids)).sum().backward()
        let withGrad = model.trainableParameters.filter { $0.grad != nil }.count
        #expect(withGrad == model.trainableParameters.count - 1)  // all but logit_scale, which the product skips
    }
}
