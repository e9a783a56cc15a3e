import Foundation
import NN
import StableDiffusion
import Testing
import Torch

@testable import Rewards

/// What scripts/parity/make_siglip_fixtures.py wrote under Fixtures/siglip: a tiny SigLIP vision tower (alone and
/// inside a SiglipModel), the Aesthetic Predictor v2.5 head of the `aesthetic-predictor-v2-5` package, and the scores
/// and image gradients its `AestheticPredictorV2_5Model` computes.
enum SiglipFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("siglip")
    static let vision = root.appendingPathComponent("vision")
    static let full = root.appendingPathComponent("full")
    static let headFiles = ["aesthetic_predictor_v2_5.pth", "aesthetic_predictor_v2_5.safetensors"]
    static let prompts = ["a photo of a cat", "a lighthouse at dusk"]

    static func output(_ name: String) throws -> Tensor {
        try SafeTensorsFile(url: root.appendingPathComponent("outputs.safetensors")).tensor(name)
    }
}

@Suite struct Aesthetic25Tests {
    typealias F = SiglipFixtures

    func reward(folder: URL = F.vision, head: String = F.headFiles[0], _ mode: PreprocessingMode) throws -> Aesthetic25Reward {
        try Aesthetic25Reward(siglipFolder: folder, headFile: F.root.appendingPathComponent(head), preprocessing: mode)
    }

    /// Scores and their gradient with respect to the images against the package's model, for the vision folder and
    /// the whole SiglipModel, the head as .pth and as safetensors, and both preprocessing modes.
    @Test(arguments: [F.vision, F.full], PreprocessingMode.allCases)
    func scoresAndGradientsMatchThePackage(folder: URL, mode: PreprocessingMode) throws {
        for head in F.headFiles {
            let reward = try reward(folder: folder, head: head, mode)
            let images = try F.output("images").requiringGrad()
            let scores = try reward.score(images, prompts: F.prompts)
            scores.sum().backward()
            let expected = try F.output("scores_\(mode)")
            let scoreError = HFFixtures.relativeError(scores.detach(), expected)
            let gradError = HFFixtures.relativeError(try #require(images.grad), try F.output("grad_\(mode)"))
            #expect(scores.shape == [2])
            #expect(scoreError < 1e-4, "\(head) \(mode): scores \(scores.toArray(Double.self)) vs \(expected.toArray(Double.self))")
            #expect(gradError < 1e-4, "\(head) \(mode): gradient relative error \(gradError)")
            #expect(images.grad!.abs().max().item() > 1e-2)
        }
    }

    /// The preprocessing (no crop, mean = std = 0.5) and the tower's pooled output, each against transformers.
    @Test(arguments: PreprocessingMode.allCases)
    func pixelsAndPooledOutputMatchTransformers(mode: PreprocessingMode) throws {
        let reward = try reward(mode)
        let pixels = reward.preprocessor(try F.output("images"), mode: mode)
        #expect(HFFixtures.relativeError(pixels, try F.output("pixels_\(mode)")) < 1e-5)
        let pooled = reward.vision(try F.output("pixels_\(mode)")).pooledOutput
        #expect(HFFixtures.relativeError(pooled, try F.output("pooled_\(mode)")) < 1e-4)
    }

    /// The modes differ by more than the tolerance, so each is really checked; the package's own processor (PIL) is
    /// near the evaluation path on the same 8-bit images.
    @Test func modesDifferAndEvaluationIsNearSiglipsProcessor() throws {
        let training = try F.output("scores_training"), evaluation = try F.output("scores_evaluation")
        #expect(HFFixtures.relativeError(training, evaluation) > 1e-2)
        let reward = try reward(.evaluation)
        let quantised = ((try F.output("images")) * 255).round() / 255
        let scores = try reward.score(quantised, prompts: F.prompts)
        #expect(HFFixtures.relativeError(scores, try F.output("pil_scores_quantised")) < 1e-2)
    }

    @Test func frozenNamedAndScaled() throws {
        let reward = try reward(.training)
        #expect(reward.name == "aesthetic25" && reward.head.inputWidth == 32)
        #expect(reward.vision.trainableParameters.isEmpty && reward.head.trainableParameters.isEmpty)
        let weighted = WeightedReward()
        weighted.add(reward)
        #expect(weighted.terms[0].scale == 3)
        let (total, _) = try weighted.evaluate(try F.output("images"), prompts: F.prompts)
        #expect(HFFixtures.relativeError(total, try F.output("scores_training") * 3) < 1e-4)
    }

    /// In bfloat16 (mixed precision's frozen towers) the scores stay near float32's and the images get a gradient.
    @Test func bfloat16TowersScoreNearFloat32() throws {
        let reward = try Aesthetic25Reward(
            siglipFolder: F.full, headFile: F.root.appendingPathComponent(F.headFiles[0]), dtype: .bfloat16)
        #expect(reward.vision.parameters.allSatisfy { $0.dtype == .bfloat16 })
        let images = try F.output("images").requiringGrad()
        let scores = try reward.score(images, prompts: F.prompts)
        scores.to(.float32).sum().backward()
        let error = HFFixtures.relativeError(scores.to(.float32).detach(), try F.output("scores_training"))
        #expect(error < 3e-2, "bfloat16 scores relative error \(error)")
        #expect(images.grad!.dtype == .float32 && images.grad!.abs().max().item() > 1e-2)
    }

    /// A head for another SigLIP width: one line naming the head file and both widths, before any image is scored.
    @Test func headOfAnotherWidthIsRefused() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let url = folder.appendingPathComponent("head1152.safetensors")
        let head = AestheticPredictorV25Head(VarBuilder(initializingWith: Generator(seed: 0)), inputWidth: 48)
        try Tensor.save(head.stateDict(), to: url)
        do {
            _ = try Aesthetic25Reward(siglipFolder: F.vision, headFile: url)
            Issue.record("a 48-wide head loaded on a 32-wide SigLIP")
        } catch {
            #expect("\(error)" == "\(url.path): the head reads 48-wide SigLIP embeddings, the SigLIP model in "
                + "\(F.vision.path) gives 32 (hidden_size)")
        }
    }

    /// A CLIP folder given as the SigLIP, or the LAION head given as the v2.5 head: errors that name the file.
    @Test func otherModelsAreRefusedByName() throws {
        do {
            _ = try Aesthetic25Reward(siglipFolder: HFFixtures.clip, headFile: F.root.appendingPathComponent(F.headFiles[0]))
            Issue.record("a CLIP folder loaded as SigLIP")
        } catch {
            let config = HFFixtures.clip.appendingPathComponent("config.json").path
            #expect("\(error)" == "\(config): model_type \"clip\" is not a SigLIP config (expected \"siglip\" or \"siglip_vision_model\")")
        }
        #expect(throws: WeightLoadingError.self) {
            _ = try Aesthetic25Reward(siglipFolder: F.vision, headFile: HFFixtures.aesthetic)
        }
        do {
            _ = try Aesthetic25Reward(siglipFolder: F.vision, headFile: HFFixtures.aesthetic)
        } catch {
            #expect("\(error)".hasPrefix(HFFixtures.aesthetic.path), "\(error)")
            #expect("\(error)".contains("scoring_head.0.weight"), "\(error)")
        }
    }

    /// The config of a SiglipVisionModel (keys at the top) or of a SiglipModel (under vision_config, transformers'
    /// defaults when absent); errors name the file and the nested key.
    @Test func siglipConfigsOfBothLayouts() throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        func load(_ json: String) throws -> (SiglipVisionConfig, Bool) {
            let url = folder.appendingPathComponent("config.json")
            try Data(json.utf8).write(to: url)
            let (config, full) = try SiglipVisionConfig.load(url)
            return (config, full)
        }
        let (vision, visionIsFull) = try load(#"{"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384, "patch_size": 14}"#)
        #expect(!visionIsFull && vision.hidden_size == 1152 && vision.gridSize == 27 && vision.layer_norm_eps == 1e-6)
        let (defaults, defaultsAreFull) = try load(#"{"model_type": "siglip", "text_config": {}}"#)
        #expect(defaultsAreFull && defaults == SiglipVisionConfig() && defaults.hidden_act == "gelu_pytorch_tanh")
        let path = folder.appendingPathComponent("config.json").path
        #expect(throws: StableDiffusionError.invalidConfig(
            file: path, message: "key \"vision_config.num_attention_heads\" (5) must divide vision_config.hidden_size (32)")) {
            _ = try load(#"{"model_type": "siglip", "vision_config": {"hidden_size": 32, "num_attention_heads": 5}}"#)
        }
    }

    @Test func registryLoadsItByName() throws {
        let head = F.root.appendingPathComponent(F.headFiles[0]).path
        let reward = try RewardRegistry.load(name: "aesthetic25", paths: [F.full.path, head])
        #expect(reward is Aesthetic25Reward && reward.name == "aesthetic25")
        #expect(throws: RewardError.invalidArgument(
            "--reward aesthetic25 takes a SigLIP folder and the v2.5 head: aesthetic25=SIGLIP,HEAD, got 1 path(s)")) {
            try RewardRegistry.load(name: "aesthetic25", paths: [F.full.path])
        }
    }
}

/// HPSv2.1: `HPS_v2.1_compressed.pt`'s layout ({"state_dict": ...}, here float16) through HPSv2's loader, named
/// `hpsv2.1`, against open_clip with the weights loaded as the hpsv2 package loads them.
@Suite struct HPSv21Tests {
    typealias F = OpenCLIPFixtures

    @Test(arguments: PreprocessingMode.allCases)
    func v21CheckpointLoadsAndMatchesOpenCLIP(mode: PreprocessingMode) throws {
        let folder = try HFFixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for (from, to) in [("tiny/hps_v2.1_tiny.pt", "HPS_v2.1_compressed.pt"), ("tiny/open_clip_config.json", "open_clip_config.json"),
                           ("tokenizer", "tokenizer")] {
            try FileManager.default.copyItem(at: F.url(from), to: folder.appendingPathComponent(to))
        }
        let reward = try RewardRegistry.load(name: "hpsv2.1", paths: [folder.appendingPathComponent("HPS_v2.1_compressed.pt").path])
        let hps = try #require(reward as? HPSv2Reward)
        #expect(hps.name == "hpsv2.1")
        #expect(hps.model.trainableParameters.isEmpty)
        #expect(hps.model.parameters.allSatisfy { $0.dtype == .float32 })
        hps.preprocessing = mode
        let images = try F.tensor("tiny/outputs.safetensors", "images").requiringGrad()
        let scores = try hps.score(images, prompts: F.prompts)
        scores.sum().backward()
        let expected = try F.tensor("tiny/outputs_v2.1.safetensors", "scores_\(mode)")
        #expect(F.relativeError(scores.detach(), expected) < 1e-4, "\(scores.toArray(Double.self)) vs \(expected.toArray(Double.self))")
        #expect(F.relativeError(images.grad!, try F.tensor("tiny/outputs_v2.1.safetensors", "grad_\(mode)")) < 1e-4)
        // The float16 weights really are v2.1's own: the float32 model A scores differently.
        let v20 = try F.tensor("tiny/outputs.safetensors", "scores_\(mode)")
        #expect(F.relativeError(v20, expected) > 1e-5)
        let weighted = WeightedReward()
        weighted.add(hps)
        #expect(weighted.terms[0].scale == 100)
    }
}
