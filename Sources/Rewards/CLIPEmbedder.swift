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
    /// Cosine similarity [B] of each image with its prompt, with `preprocessing` bringing images to the tower.
    public func cosineSimilarity(_ images: Tensor, prompts: [String], preprocessing: PreprocessingMode) -> Tensor {
        let pixels = ImagePreprocessor(size: imageSize)(images, mode: preprocessing)
        let image = Functional.normalize(imageEmbeddings(pixels), dim: -1)
        let ids = tokenIds(tokenizer, prompts, device: images.device)
        let text = Functional.normalize(textEmbeddings(ids).to(image.dtype), dim: -1)
        return (image * text).sum(dim: -1)
    }
}
