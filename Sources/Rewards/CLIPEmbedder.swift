import Foundation
import StableDiffusion
import Torch

/// A CLIP model with both towers: transformers' `CLIPModel` (PickScore's layout) or open_clip's `CLIP` (HPSv2's).
/// The rewards are written once against this.
public protocol CLIPEmbedder: AnyObject {
    /// The square input size of the image tower (224 for ViT-L/14 and ViT-H/14).
    var imageSize: Int { get }
    /// The tokenizer for the text tower (CLIP BPE, 77 tokens).
    var tokenizer: CLIPTokenizer { get }
    /// `logit_scale` (a log): scores use `exp()` of it. nil for models without one.
    var logitScale: Tensor? { get }
    /// Projected image embeddings [B, E] (not normalised) of normalised pixels [B, 3, imageSize, imageSize].
    func imageEmbeddings(_ pixels: Tensor) -> Tensor
    /// Projected text embeddings [B, E] (not normalised) of token ids [B, L].
    func textEmbeddings(_ ids: Tensor) -> Tensor
}

extension CLIPEmbedder {
    /// Projected image embeddings [B, E] of images [B, 3, H, W] in [0, 1], brought to the tower by `preprocessing`.
    /// Within one `WeightedReward.evaluate`, rewards that read the same model with the same preprocessing (the
    /// aesthetic predictor and the CLIP score on one ViT-L/14) share one forward, and so one backward.
    public func imageEmbeddings(of images: Tensor, preprocessing: PreprocessingMode) -> Tensor {
        ImageEmbeddingCache.shared.embeddings(model: self, images: images, preprocessing: preprocessing) {
            imageEmbeddings(ImagePreprocessor(size: imageSize)(images, mode: preprocessing))
        }
    }

    /// Cosine similarity [B] of each image with its prompt, with `preprocessing` bringing images to the tower.
    public func cosineSimilarity(_ images: Tensor, prompts: [String], preprocessing: PreprocessingMode) -> Tensor {
        let image = Functional.normalize(imageEmbeddings(of: images, preprocessing: preprocessing), dim: -1)
        let ids = tokenIds(tokenizer, prompts, device: images.device)
        let text = Functional.normalize(textEmbeddings(ids).to(image.dtype), dim: -1)
        return (image * text).sum(dim: -1)
    }
}

/// The image embeddings computed during one `WeightedReward.evaluate`, by model, images (the same tensor object)
/// and preprocessing. Empty outside an evaluation, so a tensor's identity is never reused across calls.
final class ImageEmbeddingCache: @unchecked Sendable {
    static let shared = ImageEmbeddingCache()

    private struct Key: Hashable {
        let model: ObjectIdentifier
        let images: ObjectIdentifier
        let preprocessing: PreprocessingMode
    }

    private let lock = NSLock()
    private var depth = 0
    private var entries: [Key: Tensor] = [:]

    /// Runs `body` with the cache on; it is emptied when the outermost scope ends.
    func scope<R>(_ body: () throws -> R) rethrows -> R {
        lock.withLock { depth += 1 }
        defer {
            lock.withLock {
                depth -= 1
                if depth == 0 { entries.removeAll() }
            }
        }
        return try body()
    }

    func embeddings(model: AnyObject, images: Tensor, preprocessing: PreprocessingMode, compute: () -> Tensor) -> Tensor {
        let key = Key(model: ObjectIdentifier(model), images: ObjectIdentifier(images), preprocessing: preprocessing)
        if let cached = lock.withLock({ depth > 0 ? entries[key] : nil }) { return cached }
        let computed = compute()
        lock.withLock { if depth > 0 { entries[key] = computed } }
        return computed
    }
}
