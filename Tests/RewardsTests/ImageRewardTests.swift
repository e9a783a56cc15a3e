import Foundation
import Testing
import Torch

import NN

@testable import Rewards

/// The tiny ImageReward of scripts/parity/make_imagereward_fixtures.py, built with the image-reward package's code.
enum ImageRewardFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("imagereward")
    static let prompts = ["a photo of a red cat", "An astronaut riding a horse, 4k, trending on artstation!!"]
    static func url(_ name: String) -> URL { root.appendingPathComponent(name) }
    static func tensor(_ name: String) throws -> Tensor { try SafeTensorsFile(url: url("outputs.safetensors")).tensor(name) }

    static func reward(_ mode: PreprocessingMode = .training, checkpoint: URL = url("ImageReward.pt")) throws -> ImageRewardReward {
        try ImageRewardReward.load(
            checkpoint: checkpoint, config: url("med_config.json"), vocabulary: url("vocab.txt"), preprocessing: mode)
    }

    /// A temporary folder, removed when `body` returns.
    static func withFolder<R>(_ body: (URL) throws -> R) throws -> R {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("imagereward-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        return try body(folder)
    }
}

@Suite struct ImageRewardTests {
    typealias F = ImageRewardFixtures
    typealias O = OpenCLIPFixtures

    /// Scores and their gradients with respect to the images, against the package's `score_gard` on the same
    /// preprocessing, in both modes.
    @Test(arguments: PreprocessingMode.allCases)
    func scoresAndGradientsMatchThePackage(mode: PreprocessingMode) throws {
        let reward = try F.reward(mode)
        let images = try F.tensor("images").requiringGrad()
        let scores = try reward.score(images, prompts: F.prompts)
        scores.sum().backward()
        let expected = try F.tensor("scores_\(mode)")
        let scoreError = O.relativeError(scores.detach(), expected)
        let gradientError = O.relativeError(images.grad!, try F.tensor("grad_\(mode)"))
        #expect(scores.shape == [2])
        #expect(scoreError < 1e-4, "scores \(scores.toArray(Double.self)) vs \(expected.toArray(Double.self)): \(scoreError)")
        #expect(gradientError < 1e-4, "gradient relative error \(gradientError)")
        #expect(images.grad!.abs().max().item() > 1e-3)
        print("ImageReward \(mode): score relative error \(scoreError), gradient relative error \(gradientError)")
    }

    /// The parts: preprocessed pixels, image embeddings and the [CLS] state the head reads.
    @Test(arguments: PreprocessingMode.allCases)
    func intermediatesMatchThePackage(mode: PreprocessingMode) throws {
        let model = try F.reward(mode).model
        let images = try F.tensor("images")
        let pixels = ImagePreprocessor(size: model.visual.config.imageSize)(images, mode: mode)
        #expect(O.relativeError(pixels, try F.tensor("pixels_\(mode)")) < 1e-5)
        let embeds = model.visual(pixels)
        #expect(O.relativeError(embeds, try F.tensor("image_embeds_\(mode)")) < 1e-5)
        let (ids, mask) = model.tokens(F.prompts)
        #expect(ids.toArray(Int64.self) == (try F.tensor("ids")).toArray(Int64.self))
        #expect(mask.toArray(Int64.self) == (try F.tensor("mask")).toArray(Int64.self))
        let cls = model.text(ids, mask: mask, image: embeds).select(dim: 1, index: 0)
        #expect(O.relativeError(cls, try F.tensor("cls_\(mode)")) < 1e-5)
    }

    /// The sizes read from the checkpoint, and the published model's.
    @Test func configIsReadFromTheCheckpoint() throws {
        let model = try F.reward().model
        #expect(model.visual.config == BLIPVisionConfig(width: 48, depth: 2, heads: 3, patchSize: 16, imageSize: 32, mlpWidth: 192))
        #expect(model.text.config.hidden_size == 32 && model.text.config.num_hidden_layers == 2)
        #expect(model.trainableParameters.isEmpty)
        #expect(BLIPVisionConfig.vitL16.imageSize == 224 && BLIPVisionConfig.vitL16.heads == 16)
    }

    /// The same state dict as safetensors loads and scores the same.
    @Test func safetensorsCopyScoresTheSame() throws {
        try F.withFolder { folder in
            let copy = folder.appendingPathComponent("ImageReward.safetensors")
            let source = try Weights.open(F.url("ImageReward.pt"))
            var tensors: [String: Tensor] = [:]
            for key in source.keys { tensors[key] = try source.tensor(key) }
            try Tensor.save(tensors, to: copy)
            let images = try F.tensor("images")
            let a = try F.reward(checkpoint: copy).score(images, prompts: F.prompts)
            let b = try F.reward().score(images, prompts: F.prompts)
            #expect((a - b).abs().max().item() == 0)
        }
    }

    /// The package's own `score()` (PIL bicubic resize and crop) on the images quantised to 8 bits, against ours on
    /// the same quantised images: close, not equal (PIL's bicubic is not torch's).
    @Test func evaluationPathIsCloseToThePackagesPILScore() throws {
        let reward = try F.reward(.evaluation)
        let quantised = ((try F.tensor("images")) * 255).round().clamp(min: 0, max: 255) / 255
        let scores = try reward.score(quantised, prompts: F.prompts)
        let pil = try F.tensor("pil_scores_quantised")
        #expect((scores - pil).abs().max().item() < 2e-3, "\(scores.toArray(Double.self)) vs \(pil.toArray(Double.self))")
    }

    @Test func promptsPerImageAndWeighting() throws {
        let reward = try F.reward()
        #expect(reward.name == "imagereward")
        let images = try F.tensor("images")
        let shared = try reward.score(images, prompts: [F.prompts[0]])
        let repeated = try reward.score(images, prompts: [F.prompts[0], F.prompts[0]])
        #expect((shared - repeated).abs().max().item() == 0)
        #expect(throws: RewardError.promptCount(images: 2, prompts: 3)) { try reward.score(images, prompts: ["a", "b", "c"]) }
        let weighted = WeightedReward()
        weighted.add(reward, gamma: 2)
        let (total, terms) = try weighted.evaluate(images, prompts: F.prompts)
        #expect(O.relativeError(total, try F.tensor("scores_training") * 2) < 1e-4)
        #expect(terms.map(\.name) == ["imagereward"])
    }

    /// Half-precision towers (as `--mixed-precision bf16` loads the rewards): the scores stay near float32's and
    /// come back as a differentiable tensor.
    @Test func bfloat16TowersScoreNearFloat32() throws {
        let reward = try ImageRewardReward.load(
            checkpoint: F.url("ImageReward.pt"), config: F.url("med_config.json"), vocabulary: F.url("vocab.txt"), dtype: .bfloat16)
        let images = try F.tensor("images").requiringGrad()
        let scores = try reward.score(images, prompts: F.prompts)
        scores.to(.float32).sum().backward()
        let expected = try F.tensor("scores_training")
        #expect((scores.to(.float32) - expected).abs().max().item() < 5e-2, "\(scores.to(.float32).toArray(Double.self))")
        #expect(images.grad != nil)
    }

    /// Missing files and wrong files: one line naming the file.
    @Test func badFilesAreNamed() throws {
        try F.withFolder { folder in
            let checkpoint = folder.appendingPathComponent("ImageReward.pt")
            try FileManager.default.copyItem(at: F.url("ImageReward.pt"), to: checkpoint)
            // No med_config.json beside it.
            do {
                _ = try ImageRewardReward.load(checkpoint: checkpoint, vocabulary: F.url("vocab.txt"))
                Issue.record("loaded without med_config.json")
            } catch let error as RewardError {
                #expect("\(error)".hasPrefix(checkpoint.path + ": ImageReward needs its text encoder's med_config.json"), "\(error)")
            }
            try FileManager.default.copyItem(at: F.url("med_config.json"), to: folder.appendingPathComponent("med_config.json"))
            // No vocab.txt given or beside it.
            do {
                _ = try ImageRewardReward.load(checkpoint: checkpoint)
                Issue.record("loaded without vocab.txt")
            } catch let error as RewardError {
                #expect("\(error)".contains("vocab.txt"), "\(error)")
            }
            // A vocabulary that is not WordPiece (CLIP's vocab.json here).
            let notWordPiece = O.tokenizerFolder.appendingPathComponent("vocab.json")
            #expect(throws: RewardError.invalidModel(
                file: notWordPiece.path,
                message: "not a WordPiece vocabulary (a BERT vocab.txt, one token per line): no [CLS], [SEP], [UNK], [PAD]")) {
                try ImageRewardReward.load(checkpoint: checkpoint, vocabulary: notWordPiece)
            }
            // Beside it, everything is found.
            try FileManager.default.copyItem(at: F.url("vocab.txt"), to: folder.appendingPathComponent("vocab.txt"))
            _ = try ImageRewardReward.load(checkpoint: checkpoint)
            // A config that does not fit the weights: one error listing the mismatches.
            var config = try BLIPTextConfig.load(from: F.url("med_config.json"))
            config.num_hidden_layers = 3
            #expect(throws: WeightLoadingError.self) {
                try ImageRewardModel.load(checkpoint: checkpoint, config: config, tokenizer: try BertTokenizer(vocabularyFile: F.url("vocab.txt")))
            }
            // A config the package's model cannot be.
            let bad = folder.appendingPathComponent("bad_config.json")
            try Data(#"{"hidden_size": 32, "num_attention_heads": 3, "add_cross_attention": true}"#.utf8).write(to: bad)
            #expect(throws: RewardError.invalidModel(file: bad.path, message: "hidden_size 32 is not a multiple of num_attention_heads 3")) {
                try BLIPTextConfig.load(from: bad)
            }
            // Another checkpoint (the aesthetic head) is not an ImageReward.
            let other = O.root.deletingLastPathComponent().appendingPathComponent("hf/aesthetic.pth")
            #expect(throws: RewardError.invalidModel(
                file: other.path, message: "not an ImageReward checkpoint: no blip.visual_encoder.patch_embed.proj.weight")) {
                try ImageRewardModel.load(checkpoint: other, config: config, tokenizer: try BertTokenizer(vocabularyFile: F.url("vocab.txt")))
            }
        }
    }

    /// Through the registry, as `--reward imagereward=CKPT[,VOCAB]` gives it.
    @Test func registryLoadsIt() throws {
        try F.withFolder { folder in
            for name in ["ImageReward.pt", "med_config.json"] {
                try FileManager.default.copyItem(at: F.url(name), to: folder.appendingPathComponent(name))
            }
            let checkpoint = folder.appendingPathComponent("ImageReward.pt").path
            let reward = try RewardRegistry.load(name: "imagereward", paths: [checkpoint, F.url("vocab.txt").path])
            let images = try F.tensor("images")
            #expect(O.relativeError(try reward.score(images, prompts: F.prompts), try F.tensor("scores_training")) < 1e-4)
            #expect(throws: RewardError.invalidArgument(
                "--reward imagereward takes ImageReward.pt and optionally its vocab.txt: imagereward=CKPT[,VOCAB], got 3 path(s)")) {
                try RewardRegistry.load(name: "imagereward", paths: [checkpoint, checkpoint, checkpoint])
            }
        }
    }
}

@Suite struct BertTokenizerTests {
    typealias F = ImageRewardFixtures

    struct Expected: Decodable {
        let prompts: [String]
        let tokens: [[String]]
        let ids: [[Int]]
        let mask: [[Int]]
    }

    /// transformers' BertTokenizer (with BLIP's [DEC] and [ENC]) on accents, CJK, special tokens in the text,
    /// punctuation, Greek sigma, unusual whitespace, control and format characters, words over 100 characters, and
    /// a prompt truncated at 35 tokens.
    @Test func idsMatchTransformers() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: F.url("tokens.json")))
        let tokenizer = try BertTokenizer(vocabularyFile: F.url("vocab.txt"))
        let (ids, mask) = tokenizer.tokenize(expected.prompts)
        for (i, prompt) in expected.prompts.enumerated() {
            #expect(ids[i] == expected.ids[i], "\(prompt.debugDescription): \(tokenizer.tokens(prompt)) vs \(expected.tokens[i])")
            #expect(mask[i] == expected.mask[i], "\(prompt.debugDescription)")
            #expect(tokenizer.tokens(prompt) == expected.tokens[i])
        }
        #expect(expected.prompts.count >= 13)
        #expect(expected.ids.last!.count == 35 && !expected.ids.last!.contains(tokenizer.padTokenId))
    }

    @Test func wordPieceBasics() throws {
        let tokenizer = try BertTokenizer(tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "a", "##b"], maxLength: 6)
        #expect(tokenizer.tokens("UnAffable") == ["un", "##aff", "##able"])
        #expect(tokenizer.tokens("unaffablex") == ["[UNK]"])  // no piece for the rest: the whole word is unknown
        #expect(tokenizer.encode("[DEC][ENC]") == [9, 10])  // BLIP's added tokens, after the vocabulary
        #expect(tokenizer.vocabularySize == 11)
        let (ids, mask) = tokenizer.tokenize(["ab ab ab ab ab"])
        #expect(ids == [[2, 7, 8, 7, 8, 3]] && mask == [[1, 1, 1, 1, 1, 1]])
        #expect(throws: RewardError.invalidModel(
            file: "vocabulary", message: "not a WordPiece vocabulary (a BERT vocab.txt, one token per line): no [SEP]")) {
            try BertTokenizer(tokens: ["[PAD]", "[UNK]", "[CLS]"])
        }
    }
}

/// The real checkpoint, when `TEXTCRAFTOR_IMAGEREWARD` names `ImageReward.pt` with `med_config.json` and
/// bert-base-uncased's `vocab.txt` beside it: it loads strictly as ViT-L/16 + BERT-base, tokenizes as BERT does, and
/// scores in the package's range.
@Suite struct ImageRewardRealCheckpointTests {
    static let path = ProcessInfo.processInfo.environment["TEXTCRAFTOR_IMAGEREWARD"]

    @Test(.enabled(if: path != nil, "set TEXTCRAFTOR_IMAGEREWARD to ImageReward.pt (med_config.json and vocab.txt beside it)"))
    func realCheckpointLoadsAndScores() throws {
        let reward = try ImageRewardReward.load(checkpoint: URL(fileURLWithPath: Self.path!), preprocessing: .evaluation)
        #expect(reward.model.visual.config == .vitL16)
        // bert-base-uncased: [CLS] a photo of a cat [SEP].
        #expect(reward.model.tokenizer.tokenize(["A photo of a cat."]).ids[0].prefix(8) == [101, 1037, 6302, 1997, 1037, 4937, 1012, 102])
        let images = Tensor.rand([1, 3, 256, 256], generator: Generator(seed: 0))
        let score = try reward.score(images, prompts: ["random noise"]).item()
        #expect(score > -4 && score < 4, "ImageReward score \(score)")
    }
}
