import Foundation
import NN
import StableDiffusion
import Torch

/// The head of the LAION improved aesthetic predictor v2 (`sac+logos+ava1-l14-linearMSE.pth`): five linear layers
/// with no activation between them (so one affine map in effect, trained as a deep one), dropout only in training.
/// Keys as the original `nn.Sequential`: `layers.0`, `layers.2`, `layers.4`, `layers.6`, `layers.7`.
public final class AestheticPredictor: Module {
    public let scope: ParameterScope
    /// The width of the image embeddings it reads (768 for CLIP ViT-L/14).
    public let inputWidth: Int
    let layers: [Linear]
    let dropouts = [Dropout(p: 0.2), Dropout(p: 0.2), Dropout(p: 0.1)]

    public init(_ vb: VarBuilder, inputWidth: Int = 768) {
        scope = vb.scope
        self.inputWidth = inputWidth
        let widths = [inputWidth, 1024, 128, 64, 16, 1]
        layers = zip([0, 2, 4, 6, 7], 0..<5).map { index, i in
            Linear(vb.pp("layers").pp(index), inFeatures: widths[i], outFeatures: widths[i + 1])
        }
    }

    /// Scores [B, 1] of L2-normalised image embeddings [B, inputWidth].
    public func callAsFunction(_ x: Tensor, training: Bool = false) -> Tensor {
        var h = x
        for (i, layer) in layers.enumerated() {
            h = layer(h)
            if i < dropouts.count { h = dropouts[i](h, training: training) }
        }
        return h
    }

    /// Reads the predictor from a `torch.save` state dict (`.pth`) or safetensors, strictly; the input width comes
    /// from `layers.0.weight`.
    public static func load(_ url: URL, dtype: DType? = nil, device: Device = .cpu) throws -> AestheticPredictor {
        let weights = try Weights.open(url)
        let width = weights.info("layers.0.weight").flatMap { $0.shape.count == 2 ? $0.shape[1] : nil } ?? 768
        return try VarBuilder.load(weights, dtype: dtype, device: device) { AestheticPredictor($0, inputWidth: width) }
    }
}

/// The LAION aesthetic score (about 1–10): the predictor on the L2-normalised image embedding of a CLIP model
/// (OpenAI CLIP ViT-L/14 for the released weights). Prompts are not read, but checked like every reward's.
public final class AestheticReward: Reward {
    public let name = "aesthetic"
    public var preprocessing: PreprocessingMode
    /// The LAION predictor's own script scores images through OpenAI CLIP's `preprocess` (torchvision on PIL).
    public var fileProcessor: PublishedImageProcessor { .torchvision(size: embedder.imageSize) }
    public let embedder: any CLIPEmbedder
    public let predictor: AestheticPredictor
    /// Where the predictor came from, for errors.
    let predictorOrigin: String

    public init(
        embedder: any CLIPEmbedder, predictor: AestheticPredictor, predictorOrigin: String = "aesthetic predictor",
        preprocessing: PreprocessingMode = .training
    ) {
        self.embedder = embedder
        self.predictor = predictor
        self.predictorOrigin = predictorOrigin
        self.preprocessing = preprocessing
    }

    /// `weights`: the predictor file (`sac+logos+ava1-l14-linearMSE.pth` or a safetensors copy).
    public convenience init(
        embedder: any CLIPEmbedder, weights: URL, preprocessing: PreprocessingMode = .training, dtype: DType? = nil,
        device: Device = .cpu
    ) throws {
        self.init(
            embedder: embedder, predictor: try AestheticPredictor.load(weights, dtype: dtype, device: device),
            predictorOrigin: weights.path, preprocessing: preprocessing)
    }

    /// `clipFolder`: a transformers `CLIPModel` folder (openai/clip-vit-large-patch14); `weights`: the predictor.
    public convenience init(
        clipFolder: URL, weights: URL, preprocessing: PreprocessingMode = .training, dtype: DType? = nil,
        device: Device = .cpu
    ) throws {
        try self.init(
            embedder: try CLIPModel.load(folder: clipFolder, dtype: dtype, device: device), weights: weights,
            preprocessing: preprocessing, dtype: dtype, device: device)
    }

    public func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        _ = try promptsFor(images, prompts)
        let embeddings = embedder.imageEmbeddings(of: images, preprocessing: preprocessing)
        guard embeddings.size(-1) == predictor.inputWidth else {
            throw RewardError.invalidModel(
                file: predictorOrigin,
                message: "the predictor reads \(predictor.inputWidth)-wide image embeddings, the CLIP model gives "
                    + "\(embeddings.size(-1))")
        }
        let normalised = Functional.normalize(embeddings, dim: -1)
        let weight = predictor.layers[0].weight
        return predictor(normalised.to(dtype: weight.dtype, device: weight.device)).squeeze(1)
    }
}
