import Foundation

/// How each reward's raw score is brought to a common size before γ · scale weighs it, so that a γ means the same for
/// every reward (training's `normalize_rewards`).
/// - `none`: raw scores, weighed by the authors' scales (aesthetic 3, pickscore 1, hpsv2 100, clip 100).
/// - `running`: (R − mean) / std with the running mean and standard deviation of every score of that reward seen so
///   far in the run (Welford's exact running moments, not an exponential average: the result does not depend on a
///   decay constant, and a resumed run restores them from the checkpoint and continues bit for bit). Each batch's
///   scores are added before it is normalised; until a reward has two scores, `fixed`'s statistics stand in.
/// - `fixed`: (R − mean) / std with `RewardNormalization.fixedStatistics`, typical values over Stable Diffusion images.
/// With normalisation on, a reward's default scale is 1 (a given scale still applies).
public enum RewardNormalization: String, CaseIterable, Sendable, Codable {
    case none, running, fixed

    /// Typical mean and spread of each reward over Stable Diffusion 1.x/2.x images, from the ranges the papers and
    /// packages report (README's reward table): the spread is about a quarter of the usual range. imagereward's
    /// package already standardises its score (it subtracts 0.16717362 and divides by 1.0333394, its training
    /// comparisons' statistics), so its are 0 and 1. Unknown rewards: 0 and 1.
    public static let fixedStatistics: [String: (mean: Double, std: Double)] = [
        "aesthetic": (5.5, 0.5),     // LAION aesthetic v2: SD images ~5-6.5 on its 1-10 scale
        "aesthetic25": (5.5, 0.75),  // Aesthetic Predictor v2.5: 1-10, 5.5+ "great"
        "pickscore": (21.0, 1.0),    // PickScore_v1: ~19-22 for SD images (logit_scale 100 x cosine)
        "hpsv2": (0.27, 0.015),      // HPSv2 benchmark: model means 0.25-0.29
        "hpsv2.1": (0.27, 0.015),
        "clip": (0.28, 0.03),        // CLIP cosine of matching pairs: ~0.25-0.33
        "imagereward": (0.0, 1.0),
    ]

    static func fixed(_ name: String) -> (mean: Double, std: Double) { fixedStatistics[name] ?? (0, 1) }
}

/// The running moments of one reward's scores (Welford): count, mean and the sum of squared deviations.
public struct RunningMoments: Codable, Equatable, Sendable {
    public var count = 0
    public var mean = 0.0
    public var m2 = 0.0

    public init(count: Int = 0, mean: Double = 0, m2: Double = 0) {
        self.count = count
        self.mean = mean
        self.m2 = m2
    }

    public mutating func add(_ values: [Double]) {
        for value in values where value.isFinite {
            count += 1
            let delta = value - mean
            mean += delta / Double(count)
            m2 += delta * (value - mean)
        }
    }

    /// The sample standard deviation (n − 1); nil below two scores.
    public var standardDeviation: Double? { count >= 2 ? (m2 / Double(count - 1)).squareRoot() : nil }
}
