import Foundation
import ShapesWorld

/// A number every image gets: two rewards (what training sees) and the oracle's two readings (the truth).
public enum StudyMetric: String, CaseIterable, Sendable, Codable {
    case aesthetic
    case clip
    case alignment
    case quality

    public func value(_ s: ShapesScores) -> Double {
        switch self {
        case .aesthetic: s.aesthetic
        case .clip: s.clipScore
        case .alignment: s.alignment
        case .quality: s.quality
        }
    }

    public var title: String {
        switch self {
        case .aesthetic: "aesthetic reward"
        case .clip: "CLIP score"
        case .alignment: "oracle alignment"
        case .quality: "oracle quality"
        }
    }

    public var isOracle: Bool { self == .alignment || self == .quality }
}

/// The verdict of a comparison or a finding.
public enum StudyVerdict: String, Sendable, Codable {
    case reproduced
    case notReproduced = "not reproduced"
    case mixed
    /// The paper states no direction: the difference is reported, not judged.
    case noClaim = "no claim"
    /// An arm it needs was not run.
    case notRun = "not run"
}

/// The paired difference of two measurements and its 95% interval, and how it was formed.
public struct StudyDifference: Sendable, Codable, Equatable {
    public var interval: MeanInterval
    /// "seeds": Student's t over the per-seed differences of means; "images (n=1 seed)": over the per-image
    /// differences of the one seed (the same prompts and noise in both).
    public var basis: String
}

/// The rule every verdict follows, declared before any number is seen and printed in the report.
public enum StudyRule {
    public static let text = """
        A comparison A − B on a metric is **reproduced** when the 95% interval of the paired difference lies wholly on \
        the paper's side of 0, **not reproduced** when it lies wholly on the other side, and **mixed** when it \
        contains 0. The interval is Student's t over seeds (each seed's difference of means: both arms saw the same \
        prompts and the same noise); with one seed (n=1, no interval over seeds) it is Student's t over the per-image \
        differences of that seed, and the report says so. A comparison where the paper states no direction gets \
        "no claim". A finding's verdict comes from its primary comparisons: reproduced when all of them are, not \
        reproduced when any of them is not, mixed otherwise. The oracle's comparisons are shown beside it and judged \
        by the same rule, but do not enter the verdict. Interpolation: on each metric the change from W = 0 to W = 1 \
        must be reproduced in its own direction (its interval excludes 0) and no step between neighbouring weights \
        may go the other way (an interval wholly on the other side); a metric with such a step is not reproduced, \
        one whose overall change contains 0 is mixed; the metrics combine like comparisons.
        """

    /// The verdict of a difference whose paper direction is `direction` (+1: A above B; −1: A below B; nil: none).
    public static func verdict(_ difference: MeanInterval, direction: Int?) -> StudyVerdict {
        guard let direction else { return .noClaim }
        guard let lower = difference.lower, let upper = difference.upper else { return .mixed }
        let (low, high) = direction > 0 ? (lower, upper) : (-upper, -lower)
        if low > 0 { return .reproduced }
        if high < 0 { return .notReproduced }
        return .mixed
    }

    /// A finding's verdict from its comparisons' (no-claim ones ignored).
    public static func combine(_ verdicts: [StudyVerdict]) -> StudyVerdict {
        if verdicts.contains(.notRun) { return .notRun }
        let judged = verdicts.filter { $0 != .noClaim }
        if judged.isEmpty { return .noClaim }
        if judged.contains(.notReproduced) { return .notReproduced }
        return judged.allSatisfy { $0 == .reproduced } ? .reproduced : .mixed
    }

    /// Paired difference of A and B on `metric`: per seed when there are two seeds or more, per image otherwise.
    public static func difference(_ a: [StudyArmResult.Variant], _ b: [StudyArmResult.Variant], metric: StudyMetric)
        -> StudyDifference
    {
        precondition(a.count == b.count && !a.isEmpty, "difference: one variant per seed on each side")
        if a.count >= 2 {
            let values = zip(a, b).map { metric.value($0.mean) - metric.value($1.mean) }
            return StudyDifference(interval: EvalStatistics.meanInterval(values), basis: "seeds")
        }
        let values = zip(a[0].scores, b[0].scores).map { metric.value($0) - metric.value($1) }
        return StudyDifference(interval: EvalStatistics.meanInterval(values.isEmpty ? [0] : values), basis: "images (n=1 seed)")
    }

    /// A metric's monotone verdict over a sweep (one list of variants per point, one variant per seed).
    public static func monotone(_ points: [[StudyArmResult.Variant]], metric: StudyMetric) -> StudyVerdict {
        guard let first = points.first, let last = points.last, points.count >= 2 else { return .mixed }
        let overall = difference(last, first, metric: metric).interval
        let direction = overall.mean >= 0 ? 1 : -1
        for (low, high) in zip(points, points.dropFirst()) {
            if verdict(difference(high, low, metric: metric).interval, direction: direction) == .notReproduced { return .notReproduced }
        }
        return verdict(overall, direction: direction)
    }
}

/// One side of a comparison: an arm's evaluation ("fine-tuned", "blend 0.5", ...; the baseline's is "baseline").
public struct StudyRef: Sendable, Equatable, Codable, CustomStringConvertible {
    public var arm: String
    public var variant: String

    public init(_ arm: String, _ variant: String = StudyEvaluation.finetuned.label) {
        self.arm = arm
        self.variant = variant
    }

    public static let baseline = StudyRef(StudyArm.baselineName, StudyArm.baselineName)

    public var description: String { variant == StudyEvaluation.finetuned.label || arm == variant ? arm : "\(arm) (\(variant))" }
}

/// A → B on a metric, with the paper's direction (nil: no claim) and what the paper reports.
public struct StudyComparison: Sendable, Codable {
    public var a: StudyRef
    public var b: StudyRef
    public var metric: StudyMetric
    public var direction: Int?
    public var paper: String

    public init(_ a: StudyRef, _ b: StudyRef, _ metric: StudyMetric, direction: Int?, paper: String) {
        self.a = a
        self.b = b
        self.metric = metric
        self.direction = direction
        self.paper = paper
    }
}

/// A claim of the paper tested on ShapesWorld.
public struct StudyFinding: Sendable {
    public enum Kind: Sendable {
        case comparisons
        /// The W sweep: the points in order (W = 0 first).
        case monotone([(weight: Double, ref: StudyRef)])
        /// The guard ranking: each guarded arm's oracle gain per unit of reward, beside the comparisons.
        case guards([String])
    }

    public var id: String
    public var title: String
    public var claim: String
    public var primary: [StudyComparison]
    /// The oracle's view (not in the verdict).
    public var oracle: [StudyComparison]
    public var kind: Kind = .comparisons
    /// The arms whose curves and image strips the report shows.
    public var shown: [StudyRef]

    /// Every arm the finding reads.
    public var arms: Set<String> {
        var names = Set((primary + oracle).flatMap { [$0.a.arm, $0.b.arm] } + shown.map(\.arm))
        switch kind {
        case .comparisons: break
        case .monotone(let points): names.formUnion(points.map(\.ref.arm))
        case .guards(let guarded): names.formUnion(guarded)
        }
        return names
    }

    /// The findings, each with the arms it compares (the paper's numbers from docs/METHOD.md).
    public static var all: [StudyFinding] {
        let main = StudyArm.mainName
        let tc = StudyRef(main)
        func both(_ a: StudyRef, _ b: StudyRef, paper: String) -> [StudyComparison] {
            [StudyComparison(a, b, .quality, direction: nil, paper: paper), StudyComparison(a, b, .alignment, direction: nil, paper: paper)]
        }
        let guarded = [main] + StudyArm.guards.map(\.name)
        return [
            StudyFinding(
                id: "prompt-vs-direct", title: "Prompt-based fine-tuning beats direct fine-tuning",
                claim: "Direct fine-tuning (paired images and captions, one-step x̂0) barely moves the rewards; prompt-based fine-tuning raises them.",
                primary: [StudyComparison(tc, StudyRef("direct"), .aesthetic, direction: 1, paper: "Aes 5.88 (TextCraftor) vs 5.29 (direct)")],
                oracle: both(tc, StudyRef("direct"), paper: "not measured"),
                shown: [.baseline, StudyRef("direct"), tc]),
            StudyFinding(
                id: "gradient-window", title: "The gradient window K",
                claim: "A short window is best: K = 5 of 25 steps; K = 10 or 15 is worse. Here the main arm's K (grad_window, 3 of 10 by default) against the whole sampler (K = 10); K = 1 and 5 are shown without a claim.",
                primary: [StudyComparison(tc, StudyRef("window-10"), .aesthetic, direction: 1, paper: "K = 5 beats K = 10 / 15 (Parti, Aes/Pick/HPSv2)")],
                oracle: both(tc, StudyRef("window-10"), paper: "not measured")
                    + [StudyComparison(StudyRef("window-1"), tc, .aesthetic, direction: nil, paper: "no claim"),
                       StudyComparison(StudyRef("window-5"), tc, .aesthetic, direction: nil, paper: "no claim")],
                shown: [StudyRef("window-1"), tc, StudyRef("window-5"), StudyRef("window-10")]),
            StudyFinding(
                id: "finetuned-steps", title: "Test-time: the fine-tuned encoder for the last steps only",
                claim: "The authors sample 25 steps with the original encoder for the first 10 and the fine-tuned one for the last 15, for the best balance of reward and alignment. Here the last finetuned_steps of sampling_steps against every step.",
                primary: [StudyComparison(StudyRef(main, "finetuned-steps"), tc, .clip, direction: 1,
                                          paper: "10 original + 15 fine-tuned steps keeps text alignment better than 25 fine-tuned")],
                oracle: both(StudyRef(main, "finetuned-steps"), tc, paper: "not measured")
                    + [StudyComparison(StudyRef(main, "finetuned-steps"), tc, .aesthetic, direction: nil, paper: "no claim")],
                shown: [.baseline, StudyRef(main, "finetuned-steps"), tc]),
            StudyFinding(
                id: "clip-constraint", title: "The CLIP constraint prevents collapse",
                claim: "Without the CLIP term the aesthetic reward climbs (to 9.35 in the paper) while the images stop matching their prompts.",
                primary: [StudyComparison(tc, StudyRef("aesthetic-only"), .alignment, direction: 1, paper: "images stop matching prompts without it"),
                          StudyComparison(StudyRef("aesthetic-only"), tc, .aesthetic, direction: 1, paper: "Aes 9.35 without the constraint")],
                oracle: [StudyComparison(tc, StudyRef("aesthetic-only"), .quality, direction: nil, paper: "not measured")],
                shown: [.baseline, tc, StudyRef("aesthetic-only")]),
            StudyFinding(
                id: "interpolation", title: "Interpolation moves every score monotonically",
                claim: "e = w·e_fine-tuned + (1 − w)·e_original moves the output smoothly from the original to the fine-tuned model (W = 0, 0.25, 0.5, 0.75, 1).",
                primary: [], oracle: [],
                kind: .monotone([(0, .baseline)] + StudyEvaluation.blendWeights.map { ($0, StudyRef(main, "blend \($0)")) } + [(1, tc)]),
                shown: [.baseline] + StudyEvaluation.blendWeights.map { StudyRef(main, "blend \($0)") } + [tc]),
            StudyFinding(
                id: "rewards", title: "Rewards alone and mixed",
                claim: "An encoder trained on one reward scores highest on that reward; style mixing of encoders trained on different rewards lands between them.",
                primary: [StudyComparison(StudyRef("aesthetic-only"), tc, .aesthetic, direction: 1, paper: "single-reward training maximises its reward"),
                          StudyComparison(StudyRef("clip-only"), tc, .clip, direction: 1, paper: "single-reward training maximises its reward"),
                          StudyComparison(StudyRef("mix"), StudyRef("clip-only"), .aesthetic, direction: 1, paper: "mixing moves towards each component"),
                          StudyComparison(StudyRef("mix"), StudyRef("aesthetic-only"), .clip, direction: 1, paper: "mixing moves towards each component")],
                oracle: both(StudyRef("mix"), tc, paper: "not measured"),
                shown: [.baseline, StudyRef("aesthetic-only"), StudyRef("clip-only"), StudyRef("mix"), tc]),
            StudyFinding(
                id: "unet", title: "TextCraftor, the UNet stage, and both",
                claim: "Training the UNet after the fine-tuned encoder adds to TextCraftor (+ UNet row).",
                primary: [StudyComparison(StudyRef("textcraftor+unet"), tc, .aesthetic, direction: 1, paper: "Aes 6.42 (+ UNet) vs 5.88")],
                oracle: both(StudyRef("textcraftor+unet"), tc, paper: "not measured")
                    + [StudyComparison(StudyRef("unet"), .baseline, .aesthetic, direction: nil, paper: "not reported")],
                shown: [.baseline, tc, StudyRef("unet"), StudyRef("textcraftor+unet")]),
            StudyFinding(
                id: "adapters", title: "Full training against LoRA and a reward token",
                claim: "This project's extension (the paper trains the full encoder): how much of full training's gain LoRA and one token keep.",
                primary: [StudyComparison(StudyRef("lora"), tc, .aesthetic, direction: nil, paper: "not in the paper"),
                          StudyComparison(StudyRef("token"), tc, .aesthetic, direction: nil, paper: "not in the paper")],
                oracle: both(StudyRef("lora"), tc, paper: "not in the paper") + both(StudyRef("token"), tc, paper: "not in the paper"),
                shown: [.baseline, tc, StudyRef("lora"), StudyRef("token")]),
            StudyFinding(
                id: "guards", title: "Guards against reward hacking, seen by the oracle",
                claim: "Without any guard and without the CLIP constraint, the oracle shows the hacking: the aesthetic reward rises while alignment falls. Each guard is ranked by the real gain it keeps per unit of reward (Δ oracle quality / Δ aesthetic reward against the baseline).",
                primary: [StudyComparison(StudyRef("aesthetic-only"), .baseline, .aesthetic, direction: 1, paper: "the reward climbs"),
                          StudyComparison(StudyRef("aesthetic-only"), .baseline, .alignment, direction: -1, paper: "images stop matching prompts")],
                oracle: [StudyComparison(StudyRef("aesthetic-only"), .baseline, .quality, direction: nil, paper: "not measured")],
                kind: .guards(guarded),
                shown: [.baseline, StudyRef("aesthetic-only")] + guarded.map { StudyRef($0) }),
        ]
    }
}
