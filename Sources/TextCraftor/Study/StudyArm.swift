import Foundation

/// A value of a training key an arm sets by name (`TrainingConfig.overlaying`), so an arm can name any key of
/// `TrainingConfig`, including ones added later, in one line.
public enum StudyValue: Sendable, Equatable {
    case number(Double)
    case integer(Int)
    case flag(Bool)
    case string(String)

    var any: Any {
        switch self {
        case .number(let value): value
        case .integer(let value): value
        case .flag(let value): value
        case .string(let value): value
        }
    }
}

/// How an arm's model is measured after training: the fine-tuned encoder blended with the original at `blend` (1: the
/// fine-tuned one alone), conditioning the last `finetunedSteps` UNet calls (nil: every call).
public struct StudyEvaluation: Sendable, Equatable {
    public var label: String
    public var blend: Double
    /// nil: every call; `.configured`: the study's `finetuned_steps`.
    public var finetunedSteps: FinetunedSteps?

    public enum FinetunedSteps: Sendable, Equatable {
        case configured
        case fixed(Int)
    }

    public init(_ label: String, blend: Double = 1, finetunedSteps: FinetunedSteps? = nil) {
        self.label = label
        self.blend = blend
        self.finetunedSteps = finetunedSteps
    }

    /// The fine-tuned model as it is: the label every arm has, and the one findings compare by default.
    public static let finetuned = StudyEvaluation("fine-tuned")
    /// The W sweep's inner points (W = 0 is the baseline, W = 1 `finetuned`).
    public static let blendWeights = [0.25, 0.5, 0.75]
}

/// What an arm trains, as changes to the study's shared training recipe (the demo's: prompt mode, K from
/// `grad_window`, aesthetic reward plus the CLIP constraint at `clip_weight`, the full text encoder).
public struct StudyTraining: Sendable, Equatable {
    public var mode = TrainingMode.prompt
    /// nil: the study's `grad_window`.
    public var gradWindow: Int?
    /// The objective's terms (nil: aesthetic 1 plus clip at the study's `clip_weight`).
    public var rewards: [StudyReward]?
    public var train = TrainedNetwork.textEncoder
    /// The UNet stage: the arm whose trained text encoder conditions it (nil: the original encoder).
    public var startFrom: String?
    public var adapter = Adapter.full
    /// Any other `TrainingConfig` keys, by name (the guard options plug in here).
    public var keys: [String: StudyValue] = [:]

    public init(mode: TrainingMode = .prompt, gradWindow: Int? = nil, rewards: [StudyReward]? = nil,
                train: TrainedNetwork = .textEncoder, startFrom: String? = nil, adapter: Adapter = .full,
                keys: [String: StudyValue] = [:]) {
        self.mode = mode
        self.gradWindow = gradWindow
        self.rewards = rewards
        self.train = train
        self.startFrom = startFrom
        self.adapter = adapter
        self.keys = keys
    }
}

/// One term of an arm's objective: a ShapesWorld reward (aesthetic or clip) and its gamma; `clip_weight` takes the
/// study's CLIP constraint weight.
public struct StudyReward: Sendable, Equatable {
    public var name: String
    public var gamma: Gamma

    public enum Gamma: Sendable, Equatable {
        case fixed(Double)
        case clipWeight
    }

    public static func aesthetic(_ gamma: Double = 1) -> StudyReward { StudyReward(name: "aesthetic", gamma: .fixed(gamma)) }
    public static func clip(_ gamma: Double = 1) -> StudyReward { StudyReward(name: "clip", gamma: .fixed(gamma)) }
    public static let clipConstraint = StudyReward(name: "clip", gamma: .clipWeight)
}

/// A named recipe of the study: what it trains (or, for an evaluation-only arm, which trained encoders it mixes) and
/// how it is measured. Every arm is run with each seed on the same held-out prompts.
public struct StudyArm: Sendable, Equatable {
    public enum Recipe: Sendable, Equatable {
        /// The original model, measured only.
        case baseline
        case train(StudyTraining)
        /// Style mixing: the trained encoders of these arms (same seed), embeddings summed under the weights.
        case mix([String: Double])
    }

    public var name: String
    public var summary: String
    public var recipe: Recipe
    public var evaluations: [StudyEvaluation]

    public init(_ name: String, _ summary: String, _ recipe: Recipe, evaluations: [StudyEvaluation] = [.finetuned]) {
        self.name = name
        self.summary = summary
        self.recipe = recipe
        self.evaluations = evaluations
    }

    /// A training arm in one line: `.trained("name", "what it is", StudyTraining(...))`.
    public static func trained(_ name: String, _ summary: String, _ training: StudyTraining = StudyTraining(),
                               evaluations: [StudyEvaluation] = [.finetuned]) -> StudyArm {
        StudyArm(name, summary, .train(training), evaluations: evaluations)
    }

    /// The arms this one needs trained first, with the same seed.
    public var needs: [String] {
        switch recipe {
        case .baseline: []
        case .train(let training): training.startFrom.map { [$0] } ?? []
        case .mix(let weights): weights.keys.sorted()
        }
    }

    public var training: StudyTraining? {
        if case .train(let training) = recipe { return training }
        return nil
    }

    // MARK: - The arms

    public static let baselineName = "baseline"
    public static let mainName = "textcraftor"

    /// Every arm, in the order they run (an arm after those it needs). Adding an arm is one line here, or one line in
    /// `guards`.
    public static let core: [StudyArm] = [
        StudyArm(baselineName, "the original encoder, measured only", .baseline, evaluations: []),
        .trained(mainName, "prompt-based TextCraftor: aesthetic + CLIP constraint, K = grad_window, full encoder",
                 evaluations: [.finetuned] + StudyEvaluation.blendWeights.map { StudyEvaluation("blend \($0)", blend: $0) }
                    + [StudyEvaluation("finetuned-steps", finetunedSteps: .configured)]),
        .trained("direct", "direct fine-tuning on ground-truth renders and their captions", StudyTraining(mode: .direct)),
        .trained("window-1", "TextCraftor with K = 1", StudyTraining(gradWindow: 1)),
        .trained("window-5", "TextCraftor with K = 5", StudyTraining(gradWindow: 5)),
        .trained("window-10", "TextCraftor with K = 10 (gradient through every step)", StudyTraining(gradWindow: 10)),
        .trained("aesthetic-only", "the aesthetic reward alone: no CLIP constraint, no guard",
                 StudyTraining(rewards: [.aesthetic()])),
        .trained("clip-only", "the CLIP reward alone (gamma 1)", StudyTraining(rewards: [.clip()])),
        StudyArm("mix", "style mixing: 0.5 x the aesthetic-only encoder + 0.5 x the clip-only encoder",
                 .mix(["aesthetic-only": 0.5, "clip-only": 0.5])),
        .trained("unet", "the UNet stage alone, on the original encoder (unet_lr)", StudyTraining(train: .unet)),
        .trained("textcraftor+unet", "the UNet stage on the textcraftor arm's encoder (the paper's + UNet)",
                 StudyTraining(train: .unet, startFrom: mainName)),
        .trained("lora", "TextCraftor training LoRA adapters (rank 8, lora_lr)", StudyTraining(adapter: .lora)),
        .trained("token", "TextCraftor training one reward token (token_lr)", StudyTraining(adapter: .token)),
    ]

    /// The guard arms: TextCraftor without the CLIP constraint (the aesthetic reward alone) plus one guard each, by
    /// its training key (`Guards.swift`). The guard finding ranks every arm listed here, with `textcraftor` (the CLIP
    /// constraint) and `aesthetic-only` (no guard), by the oracle's real gain per unit of reward. The proximity weight
    /// is the one the guards' first ShapesWorld measurement used (README), fixed before this study ran; early stopping
    /// watches the oracle's alignment on a tenth of the training prompts held out of training (never the evaluation's
    /// prompts) and the arm is measured with its best weights.
    public static let guards: [StudyArm] = [
        .trained("guard-proximity", "the aesthetic reward alone + the embedding-proximity penalty (W = 100)",
                 StudyTraining(rewards: [.aesthetic()], keys: ["proximity_weight": .number(100)])),
        .trained("guard-random-window", "the aesthetic reward alone + a window drawn from 1...K each step",
                 StudyTraining(rewards: [.aesthetic()], keys: ["random_window": .flag(true)])),
        .trained("guard-early-stop", "the aesthetic reward alone + early stopping on the oracle's held-out alignment",
                 StudyTraining(rewards: [.aesthetic()], keys: ["early_stop": .string("oracle"), "early_stop_every": .integer(10),
                                                                "early_stop_patience": .integer(2)])),
    ]

    public static var all: [StudyArm] { core + guards }

    public static func named(_ name: String) -> StudyArm? { all.first { $0.name == name } }

    /// The arm's file-name stem ("textcraftor+unet" stays readable; anything odd becomes "_").
    var fileStem: String {
        String(name.map { $0.isLetter || $0.isNumber || "-+_.".contains($0) ? $0 : "_" })
    }
}
