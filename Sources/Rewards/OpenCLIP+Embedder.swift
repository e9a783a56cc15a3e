import StableDiffusion
import Torch

/// open_clip's CLIP as a reward tower. Ids from our tokenizer get open_clip's padding first (see
/// `OpenCLIPModel.openCLIPPadding`), so text embeddings are open_clip's for every supported text pooling.
extension OpenCLIPModel: CLIPEmbedder {
    public func imageEmbeddings(_ pixels: Tensor) -> Tensor { encodeImage(pixels) }
    public func textEmbeddings(_ ids: Tensor) -> Tensor { encodeText(openCLIPPadding(ids)) }
}
