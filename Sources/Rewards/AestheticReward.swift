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
    let stack: LinearStack
    var layers: [Linear] { stack.layers }

    public init(_ vb: VarBuilder, inputWidth: Int = 768) {
        scope = vb.scope
        self.inputWidth = inputWidth
        stack = LinearStack(vb, group: "layers", indices: [0, 2, 4, 6, 7], widths: [inputWidth, 1024, 128, 64, 16, 1],
                            dropouts: [0.2, 0.2, 0.1])
    }

    /// Scores [B, 1] of L2-normalised image embeddings [B, inputWidth].
    public func callAsFunction(_ x: Tensor, training: Bool = false) -> Tensor { stack(x, training: training) }

    /// Reads the predictor from a `torch.save` state dict (`.pth`) or safetensors, strictly; the input width comes
    /// from `layers.0.weight`.
    public static func load(_ url: URL, dtype: DType? = nil, device: Device = .cpu) throws -> AestheticPredictor {
        try LinearStack.load(url, firstKey: "layers.0.weight", defaultWidth: 768, dtype: dtype, device: device) {
            AestheticPredictor($0, inputWidth: $1)
        }
    }
}

/// Linear layers with dropout after all but the last few and no activation between them (so one affine map in
/// effect, trained as a deep one): the shape of the LAION predictor, v2.5's scoring head and ImageReward's MLP,
/// which differ in their key names and dropout rates. Its parameters live in the owning module's scope.
struct LinearStack {
    let layers: [Linear]
    let dropouts: [Dropout]

    /// Layer i reads `group.indices[i]`; `dropouts[i]` follows layer i (training only).
    init(_ vb: VarBuilder, group: String, indices: [Int], widths: [Int], dropouts: [Double]) {
        layers = indices.enumerated().map { i, index in
            Linear(vb.pp(group).pp(index), inFeatures: widths[i], outFeatures: widths[i + 1])
        }
        self.dropouts = dropouts.map { Dropout(p: $0) }
    }

    func callAsFunction(_ x: Tensor, training: Bool) -> Tensor {
        var h = x
        for (i, layer) in layers.enumerated() {
            h = layer(h)
            if i < dropouts.count { h = dropouts[i](h, training: training) }
        }
        return h
    }

    /// A head read strictly from a `.pth` (the safe unpickler) or safetensors file, its input width from the first
    /// layer's weight (`firstKey`; `defaultWidth` when that is missing, which the strict load then names).
    static func load<M: Module>(_ url: URL, firstKey: String, defaultWidth: Int, dtype: DType?, device: Device,
                                make: (VarBuilder, Int) -> M) throws -> M {
        let weights = try Weights.open(url)
        let width = weights.info(firstKey).flatMap { $0.shape.count == 2 ? $0.shape[1] : nil } ?? defaultWidth
        return try VarBuilder.load(weights, dtype: dtype, device: device) { make($0, width) }
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
