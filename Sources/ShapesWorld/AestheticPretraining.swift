import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// How well an aesthetic head predicts the oracle's quality score on fresh images.
public struct AestheticEvaluation: Sendable, CustomStringConvertible {
    /// Mean absolute error in score units (1–10).
    public var mae: Double
    /// Mean squared error in score units.
    public var mse: Double
    /// Pearson correlation of the predictions with the oracle.
    public var pearson: Double
    /// Spearman rank correlation (average ranks for ties).
    public var spearman: Double
    /// The variance of the oracle's scores: the MSE of the best constant prediction, their mean.
    public var baselineMSE: Double

    public var description: String {
        String(format: "MAE %.3f, MSE %.3f (constant predictor %.3f), Pearson %.3f, Spearman %.3f",
               mae, mse, baselineMSE, pearson, spearman)
    }
}

/// Trains ShapesWorld's aesthetic head: an `AestheticPredictor` (the LAION improved aesthetic predictor's MLP) on the
/// L2-normalised image embeddings of a frozen CLIP, regressing `Oracle.quality` (1–10) of renders of training
/// scenes, about 70% of them degraded by a random `Degradation`. The saved head predicts the score directly, as
/// LAION's does, and loads with `AestheticPredictor.load` into an `AestheticReward`.
public final class AestheticPretrainer {
    /// The frozen CLIP whose image embeddings the head reads. Its parameters are left as they are: the embeddings are
    /// computed without gradients, so nothing flows back into it.
    public let clip: CLIPModel
    /// The head being trained (input width: the CLIP's projection dimension).
    public let head: AestheticPredictor
    let optimizer: AdamW
    var random: SplitMix64
    /// Evaluation draws from its own stream, so evaluating does not change the training batches.
    let evaluationSeed: UInt64
    public let batchSize: Int
    /// The probability that a training image is degraded.
    public let degradationProbability: Double
    /// Whether the head's dropouts (0.2, 0.2, 0.1, as LAION's) are active in training. Off by default: dropout draws
    /// from libtorch's global generator, so with it a seed no longer fixes the run.
    public let dropout: Bool
    /// With a VAE, this share of the images is replaced by its reconstruction (encode, posterior mean, decode).
    public let vae: AutoencoderKL?
    public let reconstructionProbability: Double

    /// Scores are learned around the middle of the scale: the head's last bias starts there.
    static let midpoint = 5.5

    public init(
        clip: CLIPModel, seed: UInt64, batchSize: Int = 64, learningRate: Double = 1e-3,
        degradationProbability: Double = 0.7, dropout: Bool = false, vae: AutoencoderKL? = nil,
        reconstructionProbability: Double = 0.5
    ) throws {
        self.clip = clip
        self.vae = vae
        self.reconstructionProbability = reconstructionProbability
        let width = clip.config.projection_dim
        let weight = clip.visualProjection.weight
        let head = try VarBuilder(initializingWith: Generator(seed: seed), dtype: weight.dtype, device: weight.device)
            .build { AestheticPredictor($0, inputWidth: width) }
        // A fresh nn.Linear stack outputs about 0; starting at the scale's midpoint spares the first steps the walk
        // there, so the loss that falls is the part the embeddings explain.
        withNoGrad {
            if let bias = head.namedParameters.first(where: { $0.name == "layers.7.bias" })?.tensor {
                bias.fill_(Self.midpoint)
            }
        }
        head.setTrainable(true)
        self.head = head
        optimizer = AdamW(parameters: head.trainableParameters, learningRate: learningRate, weightDecay: 0.01)
        random = SplitMix64(seed: seed)
        evaluationSeed = seed ^ 0x5EED_AE57_4E71_C500
        self.batchSize = batchSize
        self.degradationProbability = degradationProbability
        self.dropout = dropout
    }

    /// `count` random scenes of `split`, each degraded with probability `degradationProbability` by one random
    /// degradation (kind uniform, strength uniform in [0.2, 1]), as images [count, 3, 32, 32] and oracle scores.
    func batch(count: Int, split: Split, using generator: inout SplitMix64) -> (images: Tensor, scores: [Double]) {
        var images: [[UInt8]] = []
        var throughVAE: [Int] = []
        for i in 0..<count {
            var pixels = Renderer.render(Scene.random(split: split, using: &generator))
            if generator.unit() < degradationProbability {
                pixels = Degradation.random(using: &generator).apply(to: pixels)
            }
            if vae != nil, generator.unit() < reconstructionProbability { throughVAE.append(i) }
            images.append(pixels)
        }
        if let vae, !throughVAE.isEmpty {
            // What the pipeline draws is decoded by the VAE: the head learns to judge such images too, each scored
            // by the oracle as it is after the round trip.
            let decoded = withNoGrad {
                let x = Renderer.tensor(throughVAE.map { images[$0] }) * 2 - 1
                return ((vae.decode(vae.encode(x).mode()) / 2 + 0.5).clamp(min: 0, max: 1) * 255).round()
                    .permute([0, 2, 3, 1]).to(.uint8).contiguous().toArray(UInt8.self)
            }
            let size = Renderer.side * Renderer.side * 3
            for (k, i) in throughVAE.enumerated() { images[i] = Array(decoded[k * size..<(k + 1) * size]) }
        }
        return (Renderer.tensor(images), images.map(Oracle.quality))
    }

    /// The L2-normalised CLIP image embeddings [B, E] of images [B, 3, 32, 32] in [0, 1], without gradients.
    func embeddings(_ images: Tensor) -> Tensor {
        withNoGrad {
            let weight = clip.visualProjection.weight
            let pixels = ImagePreprocessor(size: clip.imageSize)(images.to(dtype: weight.dtype, device: weight.device),
                                                                 mode: .training)
            return Functional.normalize(clip.imageFeatures(pixels), dim: -1).detach()
        }
    }

    /// The head's scores [B] of images [B, 3, 32, 32] in [0, 1] (eval mode: no dropout).
    public func predict(_ images: Tensor) -> [Double] {
        withNoGrad { head(embeddings(images)).squeeze(1).to(.float64).toArray(Double.self) }
    }

    /// One AdamW step on a fresh training batch; returns the batch's MSE (score units²) before the step.
    @discardableResult
    public func step() -> Double {
        let (images, scores) = batch(count: batchSize, split: .train, using: &random)
        let x = embeddings(images)
        let target = Tensor(scores.map(Float.init), shape: [scores.count, 1]).to(dtype: x.dtype, device: x.device)
        let loss = Functional.mseLoss(head(x, training: dropout), target)
        loss.backward()
        optimizer.step()
        optimizer.zeroGrad()
        return loss.item()
    }

    /// The head against the oracle on `count` fresh images of `split` (held-out scenes by default: the
    /// (shape, colour) pairs training never shows), degraded as in training. The same images on every call.
    public func evaluate(count: Int = 256, split: Split = .heldOut) -> AestheticEvaluation {
        var generator = SplitMix64(seed: evaluationSeed)
        var predictions: [Double] = [], targets: [Double] = []
        var remaining = count
        while remaining > 0 {
            let n = min(remaining, 128)
            let (images, scores) = batch(count: n, split: split, using: &generator)
            predictions += predict(images)
            targets += scores
            remaining -= n
        }
        let errors = zip(predictions, targets).map { $0 - $1 }
        let mean = targets.reduce(0, +) / Double(count)
        return AestheticEvaluation(
            mae: errors.map(abs).reduce(0, +) / Double(count),
            mse: errors.map { $0 * $0 }.reduce(0, +) / Double(count),
            pearson: pearsonCorrelation(predictions, targets),
            spearman: pearsonCorrelation(ranks(predictions), ranks(targets)),
            baselineMSE: targets.map { $0 - mean }.map { $0 * $0 }.reduce(0, +) / Double(count))
    }

    /// Writes the head as safetensors under LAION's names (`layers.0.weight` … `layers.7.bias`), on the CPU in
    /// `dtype`, for `AestheticPredictor.load`.
    public func save(to url: URL, dtype: DType = .float32) throws {
        try ModelWriter.saveWeights(head.stateDict(), dtype: dtype, metadata: ["source": "ShapesWorld aesthetic head"], to: url)
    }
}

/// Pearson's r of two equally long samples (0 when either is constant).
func pearsonCorrelation(_ a: [Double], _ b: [Double]) -> Double {
    precondition(a.count == b.count && !a.isEmpty)
    let n = Double(a.count)
    let ma = a.reduce(0, +) / n, mb = b.reduce(0, +) / n
    var sab = 0.0, saa = 0.0, sbb = 0.0
    for (x, y) in zip(a, b) {
        sab += (x - ma) * (y - mb)
        saa += (x - ma) * (x - ma)
        sbb += (y - mb) * (y - mb)
    }
    return saa > 0 && sbb > 0 ? sab / (saa * sbb).squareRoot() : 0
}

/// Ranks from 1, ties given their average rank (as scipy's rankdata).
func ranks(_ values: [Double]) -> [Double] {
    let order = values.indices.sorted { values[$0] < values[$1] }
    var out = [Double](repeating: 0, count: values.count)
    var i = 0
    while i < order.count {
        var j = i
        while j + 1 < order.count && values[order[j + 1]] == values[order[i]] { j += 1 }
        for k in i...j { out[order[k]] = Double(i + j) / 2 + 1 }
        i = j + 1
    }
    return out
}
