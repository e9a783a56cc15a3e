import Torch

/// Several rewards combined as TextCraftor's objective: total = Σ γᵢ · scaleᵢ · N(Rᵢ) (the loss is its negative),
/// N the `normalization` (none by default: N(R) = R). The scales bring raw rewards to comparable sizes; the defaults
/// are the authors' (METHOD.md).
public final class WeightedReward {
    public struct Term {
        public let reward: any Reward
        public var gamma: Double
        public var scale: Double
    }

    /// The authors' scales: aesthetic 3, PickScore 1, HPSv2 100, CLIP 100; HPSv2.1 as HPSv2 and the aesthetic
    /// predictor v2.5 as the first one (scores of the same 1–10 range).
    public static let defaultScales = [
        "aesthetic": 3.0, "pickscore": 1.0, "hpsv2": 100.0, "clip": 100.0, "hpsv2.1": 100.0, "aesthetic25": 3.0,
    ]

    public private(set) var terms: [Term] = []
    /// How raw scores are normalised before γ · scale (`RewardNormalization`); `none` by default.
    public let normalization: RewardNormalization
    /// `running`: each reward's running moments, by name (checkpointed with the run).
    public var runningMoments: [String: RunningMoments] = [:]
    /// Each term's mean contribution to the total over the last evaluated batch, γ · scale · normalised reward, in
    /// the order of `terms` (the loss is their negative sum).
    public private(set) var lastContributions: [(name: String, value: Double)] = []

    public init(normalization: RewardNormalization = .none) {
        self.normalization = normalization
    }

    /// Adds a reward with weight `gamma` and its default scale unless one is given (1 when scores are normalised).
    public func add(_ reward: any Reward, gamma: Double = 1, scale: Double? = nil) {
        let defaultScale = normalization == .none ? Self.defaultScales[reward.name] ?? 1 : 1
        terms.append(Term(reward: reward, gamma: gamma, scale: scale ?? defaultScale))
    }

    /// Raw scores [B] of the reward `name` normalised as `normalization` says; `running` first adds them to the
    /// reward's moments.
    public func normalised(_ scores: Tensor, name: String) -> Tensor {
        let (mean, std): (Double, Double)
        switch normalization {
        case .none:
            return scores
        case .fixed:
            (mean, std) = RewardNormalization.fixed(name)
        case .running:
            var moments = runningMoments[name] ?? RunningMoments()
            moments.add(scores.detach().to(.float64).toArray(Double.self))
            runningMoments[name] = moments
            let fallback = RewardNormalization.fixed(name).std
            let sd = moments.standardDeviation.flatMap { $0 > 1e-12 ? $0 : nil } ?? fallback
            (mean, std) = (moments.count >= 2 ? moments.mean : RewardNormalization.fixed(name).mean, sd)
        }
        return (scores - mean) * (1 / std)
    }

    /// Each reward's raw scores [B] by name, and the weighted total [B]. Differentiable with respect to the images.
    public func evaluate(_ images: Tensor, prompts: [String]) throws -> (total: Tensor, terms: [(name: String, scores: Tensor)]) {
        precondition(!terms.isEmpty, "WeightedReward: no rewards added")
        return try ImageEmbeddingCache.shared.scope { try weightedSum { try $0.score(images, prompts: prompts) } }
    }

    /// The same for 8-bit images read from files (PNG, JPEG), each reward seeing them as its published tool does:
    /// Pillow's bicubic resize and the tool's crop (`Reward.fileProcessor`), bit for bit, then its normalisation.
    /// Rewards with the same processor share the processed batch (and so, on one model, one forward).
    public func evaluate(files images: [RGB8Image], prompts: [String], device: Device = .cpu) throws
        -> (total: Tensor, terms: [(name: String, scores: Tensor)])
    {
        precondition(!terms.isEmpty, "WeightedReward: no rewards added")
        var processed: [PublishedImageProcessor: Tensor] = [:]
        return try ImageEmbeddingCache.shared.scope {
            try weightedSum { reward in
                let processor = reward.fileProcessor
                let batch = processed[processor] ?? processor.tensor(images, device: device)
                processed[processor] = batch
                return try reward.score(processed: batch, prompts: prompts)
            }
        }
    }

    func weightedSum(_ score: (any Reward) throws -> Tensor) throws -> (total: Tensor, terms: [(name: String, scores: Tensor)]) {
        var total: Tensor? = nil
        var parts: [(name: String, scores: Tensor)] = []
        var contributions: [(name: String, value: Double)] = []
        for term in terms {
            // Scores of half-precision towers are summed in float32 (the loss and its gradient keep their digits).
            let raw = try score(term.reward)
            let scores = raw.dtype == .float32 || raw.dtype == .float64 ? raw : raw.to(.float32)
            parts.append((term.reward.name, scores))
            let weighted = normalised(scores, name: term.reward.name) * (term.gamma * term.scale)
            contributions.append((term.reward.name, weighted.detach().mean().to(.float64).item()))
            total = total.map { $0 + weighted } ?? weighted
        }
        lastContributions = contributions
        return (total!, parts)
    }

    /// `lastContributions` as metrics: `NAME_contribution` and its value.
    public var contributionMetrics: [(String, Double)] { lastContributions.map { ("\($0.name)_contribution", $0.value) } }

    /// Sets the preprocessing of every reward.
    public func setPreprocessing(_ mode: PreprocessingMode) {
        for term in terms { term.reward.preprocessing = mode }
    }
}
