import Foundation
import Rewards
import StableDiffusion
import Torch

/// The ShapesWorld bundle that ships with the package (`Resources/ShapesWorld`, written by `textcraftor shapes
/// pretrain`): a diffusers folder plus `rewards/`.
public enum ShapesWorldBundle {
    /// The shipped bundle's folder, if the resource is there.
    public static var url: URL? {
        Bundle.module.url(forResource: "ShapesWorld", withExtension: nil, subdirectory: "Resources")
    }

    /// The CLIP reward's folder in a bundle.
    public static func clip(in bundle: URL) -> URL { bundle.appendingPathComponent("rewards/clip") }
    /// The aesthetic head in a bundle.
    public static func aestheticHead(in bundle: URL) -> URL { bundle.appendingPathComponent("rewards/aesthetic.safetensors") }

    /// The bundle's reward `name` (aesthetic or clip), loaded by `RewardRegistry` from the bundle's files.
    public static func reward(_ name: String, in bundle: URL, device: Device = .cpu) throws -> any Reward {
        let clip = clip(in: bundle).path
        return try RewardRegistry.load(
            name: name, paths: name == "aesthetic" ? [clip, aestheticHead(in: bundle).path] : [clip], device: device)
    }
}

/// Prompts for evaluation and training: quality-silent captions of distinct scenes of a split.
public enum ShapesPrompts {
    /// `count` captions of distinct random scenes of `split`, each from a random template (seeded).
    public static func make(count: Int, split: Split, seed: UInt64) -> [String] {
        var random = SplitMix64(seed: seed)
        return Scene.distinct(count, split: split, using: &random).map { Captions.caption(for: $0, seed: random.next()) }
    }
}

/// The four numbers ShapesWorld judges an image by: two rewards (what training sees) and two oracle readings (the
/// truth, from the pixels).
public struct ShapesScores: Codable, Sendable, Equatable {
    /// The aesthetic head's score (about 1–10).
    public var aesthetic: Double
    /// CLIP score: cosine similarity of the tiny CLIP's image and prompt embeddings.
    public var clipScore: Double
    /// The fraction of the prompt's attributes the oracle reads off the image.
    public var alignment: Double
    /// The oracle's quality score (1–10).
    public var quality: Double

    public init(aesthetic: Double, clipScore: Double, alignment: Double, quality: Double) {
        self.aesthetic = aesthetic
        self.clipScore = clipScore
        self.alignment = alignment
        self.quality = quality
    }

    /// The mean of each number.
    public static func mean(_ scores: [ShapesScores]) -> ShapesScores {
        let n = Double(max(scores.count, 1))
        return ShapesScores(
            aesthetic: scores.map(\.aesthetic).reduce(0, +) / n, clipScore: scores.map(\.clipScore).reduce(0, +) / n,
            alignment: scores.map(\.alignment).reduce(0, +) / n, quality: scores.map(\.quality).reduce(0, +) / n)
    }
}

/// Scores images with the bundle's rewards and the oracle.
public final class ShapesJudge {
    public let aesthetic: any Reward
    public let clip: any Reward

    public init(aesthetic: any Reward, clip: any Reward) {
        self.aesthetic = aesthetic
        self.clip = clip
    }

    /// The judge of a bundle: its `rewards/clip` and `rewards/aesthetic.safetensors`, in evaluation preprocessing.
    public convenience init(bundle: URL) throws {
        let aesthetic = try ShapesWorldBundle.reward("aesthetic", in: bundle)
        let clip = try ShapesWorldBundle.reward("clip", in: bundle)
        aesthetic.preprocessing = .evaluation
        clip.preprocessing = .evaluation
        self.init(aesthetic: aesthetic, clip: clip)
    }

    /// Scores of images [N, H, W, 3] uint8 (a pipeline's output) for their prompts, one per image.
    public func score(images: Tensor, prompts: [String]) throws -> [ShapesScores] {
        precondition(images.size(0) == prompts.count, "ShapesJudge: \(images.size(0)) images for \(prompts.count) prompts")
        let pixels = images.permute([0, 3, 1, 2]).to(.float32) / 255
        let (aesthetic, clip) = try withNoGrad {
            (try self.aesthetic.score(pixels, prompts: prompts).to(.float64).toArray(Double.self),
             try self.clip.score(pixels, prompts: prompts).to(.float64).toArray(Double.self))
        }
        let bytes = images.contiguous().toArray(UInt8.self)
        let stride = images.shape.dropFirst().reduce(1, *)
        return prompts.indices.map { i in
            let image = Array(bytes[i * stride..<(i + 1) * stride])
            return ShapesScores(aesthetic: aesthetic[i], clipScore: clip[i],
                                alignment: Oracle.alignment(image, prompt: prompts[i]), quality: Oracle.quality(image))
        }
    }
}
