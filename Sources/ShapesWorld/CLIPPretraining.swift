import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// The tiny CLIP of ShapesWorld, in transformers' `CLIPModel` layout (the format of PickScore), so that the same
/// loading code reads it and diffusers/transformers can too. It reads the real CLIP BPE ids, 77 tokens.
public enum TinyCLIP {
    public static func config() -> CLIPConfig {
        var config = CLIPConfig()
        config.projection_dim = 64
        config.text_config.vocab_size = 49408
        config.text_config.hidden_size = 64
        config.text_config.intermediate_size = 256
        config.text_config.num_hidden_layers = 3
        config.text_config.num_attention_heads = 4
        config.text_config.max_position_embeddings = 77
        config.text_config.projection_dim = 64
        config.vision_config.hidden_size = 64
        config.vision_config.intermediate_size = 256
        config.vision_config.num_hidden_layers = 3
        config.vision_config.num_attention_heads = 4
        config.vision_config.image_size = 32
        config.vision_config.patch_size = 4
        config.vision_config.projection_dim = 64
        return config
    }
}

/// CLIP's symmetric contrastive loss: the cross-entropy of the scaled cosine-similarity matrix against its diagonal,
/// images to texts and texts to images, averaged.
public func contrastiveLoss(imageEmbeddings: Tensor, textEmbeddings: Tensor, logitScale: Tensor) -> Tensor {
    let images = Functional.normalize(imageEmbeddings, dim: -1), texts = Functional.normalize(textEmbeddings, dim: -1)
    let logits = images.matmul(texts.T) * logitScale.exp()
    let diagonal = Tensor.arange(Double(logits.size(0)), device: logits.device).unsqueeze(1)
    func crossEntropy(_ l: Tensor) -> Tensor { -Functional.logSoftmax(l, dim: 1).gather(dim: 1, index: diagonal).mean() }
    return (crossEntropy(logits) + crossEntropy(logits.T)) / 2
}

/// Trains the tiny CLIP contrastively on rendered scenes and their grammar captions (training split only). By
/// default half the renders are degraded and most captions name the quality ("blurry, a large red circle ..."), so
/// that the image embeddings carry quality, which the aesthetic head reads.
public final class CLIPPretrainer {
    public let model: CLIPModel
    let optimizer: AdamW
    var random: SplitMix64
    public let batchSize: Int
    public let recipe: SampleRecipe

    public static let defaultRecipe = SampleRecipe(degradationProbability: 0.5, qualityWordProbability: 0.8)

    public init(seed: UInt64, batchSize: Int = 64, learningRate: Double = 1e-3,
                recipe: SampleRecipe = CLIPPretrainer.defaultRecipe) throws {
        let model = try CLIPModel(VarBuilder(initializingWith: Generator(seed: seed)), config: TinyCLIP.config(),
                                  tokenizer: try CLIPTokenizer.bundled())
        // transformers' CLIP initialisation for the embeddings (N(0, 0.02)): nn.Embedding's N(0, 1), our default,
        // makes the position embeddings drown the patch content, and the tower barely learns.
        let generator = Generator(seed: seed &+ 1)
        withNoGrad {
            for (name, tensor) in model.namedParameters where name.hasSuffix("embedding.weight") || name.hasSuffix("class_embedding") {
                if !name.hasSuffix("patch_embedding.weight") { tensor.normal_(mean: 0, std: 0.02, generator: generator) }
            }
        }
        model.setTrainable(true)
        self.model = model
        optimizer = AdamW(parameters: model.trainableParameters, learningRate: learningRate, weightDecay: 0.1)
        random = SplitMix64(seed: seed)
        self.batchSize = batchSize
        self.recipe = recipe
    }

    /// A batch of scenes with one caption each; scenes are distinct so the diagonal is the only right match.
    func batch(split: Split) -> (images: Tensor, captions: [String]) {
        let samples = Scene.distinct(batchSize, split: split, using: &random).map { Sample.make($0, recipe: recipe, using: &random) }
        return (Renderer.tensor(samples.map(\.pixels)), samples.map(\.caption))
    }

    func loss(_ images: Tensor, _ captions: [String]) -> Tensor {
        let pixels = ImagePreprocessor(size: model.imageSize)(images, mode: .training)
        return contrastiveLoss(imageEmbeddings: model.imageFeatures(pixels),
                               textEmbeddings: model.textFeatures(tokenIds(model.tokenizer, captions)),
                               logitScale: model.logitScaleParameter)
    }

    /// One AdamW step on a fresh training batch; returns the loss.
    @discardableResult
    public func step() -> Double {
        let (images, captions) = batch(split: .train)
        let value = loss(images, captions)
        value.backward()
        optimizer.step()
        optimizer.zeroGrad()
        return value.item()
    }

    /// Fraction of a fresh batch's images whose own caption scores highest among the batch's captions.
    public func retrievalAccuracy(split: Split) -> Double {
        withNoGrad {
            let (images, captions) = batch(split: split)
            let pixels = ImagePreprocessor(size: model.imageSize)(images, mode: .training)
            let i = Functional.normalize(model.imageFeatures(pixels), dim: -1)
            let t = Functional.normalize(model.textFeatures(tokenIds(model.tokenizer, captions)), dim: -1)
            let best = i.matmul(t.T).argmax(dim: 1).toArray(Int64.self)
            return Double(best.enumerated().filter { Int64($0.offset) == $0.element }.count) / Double(best.count)
        }
    }
}
