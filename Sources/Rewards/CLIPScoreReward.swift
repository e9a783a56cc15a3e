import Foundation
import StableDiffusion
import Torch

/// CLIP score: the cosine similarity of each image with its prompt (about 0.25–0.30 for matching pairs).
/// TextCraftor uses it as the constraint against reward hacking. Any `CLIPEmbedder` serves: transformers' `CLIPModel`
/// or an open_clip model.
public final class CLIPScoreReward: Reward {
    public let name = "clip"
    public var preprocessing: PreprocessingMode
    /// A transformers folder: its `CLIPImageProcessor` (as torchmetrics' CLIPScore runs it); an open_clip model:
    /// open_clip's `preprocess_val`.
    public var fileProcessor: PublishedImageProcessor {
        model is OpenCLIPModel ? .torchvision(size: model.imageSize) : .transformersCLIP(size: model.imageSize)
    }
    public let model: any CLIPEmbedder

    public init(model: any CLIPEmbedder, preprocessing: PreprocessingMode = .training) {
        self.model = model
        self.preprocessing = preprocessing
    }

    /// Loads a transformers `CLIPModel` folder.
    public convenience init(
        folder: URL, preprocessing: PreprocessingMode = .training, dtype: DType? = nil, device: Device = .cpu
    ) throws {
        self.init(model: try CLIPModel.load(folder: folder, dtype: dtype, device: device), preprocessing: preprocessing)
    }

    public func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        model.cosineSimilarity(images, prompts: try promptsFor(images, prompts), preprocessing: preprocessing)
    }
}
