import StableDiffusion
import Torch

/// transformers' `CLIPModel` (PickScore_v1, OpenAI CLIP ViT-L/14) as the two-tower interface the rewards use.
/// The conformance lives here because StableDiffusion does not depend on Rewards.
extension CLIPModel: CLIPEmbedder {
    public var logitScale: Tensor? { logitScaleParameter }
    public func imageEmbeddings(_ pixels: Tensor) -> Tensor { imageFeatures(pixels) }
    public func textEmbeddings(_ ids: Tensor) -> Tensor { textFeatures(ids) }
}
