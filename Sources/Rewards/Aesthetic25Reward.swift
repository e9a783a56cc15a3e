import Foundation
import NN
import StableDiffusion
import Torch

/// The head of the Aesthetic Predictor v2.5 (discus0434's `aesthetic-predictor-v2-5`, `aesthetic_predictor_v2_5.pth`):
/// five linear layers 1152 → 1024 → 128 → 64 → 16 → 1 with dropout (0.5, 0.5, 0.5, 0.2, in training only) and no
/// activation between them. Keys as the package's `AestheticPredictorV2_5Head`: `scoring_head.{0,2,4,6,8}`.
public final class AestheticPredictorV25Head: Module {
    public let scope: ParameterScope
    /// The width of the pooled SigLIP embeddings it reads (1152 for siglip-so400m).
    public let inputWidth: Int
    let stack: LinearStack
    var layers: [Linear] { stack.layers }

    public init(_ vb: VarBuilder, inputWidth: Int = 1152) {
        scope = vb.scope
        self.inputWidth = inputWidth
        stack = LinearStack(vb, group: "scoring_head", indices: [0, 2, 4, 6, 8], widths: [inputWidth, 1024, 128, 64, 16, 1],
                            dropouts: [0.5, 0.5, 0.5, 0.2])
    }

    /// Scores [B, 1] of L2-normalised pooled embeddings [B, inputWidth].
    public func callAsFunction(_ x: Tensor, training: Bool = false) -> Tensor { stack(x, training: training) }

    /// Reads the head from a `torch.save` state dict (`.pth`, through the safe unpickler) or safetensors, strictly;
    /// the input width comes from `scoring_head.0.weight`.
    public static func load(_ url: URL, dtype: DType? = nil, device: Device = .cpu) throws -> AestheticPredictorV25Head {
        try LinearStack.load(url, firstKey: "scoring_head.0.weight", defaultWidth: 1152, dtype: dtype, device: device) {
            AestheticPredictorV25Head($0, inputWidth: $1)
        }
    }
}

/// The Aesthetic Predictor v2.5 score (about 1–10; the package calls 5.5 and above great): the head on the
/// L2-normalised pooled output of a SigLIP vision tower (google/siglip-so400m-patch14-384 for the released head).
/// Images reach the tower at its input size (384) with mean = std = 0.5: squashed to the square without a crop in
/// evaluation, as SigLIP's processor does; pooled in training. Prompts are not read, but checked like every reward's.
public final class Aesthetic25Reward: Reward {
    public let name = "aesthetic25"
    public var preprocessing: PreprocessingMode
    public let vision: SiglipVisionModel
    public let head: AestheticPredictorV25Head

    /// Fails when the head reads another width than the tower gives; `headOrigin` names the head in that error.
    public init(
        vision: SiglipVisionModel, head: AestheticPredictorV25Head, headOrigin: String = "aesthetic v2.5 head",
        visionOrigin: String = "the SigLIP model", preprocessing: PreprocessingMode = .training
    ) throws {
        guard head.inputWidth == vision.config.hidden_size else {
            throw RewardError.invalidModel(
                file: headOrigin,
                message: "the head reads \(head.inputWidth)-wide SigLIP embeddings, \(visionOrigin) gives "
                    + "\(vision.config.hidden_size) (hidden_size)")
        }
        self.vision = vision
        self.head = head
        self.preprocessing = preprocessing
    }

    /// `siglipFolder`: a SigLIP folder (a `SiglipVisionModel`, or a whole `SiglipModel` such as
    /// google/siglip-so400m-patch14-384); `headFile`: `aesthetic_predictor_v2_5.pth` or a safetensors copy.
    public convenience init(
        siglipFolder: URL, headFile: URL, preprocessing: PreprocessingMode = .training, dtype: DType? = nil,
        device: Device = .cpu
    ) throws {
        let vision = try SiglipVisionModel.load(folder: siglipFolder, dtype: dtype, device: device)
        let head = try AestheticPredictorV25Head.load(headFile, dtype: dtype, device: device)
        vision.setTrainable(false)
        head.setTrainable(false)
        try self.init(
            vision: vision, head: head, headOrigin: headFile.path, visionOrigin: "the SigLIP model in \(siglipFolder.path)",
            preprocessing: preprocessing)
    }

    /// The package's `SiglipImageProcessor`: Pillow's bicubic resize to 384 x 384, no crop.
    public var fileProcessor: PublishedImageProcessor { .siglip(size: vision.config.image_size) }

    /// How images become the tower's pixels.
    public var preprocessor: ImagePreprocessor {
        ImagePreprocessor(
            size: vision.config.image_size, mean: ImagePreprocessor.siglipMean, std: ImagePreprocessor.siglipStd,
            centreCrop: false)
    }

    /// Scores [B], differentiable with respect to `images` [B, 3, H, W] in [0, 1].
    public func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        _ = try promptsFor(images, prompts)
        let pooled = vision(preprocessor(images, mode: preprocessing)).pooledOutput
        let weight = head.layers[0].weight
        let normalised = Functional.normalize(pooled, dim: -1).to(dtype: weight.dtype, device: weight.device)
        return head(normalised).squeeze(1)
    }
}
