import Foundation
import StableDiffusion
import Torch

/// PickScore (Kirstain et al. 2023): `logit_scale.exp() * cos(image, prompt)` with PickScore_v1, a transformers
/// `CLIPModel` ViT-H/14 fine-tuned on Pick-a-Pic preferences. About 19–22 for Stable Diffusion images.
public final class PickScoreReward: Reward {
    public let name = "pickscore"
    public var preprocessing: PreprocessingMode
    /// PickScore's code scores through transformers' `AutoProcessor`: the slow, PIL `CLIPImageProcessor`.
    public var fileProcessor: PublishedImageProcessor { .transformersCLIP(size: model.imageSize) }
    public let model: any CLIPEmbedder
    let logitScale: Tensor

    /// `model` must have a `logit_scale`.
    public init(model: any CLIPEmbedder, preprocessing: PreprocessingMode = .training) throws {
        guard let logitScale = model.logitScale else {
            throw RewardError.invalidArgument("PickScore needs a CLIP model with a logit_scale; this one has none")
        }
        self.model = model
        self.logitScale = logitScale.detach()
        self.preprocessing = preprocessing
    }

    /// Loads a PickScore_v1 folder (`config.json`, `pytorch_model.bin` or `model.safetensors`, tokenizer files).
    public convenience init(
        folder: URL, preprocessing: PreprocessingMode = .training, dtype: DType? = nil, device: Device = .cpu
    ) throws {
        try self.init(model: try CLIPModel.load(folder: folder, dtype: dtype, device: device), preprocessing: preprocessing)
    }

    public func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        let prompts = try promptsFor(images, prompts)
        let cosine = model.cosineSimilarity(images, prompts: prompts, preprocessing: preprocessing)
        return logitScale.exp().to(dtype: cosine.dtype, device: cosine.device) * cosine
    }
}
