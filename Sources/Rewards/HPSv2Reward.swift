import Foundation
import StableDiffusion
import Torch

/// HPSv2 (Human Preference Score v2, Wu et al. 2023): open_clip ViT-H/14 fine-tuned on human preferences; the score
/// is the cosine similarity of the image and prompt embeddings (~0.27 for Stable Diffusion 1.5 on Parti prompts).
/// HPSv2's own `score` takes the diagonal of `image_features @ text_features.T` with both normalised, which is this.
/// TextCraftor scales it by 100 in its loss; that is `WeightedReward`'s scale, not applied here.
///
/// HPSv2.1 (`HPS_v2.1_compressed.pt`) is the same model retrained: the hpsv2 package builds the same ViT-H-14 for
/// both versions, loads either file with `model.load_state_dict(checkpoint['state_dict'])` and preprocesses alike, so
/// only the name differs (`hpsv2.1`, so reports and scales tell the two apart).
public final class HPSv2Reward: Reward {
    /// `hpsv2`, or `hpsv2.1` for the v2.1 checkpoint.
    public let name: String
    public var preprocessing: PreprocessingMode
    public let model: OpenCLIPModel
    /// The hpsv2 package's `preprocess_val`: open_clip's, torchvision on PIL.
    public var fileProcessor: PublishedImageProcessor { .torchvision(size: model.imageSize) }

    public init(model: OpenCLIPModel, preprocessing: PreprocessingMode = .training, name: String = "hpsv2") {
        self.model = model
        self.preprocessing = preprocessing
        self.name = name
    }

    /// Loads `HPS_v2_compressed.pt` or `HPS_v2.1_compressed.pt` (open_clip ViT-H-14 weights under `state_dict`), or
    /// the same weights as safetensors. Weights are converted to `dtype` (float32 by default: the checkpoints may
    /// be stored in half precision). `tokenizerFolder` is only for models with another vocabulary (tests' tiny models).
    public static func load(
        checkpoint: URL, config: OpenCLIPConfig = .vitH14, tokenizerFolder: URL? = nil, dtype: DType = .float32,
        device: Device = .cpu, preprocessing: PreprocessingMode = .training, name: String = "hpsv2"
    ) throws -> HPSv2Reward {
        let model = try OpenCLIPModel.load(
            checkpoint: checkpoint, config: config, tokenizerFolder: tokenizerFolder, dtype: dtype, device: device)
        model.setTrainable(false)
        return HPSv2Reward(model: model, preprocessing: preprocessing, name: name)
    }

    /// Cosine similarities [B] in [-1, 1], differentiable with respect to `images` [B, 3, H, W] in [0, 1].
    public func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        let prompts = try promptsFor(images, prompts)
        return model.cosineSimilarity(images, prompts: prompts, preprocessing: preprocessing)
    }
}
