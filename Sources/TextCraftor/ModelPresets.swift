import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// Real-shaped models without downloads: the published checkpoints' configs and key names, with random weights
/// (PyTorch's default initialisations), so that speed and memory are measured on the real shapes.
/// `scripts/parity/make_preset_fixtures.py` builds the same models in diffusers, transformers and open_clip on the
/// meta device; the tests compare every key, every shape and the configs.
public enum ModelPreset: String, CaseIterable, Sendable {
    case sd15, sd21, sdxl, pickscore, hpsv2, aesthetic, aesthetic25, imagereward

    public var summary: String {
        switch self {
        case .sd15: "Stable Diffusion 1.5: CLIP ViT-L/14 text tower, 860M UNet, VAE, PNDM (a diffusers folder)"
        case .sd21: "Stable Diffusion 2.1: OpenCLIP ViT-H/14 text tower (23 layers), 865M UNet, VAE, DDIM v-prediction"
        case .sdxl: "Stable Diffusion XL base 1.0: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers, 2.6B UNet, VAE, Euler"
        case .pickscore: "PickScore_v1: transformers CLIPModel ViT-H/14"
        case .hpsv2: "HPSv2: open_clip ViT-H-14 state dict (safetensors)"
        case .aesthetic: "LAION aesthetic predictor v2: transformers CLIP ViT-L/14 and its MLP head"
        case .aesthetic25: "Aesthetic Predictor v2.5: SigLIP so400m-patch14-384 vision tower (transformers) and its MLP head"
        case .imagereward:
            "ImageReward v1.0: BLIP ViT-L/16 + BERT-base state dict (safetensors), med_config.json, placeholder vocab.txt"
        }
    }

    /// One model of a preset: where it goes in the output folder, and its config as written.
    public struct Component {
        public let name: String
        public let module: any Module
        public let config: [String: Any]
    }

    /// How to use the written folder, for the last line `synth-model` prints.
    public func usage(_ folder: String) -> String {
        switch self {
        case .sd15, .sd21, .sdxl: "--model \(folder)"
        case .pickscore: "--reward pickscore=\(folder)"
        case .hpsv2: "--reward hpsv2=\(folder)/HPS_v2.safetensors"
        case .aesthetic: "--reward aesthetic=\(folder)/clip,\(folder)/aesthetic.safetensors"
        case .aesthetic25: "--reward aesthetic25=\(folder)/siglip,\(folder)/aesthetic_predictor_v2_5.safetensors"
        case .imagereward: "--reward imagereward=\(folder)/ImageReward.safetensors"
        }
    }

    // MARK: The configs, as the published config.json files hold them.

    static var sd15UNet: UNet2DConditionConfig {
        var config = UNet2DConditionConfig()
        config.sample_size = 64
        config.cross_attention_dim = .same(768)
        config.attention_head_dim = .same(8)
        return config
    }

    static var sd21UNet: UNet2DConditionConfig {
        var config = sd15UNet
        config.sample_size = 96
        config.cross_attention_dim = .same(1024)
        config.attention_head_dim = .each([5, 10, 20, 20])
        config.use_linear_projection = true
        config.upcast_attention = true
        return config
    }

    /// stabilityai/stable-diffusion-xl-base-1.0: no attention at the highest level, 2 and 10 transformer blocks below,
    /// one level fewer, 2048-wide text (768 + 1280), and the pooled text and size conditioning added to the time
    /// embedding (1280 + 6 x 256 = 2816).
    static var sdxlUNet: UNet2DConditionConfig {
        var config = sd15UNet
        config.sample_size = 128
        config.block_out_channels = [320, 640, 1280]
        config.down_block_types = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
        config.up_block_types = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
        config.attention_head_dim = .each([5, 10, 20])
        config.cross_attention_dim = .same(2048)
        config.transformer_layers_per_block = .each([.same(1), .same(2), .same(10)])
        config.use_linear_projection = true
        config.addition_embed_type = "text_time"
        config.addition_time_embed_dim = 256
        config.projection_class_embeddings_input_dim = 2816
        return config
    }

    /// SDXL's VAE: SD's layout, its own latent scale, decoded in float32 under float16 (`force_upcast`).
    static var sdxlVAE: AutoencoderKLConfig {
        var config = vae
        config.sample_size = 1024
        config.scaling_factor = 0.13025
        config.force_upcast = true
        return config
    }

    static var vae: AutoencoderKLConfig {
        var config = AutoencoderKLConfig()
        config.block_out_channels = [128, 256, 512, 512]
        config.down_block_types = Array(repeating: "DownEncoderBlock2D", count: 4)
        config.up_block_types = Array(repeating: "UpDecoderBlock2D", count: 4)
        config.layers_per_block = 2
        config.sample_size = 512
        return config
    }

    /// openai/clip-vit-large-patch14's text tower (SD 1.5's text_encoder, with its legacy token ids).
    static var vitL14Text: CLIPTextConfig {
        var config = CLIPTextConfig()
        config.hidden_size = 768
        config.intermediate_size = 3072
        config.num_attention_heads = 12
        config.num_hidden_layers = 12
        config.projection_dim = 768
        config.bos_token_id = 0
        config.eos_token_id = 2
        config.pad_token_id = 1
        return config
    }

    /// OpenCLIP ViT-H/14's text tower in transformers' layout (PickScore's; SD 2.1's without its last layer).
    static var vitH14Text: CLIPTextConfig {
        var config = vitL14Text
        config.hidden_size = 1024
        config.intermediate_size = 4096
        config.num_attention_heads = 16
        config.num_hidden_layers = 24
        config.hidden_act = "gelu"
        config.projection_dim = 1024
        return config
    }

    /// OpenCLIP ViT-bigG/14's text tower in transformers' layout (SDXL's `text_encoder_2`, with its projection).
    static var bigGText: CLIPTextConfig {
        var config = vitH14Text
        (config.hidden_size, config.intermediate_size, config.projection_dim) = (1280, 5120, 1280)
        (config.num_attention_heads, config.num_hidden_layers) = (20, 32)
        return config
    }

    static var sd21Text: CLIPTextConfig {
        var config = vitH14Text
        config.num_hidden_layers = 23
        config.projection_dim = 512
        return config
    }

    static func vision(hidden: Int, intermediate: Int, layers: Int, act: String, projection: Int) -> CLIPVisionConfig {
        var config = CLIPVisionConfig()
        config.hidden_size = hidden
        config.intermediate_size = intermediate
        config.num_hidden_layers = layers
        config.num_attention_heads = 16
        config.patch_size = 14
        config.image_size = 224
        config.hidden_act = act
        config.projection_dim = projection
        return config
    }

    static var pickScoreCLIP: CLIPConfig {
        var config = CLIPConfig()
        config.text_config = vitH14Text
        config.vision_config = vision(hidden: 1280, intermediate: 5120, layers: 32, act: "gelu", projection: 1024)
        config.projection_dim = 1024
        return config
    }

    static var vitL14CLIP: CLIPConfig {
        var config = CLIPConfig()
        config.text_config = vitL14Text
        config.vision_config = vision(hidden: 1024, intermediate: 4096, layers: 24, act: "quick_gelu", projection: 768)
        config.projection_dim = 768
        return config
    }

    /// google/siglip-so400m-patch14-384's vision tower (the Aesthetic Predictor v2.5 reads its pooled output).
    static var siglipSO400M: SiglipVisionConfig {
        var config = SiglipVisionConfig()
        config.hidden_size = 1152
        config.intermediate_size = 4304
        config.num_hidden_layers = 27
        config.num_attention_heads = 16
        config.patch_size = 14
        config.image_size = 384
        return config
    }

    static func scheduler(_ preset: ModelPreset) -> SchedulerConfig {
        let names: [ModelPreset: String] = [.sd21: "DDIMScheduler", .sdxl: "EulerDiscreteScheduler"]
        var config = SchedulerConfig(className: names[preset] ?? "PNDMScheduler")
        if preset == .sdxl { config.timestepSpacing = "leading" }
        config.betaStart = 0.00085
        config.betaEnd = 0.012
        config.betaSchedule = "scaled_linear"
        config.setAlphaToOne = false
        config.skipPrkSteps = true
        config.stepsOffset = 1
        config.clipSample = false
        config.predictionType = preset == .sd21 ? "v_prediction" : "epsilon"
        return config
    }

    static func json(_ config: some Encodable) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as! [String: Any]
    }

    // MARK: Building and writing

    /// The preset's models, one at a time (`body` gets each and may drop it before the next is built): from
    /// `builder()`, a `VarBuilder(shapesOn: .meta)` for names and shapes only, or one initializing random weights.
    public func forEachComponent(_ builder: () -> VarBuilder, _ body: (Component) throws -> Void) throws {
        let tokenizer = try CLIPTokenizer.bundled()
        switch self {
        case .sd15, .sd21:
            let unet = self == .sd15 ? Self.sd15UNet : Self.sd21UNet
            let text = self == .sd15 ? Self.vitL14Text : Self.sd21Text
            try body(Component(name: "text_encoder", module: try builder().build { try CLIPTextModel($0, config: text) },
                               config: try Self.json(text)))
            try body(Component(name: "unet", module: try builder().build { try UNet2DConditionModel($0, config: unet) },
                               config: try Self.json(unet)))
            try body(Component(name: "vae", module: try builder().build { try AutoencoderKL($0, config: Self.vae) },
                               config: try Self.json(Self.vae)))
        case .sdxl:
            try body(Component(name: "text_encoder", module: try builder().build { try CLIPTextModel($0, config: Self.vitL14Text) },
                               config: try Self.json(Self.vitL14Text)))
            try body(Component(
                name: "text_encoder_2", module: try builder().build { try CLIPTextModelWithProjection($0, config: Self.bigGText) },
                config: try Self.json(Self.bigGText)))
            try body(Component(name: "unet", module: try builder().build { try UNet2DConditionModel($0, config: Self.sdxlUNet) },
                               config: try Self.json(Self.sdxlUNet)))
            try body(Component(name: "vae", module: try builder().build { try AutoencoderKL($0, config: Self.sdxlVAE) },
                               config: try Self.json(Self.sdxlVAE)))
        case .pickscore:
            try body(Component(
                name: "clip", module: try builder().build { try CLIPModel($0, config: Self.pickScoreCLIP, tokenizer: tokenizer) },
                config: try Self.json(Self.pickScoreCLIP)))
        case .aesthetic:
            try body(Component(
                name: "clip", module: try builder().build { try CLIPModel($0, config: Self.vitL14CLIP, tokenizer: tokenizer) },
                config: try Self.json(Self.vitL14CLIP)))
            try body(Component(name: "head", module: try builder().build { AestheticPredictor($0, inputWidth: 768) },
                               config: ["input_width": 768]))
        case .aesthetic25:
            let config = Self.siglipSO400M
            try body(Component(name: "siglip", module: try builder().build { try SiglipVisionModel($0, config: config) },
                               config: try Self.json(config)))
            try body(Component(
                name: "head", module: try builder().build { AestheticPredictorV25Head($0, inputWidth: config.hidden_size) },
                config: ["input_width": config.hidden_size]))
        case .imagereward:
            try body(Component(
                name: "imagereward",
                module: try builder().build { ImageRewardFile($0, tokenizer: try Self.placeholderWordPiece()) },
                config: Self.imageRewardMedConfig))
        case .hpsv2:
            try body(Component(
                name: "open_clip", module: try builder().build { try OpenCLIPModel($0, config: .vitH14, tokenizer: tokenizer) },
                config: ["model": "ViT-H-14"]))
        }
    }

    /// Writes the preset with random weights in `dtype` into `folder` (which must not exist): a diffusers folder
    /// for sd15/sd21/sdxl, a transformers CLIPModel folder for pickscore, `clip/` + `aesthetic.safetensors` for
    /// aesthetic, `siglip/` + `aesthetic_predictor_v2_5.safetensors` for aesthetic25, `HPS_v2.safetensors` for hpsv2,
    /// `ImageReward.safetensors` + `med_config.json` + `vocab.txt` for imagereward. `progress` hears each component's
    /// name before it is built.
    public func write(to folder: URL, seed: UInt64, dtype: DType, progress: (String) -> Void = { _ in }) throws {
        let generator = Generator(seed: seed)
        let names = componentNames()
        var index = 0
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        progress(names[0])
        try forEachComponent({ VarBuilder(initializingWith: generator, dtype: dtype) }) { component in
            try write(component, dtype: dtype, to: folder)
            index += 1
            if index < names.count { progress(names[index]) }
        }
        try writeSchedulerAndTokenizer(to: folder)
    }

    /// A pipeline's files beside its models: `tokenizer/` (SD 2.1 pads with "!"; SDXL's `tokenizer_2/` too),
    /// `scheduler/` and `model_index.json`. Nothing for the reward presets.
    public func writeSchedulerAndTokenizer(to folder: URL) throws {
        guard [.sd15, .sd21, .sdxl].contains(self) else { return }
        try CLIPTokenizer.bundled(padToken: self == .sd21 ? "!" : CLIPTokenizer.endOfText)
            .write(to: folder.appendingPathComponent("tokenizer"))
        if self == .sdxl { try CLIPTokenizer.bundled(padToken: "!").write(to: folder.appendingPathComponent("tokenizer_2")) }
        let scheduler = Self.scheduler(self)
        try ModelWriter.writeScheduler(scheduler, to: folder.appendingPathComponent("scheduler"))
        try ModelWriter.writeModelIndex(scheduler: scheduler.className, architecture: self == .sdxl ? .sdxl : .sd, to: folder)
    }

    /// The components' names in the order they are built.
    public func componentNames() -> [String] {
        switch self {
        case .sd15, .sd21: ["text_encoder", "unet", "vae"]
        case .sdxl: ["text_encoder", "text_encoder_2", "unet", "vae"]
        case .pickscore: ["clip"]
        case .aesthetic, .aesthetic25: [self == .aesthetic ? "clip" : "siglip", "head"]
        case .hpsv2: ["open_clip"]
        case .imagereward: ["imagereward"]
        }
    }

    func write(_ component: Component, dtype: DType, to folder: URL) throws {
        let weights = component.module.stateDict()
        switch (self, component.name) {
        case (_, "text_encoder"):
            let config = (component.module as! CLIPTextModel).config
            try ModelWriter.writeTextEncoder(config: config, weights: weights, dtype: dtype,
                                             to: folder.appendingPathComponent("text_encoder"))
        case (_, "text_encoder_2"):
            let config = (component.module as! CLIPTextModelWithProjection).config
            try ModelWriter.writeTextEncoder(config: config, weights: weights, dtype: dtype,
                                             to: folder.appendingPathComponent("text_encoder_2"), withProjection: true)
        case (_, "unet"):
            try ModelWriter.writeComponent(
                config: (component.module as! UNet2DConditionModel).config, className: "UNet2DConditionModel",
                weights: weights, to: folder.appendingPathComponent("unet"), weightsName: "diffusion_pytorch_model.safetensors",
                dtype: dtype)
        case (_, "vae"):
            try ModelWriter.writeComponent(
                config: (component.module as! AutoencoderKL).config, className: "AutoencoderKL", weights: weights,
                to: folder.appendingPathComponent("vae"), weightsName: "diffusion_pytorch_model.safetensors", dtype: dtype)
        case (_, "clip"):
            // With the tokenizer files beside the weights, as the published CLIP repositories have them.
            let clip = component.module as! CLIPModel
            let target = self == .pickscore ? folder : folder.appendingPathComponent("clip")
            try ModelWriter.writeCLIP(clip, dtype: dtype, to: target)
            try clip.tokenizer.write(to: target)
        case (_, "siglip"):
            // A transformers SiglipVisionModel folder.
            let target = folder.appendingPathComponent("siglip")
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            try ModelWriter.writeTransformersConfig(
                (component.module as! SiglipVisionModel).config, architecture: "SiglipVisionModel",
                modelType: "siglip_vision_model", dtype: dtype, to: target.appendingPathComponent("config.json"))
            try ModelWriter.saveWeights(weights, dtype: dtype, to: target.appendingPathComponent("model.safetensors"))
        case (.aesthetic25, "head"):
            try ModelWriter.saveWeights(weights, dtype: dtype, metadata: ["source": "textcraftor synth-model (random)"],
                                        to: folder.appendingPathComponent("aesthetic_predictor_v2_5.safetensors"))
        case (_, "imagereward"):
            // The published file's buffer, position_ids, stays int64 (0..<512); the rest in `dtype`. Written to a
            // temporary name, then renamed.
            var tensors = weights.mapValues { $0.to(dtype: dtype, device: .cpu).contiguous() }
            tensors[ImageRewardFile.positionIds] = Tensor.arange(512).reshape([1, 512])
            let target = folder.appendingPathComponent("ImageReward.safetensors")
            let partial = folder.appendingPathComponent(".ImageReward.safetensors.partial")
            try Tensor.save(tensors, metadata: ["format": "pt", "source": "textcraftor synth-model (random)"], to: partial)
            try FileManager.default.moveItem(at: partial, to: target)
            let config = try JSONSerialization.data(withJSONObject: component.config, options: [.prettyPrinted, .sortedKeys])
            try config.write(to: folder.appendingPathComponent("med_config.json"), options: .atomic)
            try Self.placeholderVocabulary.joined(separator: "\n").appending("\n")
                .write(to: folder.appendingPathComponent("vocab.txt"), atomically: true, encoding: .utf8)
        case (_, "head"):
            try ModelWriter.saveWeights(weights, dtype: dtype, metadata: ["source": "textcraftor synth-model (random)"],
                                        to: folder.appendingPathComponent("aesthetic.safetensors"))
        default:
            try ModelWriter.saveWeights(weights, dtype: dtype, metadata: ["source": "textcraftor synth-model (random)"],
                                        to: folder.appendingPathComponent("HPS_v2.safetensors"))
        }
    }
}

// MARK: - ImageReward

extension ModelPreset {
    /// ImageReward's med_config.json (BLIP's configs/med_config.json): BERT-base with cross-attention, 30524 tokens
    /// (bert-base-uncased's 30522 and BLIP's [DEC] and [ENC]).
    static var imageRewardMedConfig: [String: Any] {
        [
            "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
            "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
            "add_cross_attention": true,
        ]
    }

    /// `imageRewardMedConfig` as the model reads it.
    static var imageRewardText: BLIPTextConfig {
        var config = BLIPTextConfig()
        config.vocab_size = 30524
        config.add_cross_attention = true
        return config
    }

    /// A stand-in for bert-base-uncased's vocab.txt, which cannot be downloaded here: 30522 entries with the special
    /// tokens at BERT's ids ([PAD] 0, [unused0…98] 1–99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), then the
    /// printable ASCII characters and their `##` continuations, then `synthetic-N` fillers. Prompts tokenize (letter
    /// by letter), so a synthetic model scores; the ids are not BERT's. Use the real vocab.txt with real weights.
    static let placeholderVocabulary: [String] = {
        var tokens = ["[PAD]"] + (0..<99).map { "[unused\($0)]" } + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        let printable = (33...126).compactMap { Unicode.Scalar($0).map { String(Character($0)) } }
            .filter { $0.lowercased() == $0 }
        tokens += printable + printable.filter { $0.first!.isLetter || $0.first!.isNumber }.map { "##" + $0 }
        tokens += (tokens.count..<30522).map { "synthetic-\($0)" }
        return tokens
    }()

    static func placeholderWordPiece() throws -> BertTokenizer {
        try BertTokenizer(tokens: placeholderVocabulary, origin: "synth-model placeholder vocab.txt")
    }
}

/// The published `ImageReward.pt`'s tensors: the model, and BLIP_Pretrain's `vision_proj` and `text_proj`, which
/// the score does not read but the file has.
final class ImageRewardFile: Module {
    let scope: ParameterScope
    let model: ImageRewardModel
    static let positionIds = "blip.text_encoder.embeddings.position_ids"

    init(_ vb: VarBuilder, tokenizer: BertTokenizer) {
        scope = vb.scope
        model = ImageRewardModel(vb, vision: .vitL16, text: ModelPreset.imageRewardText, tokenizer: tokenizer)
        _ = Linear(vb.pp("blip").pp("vision_proj"), inFeatures: BLIPVisionConfig.vitL16.width, outFeatures: 256)
        _ = Linear(vb.pp("blip").pp("text_proj"), inFeatures: ModelPreset.imageRewardText.hidden_size, outFeatures: 256)
    }
}
