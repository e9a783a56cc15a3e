import Foundation
import Rewards
import TOMLKit

/// What is trained on: prompts only (the method that works), or paired image–caption data (the paper's baseline).
public enum TrainingMode: String, CaseIterable, Sendable, Codable {
    case prompt
    case direct
}

/// Which network is fine-tuned: the text encoder (TextCraftor), or afterwards the UNet ("TextCraftor + UNet",
/// with the fine-tuned encoder frozen). Never both at once: the paper advises against it.
public enum TrainedNetwork: String, CaseIterable, Sendable, Codable {
    case text
    case unet
}

/// AdamW's (β₁, β₂), as a value that can be compared and decoded.
public struct AdamBetas: Sendable, Equatable, Codable {
    public var beta1: Double
    public var beta2: Double

    public init(_ beta1: Double, _ beta2: Double) {
        self.beta1 = beta1
        self.beta2 = beta2
    }

    /// As `AdamW(betas:)` takes them.
    public var pair: (Double, Double) { (beta1, beta2) }
}

/// One reward of the objective: γ · scale · R. `scale` nil: the reward's own (aesthetic 3, PickScore 1, HPSv2 100,
/// CLIP 100, `WeightedReward.defaultScales`). `paths` as `RewardRegistry.load(name:paths:)` takes them.
public struct RewardOption: Sendable, Equatable, Codable {
    public var name: String
    public var paths: [String]
    public var gamma: Double
    public var scale: Double?

    public init(name: String, paths: [String], gamma: Double = 1, scale: Double? = nil) {
        self.name = name
        self.paths = paths
        self.gamma = gamma
        self.scale = scale
    }
}

/// The trainer's options as a config file or the command line gives them: nil where not given. A config file gives
/// one, the flags another, `file.overlaid(with: flags)` merges them (flags win), `resolved()` fills in the defaults.
public struct TrainingOptions: Sendable, Equatable, Codable {
    // Optimiser (AdamW)
    public var learningRate: Double?
    public var betas: AdamBetas?
    public var weightDecay: Double?
    public var eps: Double?
    public var warmupSteps: Int?
    public var gradientAccumulation: Int?
    public var maxGradNorm: Double?
    // Sampler
    public var samplingSteps: Int?
    public var gradientWindow: Int?
    public var guidanceScale: Double?
    // Run
    public var mode: TrainingMode?
    public var train: TrainedNetwork?
    public var batchSize: Int?
    public var maxSteps: Int?
    public var saveEvery: Int?
    public var seed: UInt64?
    public var shuffle: Bool?
    // Hardware: cpu, cuda or cuda:N (checked where the device is opened), and the frozen models' precision
    public var device: String?
    public var mixedPrecision: MixedPrecision?
    // Files and folders
    public var model: String?
    public var prompts: String?
    public var data: String?
    public var out: String?
    public var rewards: [RewardOption]?

    public init(
        learningRate: Double? = nil, betas: AdamBetas? = nil, weightDecay: Double? = nil, eps: Double? = nil,
        warmupSteps: Int? = nil, gradientAccumulation: Int? = nil, maxGradNorm: Double? = nil,
        samplingSteps: Int? = nil, gradientWindow: Int? = nil, guidanceScale: Double? = nil,
        mode: TrainingMode? = nil, train: TrainedNetwork? = nil, batchSize: Int? = nil, maxSteps: Int? = nil,
        saveEvery: Int? = nil, seed: UInt64? = nil, shuffle: Bool? = nil,
        device: String? = nil, mixedPrecision: MixedPrecision? = nil, model: String? = nil, prompts: String? = nil, data: String? = nil, out: String? = nil,
        rewards: [RewardOption]? = nil
    ) {
        self.learningRate = learningRate
        self.betas = betas
        self.weightDecay = weightDecay
        self.eps = eps
        self.warmupSteps = warmupSteps
        self.gradientAccumulation = gradientAccumulation
        self.maxGradNorm = maxGradNorm
        self.samplingSteps = samplingSteps
        self.gradientWindow = gradientWindow
        self.guidanceScale = guidanceScale
        self.mode = mode
        self.train = train
        self.batchSize = batchSize
        self.maxSteps = maxSteps
        self.saveEvery = saveEvery
        self.seed = seed
        self.shuffle = shuffle
        self.device = device
        self.mixedPrecision = mixedPrecision
        self.model = model
        self.prompts = prompts
        self.data = data
        self.out = out
        self.rewards = rewards
    }

    /// The method's defaults (METHOD.md, the authors' code): AdamW lr 1e-6, betas (0.9, 0.999), weight decay 1e-2,
    /// eps 1e-8, no warm-up, no clipping; 25 DDIM steps with the last 5 trained, guidance 7.5; prompt mode, text
    /// encoder, batch 1, no accumulation, a checkpoint every 500 steps, prompts in file order, seed 0.
    public static let defaults = TrainingOptions(
        learningRate: 1e-6, betas: AdamBetas(0.9, 0.999), weightDecay: 1e-2, eps: 1e-8, warmupSteps: 0,
        gradientAccumulation: 1, maxGradNorm: nil, samplingSteps: 25, gradientWindow: 5, guidanceScale: 7.5,
        mode: .prompt, train: .text, batchSize: 1, maxSteps: nil, saveEvery: 500, seed: 0, shuffle: false,
        rewards: [])

    /// These options with every value `flags` gives put over them: "flags override the file". A list of rewards
    /// replaces the file's whole list.
    public func overlaid(with flags: TrainingOptions) -> TrainingOptions {
        TrainingOptions(
            learningRate: flags.learningRate ?? learningRate, betas: flags.betas ?? betas,
            weightDecay: flags.weightDecay ?? weightDecay, eps: flags.eps ?? eps,
            warmupSteps: flags.warmupSteps ?? warmupSteps,
            gradientAccumulation: flags.gradientAccumulation ?? gradientAccumulation,
            maxGradNorm: flags.maxGradNorm ?? maxGradNorm, samplingSteps: flags.samplingSteps ?? samplingSteps,
            gradientWindow: flags.gradientWindow ?? gradientWindow, guidanceScale: flags.guidanceScale ?? guidanceScale,
            mode: flags.mode ?? mode, train: flags.train ?? train, batchSize: flags.batchSize ?? batchSize,
            maxSteps: flags.maxSteps ?? maxSteps, saveEvery: flags.saveEvery ?? saveEvery, seed: flags.seed ?? seed,
            shuffle: flags.shuffle ?? shuffle, device: flags.device ?? device,
            mixedPrecision: flags.mixedPrecision ?? mixedPrecision, model: flags.model ?? model, prompts: flags.prompts ?? prompts,
            data: flags.data ?? data, out: flags.out ?? out, rewards: flags.rewards ?? rewards)
    }

    /// Every option with a value: the defaults where none was given. Checks each value's range and that the trained
    /// window fits in the sampler; an error names the key (`lr`, as in the config file and the flags).
    /// `maxSteps`, `maxGradNorm` and the paths stay optional: there is no default for them.
    public func resolved() throws -> Resolved {
        let o = Self.defaults.overlaid(with: self)
        func check<T: BinaryInteger>(_ key: String, _ value: T, _ bound: Bound) throws {
            if let problem = bound.problem(Double(value), integer: true) { throw TextCraftorError.invalidArgument("\(key): \(problem)") }
        }
        func check(_ key: String, _ value: Double, _ bound: Bound) throws {
            if let problem = bound.problem(value, integer: false) { throw TextCraftorError.invalidArgument("\(key): \(problem)") }
        }
        let betas = o.betas!
        try check("lr", o.learningRate!, .positive)
        try check("betas", betas.beta1, .unit)
        try check("betas", betas.beta2, .unit)
        try check("weight_decay", o.weightDecay!, .nonNegative)
        try check("eps", o.eps!, .positive)
        try check("warmup_steps", o.warmupSteps!, .nonNegative)
        try check("grad_accumulation", o.gradientAccumulation!, .positive)
        if let norm = o.maxGradNorm { try check("max_grad_norm", norm, .positive) }
        try check("sampling_steps", o.samplingSteps!, .positive)
        try check("grad_window", o.gradientWindow!, .positive)
        try check("guidance", o.guidanceScale!, .any)
        try check("batch_size", o.batchSize!, .positive)
        if let steps = o.maxSteps { try check("max_steps", steps, .positive) }
        try check("save_every", o.saveEvery!, .positive)
        for (index, reward) in o.rewards!.enumerated() {
            try check("reward[\(index)].gamma", reward.gamma, .any)
            if let scale = reward.scale { try check("reward[\(index)].scale", scale, .any) }
        }
        guard o.gradientWindow! <= o.samplingSteps! else {
            throw TextCraftorError.invalidArgument(
                "grad_window (\(o.gradientWindow!)) is more than sampling_steps (\(o.samplingSteps!))")
        }
        return Resolved(
            learningRate: o.learningRate!, betas: betas, weightDecay: o.weightDecay!, eps: o.eps!,
            warmupSteps: o.warmupSteps!, gradientAccumulation: o.gradientAccumulation!, maxGradNorm: o.maxGradNorm,
            samplingSteps: o.samplingSteps!, gradientWindow: o.gradientWindow!, guidanceScale: o.guidanceScale!,
            mode: o.mode!, train: o.train!, batchSize: o.batchSize!, maxSteps: o.maxSteps, saveEvery: o.saveEvery!,
            seed: o.seed!, shuffle: o.shuffle!, model: o.model, prompts: o.prompts, data: o.data, out: o.out,
            rewards: o.rewards!)
    }

    /// The options with every default filled in (`resolved()`).
    public struct Resolved: Sendable, Equatable {
        public var learningRate: Double
        public var betas: AdamBetas
        public var weightDecay: Double
        public var eps: Double
        public var warmupSteps: Int
        public var gradientAccumulation: Int
        /// nil: no gradient clipping.
        public var maxGradNorm: Double?
        public var samplingSteps: Int
        /// K: the last K sampler steps run with the trainable encoder and with gradient.
        public var gradientWindow: Int
        public var guidanceScale: Double
        public var mode: TrainingMode
        public var train: TrainedNetwork
        public var batchSize: Int
        public var maxSteps: Int?
        public var saveEvery: Int
        public var seed: UInt64
        public var shuffle: Bool
        public var model: String?
        public var prompts: String?
        public var data: String?
        public var out: String?
        public var rewards: [RewardOption]
    }
}

/// The range a numeric option must lie in, and how messages say it.
enum Bound {
    case any, positive, nonNegative, unit

    func phrase(integer: Bool) -> String {
        switch (self, integer) {
        case (.any, true): "an integer"
        case (.any, false): "a number"
        case (.positive, true): "an integer >= 1"
        case (.positive, false): "a number > 0"
        case (.nonNegative, true): "an integer >= 0"
        case (.nonNegative, false): "a number >= 0"
        case (.unit, _): "a number in [0, 1)"
        }
    }

    /// nil when `value` is in range; else "expected ..., found ...".
    func problem(_ value: Double, integer: Bool) -> String? {
        let fits = switch self {
        case .any: value.isFinite
        case .positive: value.isFinite && value > 0
        case .nonNegative: value.isFinite && value >= 0
        case .unit: value >= 0 && value < 1
        }
        if fits { return nil }
        let found = integer ? String(Int64(value)) : String(value)
        return "expected \(phrase(integer: integer)), found \(found)"
    }
}

/// A TOML training config: the trainer's options keyed like its flags without the dashes.
///
/// ```toml
/// mode = "prompt"
/// model = "models/sd15"          # paths are relative to this file's folder
/// prompts = "prompts.txt"
/// out = "runs/aesthetic"
/// lr = 1e-6
/// batch_size = 4
/// betas = [0.9, 0.999]
///
/// [[reward]]
/// name = "aesthetic"
/// paths = ["clip-vit-large-patch14", "sac+logos+ava1-l14-linearMSE.pth"]
/// gamma = 1.0
/// scale = 3.0
/// ```
///
/// An unknown key is an error (a typo must not pass silently), and so is a value of the wrong type or range; every
/// message names the file and the key.
public enum TrainingConfigFile {
    /// Every top-level key, sorted.
    public static let keys = [
        "batch_size", "betas", "data", "device", "eps", "grad_accumulation", "grad_window", "guidance", "lr",
        "max_grad_norm", "max_steps", "mixed_precision", "mode", "model", "out", "prompts", "reward", "sampling_steps",
        "save_every", "seed", "shuffle", "train", "warmup_steps", "weight_decay",
    ]
    /// The keys of one `[[reward]]` table.
    public static let rewardKeys = ["gamma", "name", "paths", "scale"]

    /// Reads a config file. Relative paths in it are taken from the file's folder, so the file works from anywhere.
    public static func load(_ url: URL) throws -> TrainingOptions {
        let text = try readText(url, what: "a config file") { .invalidConfig(file: url.path, message: $0) }
        return try parse(text, file: url.path, folder: url.deletingLastPathComponent())
    }

    /// Parses a config's text; `file` names it in errors, relative paths are resolved against `folder`.
    public static func parse(_ text: String, file: String, folder: URL) throws -> TrainingOptions {
        let reader = Reader(file: file, folder: folder)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            // toml++ quotes the character it saw, a newline included: keep the message on one line.
            let reason = error.description.replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\n", with: "\\n")
            throw reader.fail("line \(error.source.begin.line), column \(error.source.begin.column): \(reason)")
        }
        var options = TrainingOptions()
        for key in table.keys.sorted() {
            let value = table[key]!
            switch key {
            case "lr": options.learningRate = try reader.number(value, key, .positive)
            case "betas": options.betas = try reader.betas(value, key)
            case "weight_decay": options.weightDecay = try reader.number(value, key, .nonNegative)
            case "eps": options.eps = try reader.number(value, key, .positive)
            case "warmup_steps": options.warmupSteps = try reader.integer(value, key, .nonNegative)
            case "grad_accumulation": options.gradientAccumulation = try reader.integer(value, key, .positive)
            case "max_grad_norm": options.maxGradNorm = try reader.number(value, key, .positive)
            case "sampling_steps": options.samplingSteps = try reader.integer(value, key, .positive)
            case "grad_window": options.gradientWindow = try reader.integer(value, key, .positive)
            case "guidance": options.guidanceScale = try reader.number(value, key, .any)
            case "mode": options.mode = try reader.choice(value, key)
            case "train": options.train = try reader.choice(value, key)
            case "batch_size": options.batchSize = try reader.integer(value, key, .positive)
            case "max_steps": options.maxSteps = try reader.integer(value, key, .positive)
            case "save_every": options.saveEvery = try reader.integer(value, key, .positive)
            case "seed": options.seed = UInt64(try reader.integer(value, key, .nonNegative))
            case "shuffle": options.shuffle = try reader.bool(value, key)
            case "device": options.device = try reader.string(value, key)
            case "mixed_precision": options.mixedPrecision = try reader.choice(value, key)
            case "model": options.model = try reader.path(value, key)
            case "prompts": options.prompts = try reader.path(value, key)
            case "data": options.data = try reader.path(value, key)
            case "out": options.out = try reader.path(value, key)
            case "reward": options.rewards = try reader.rewards(value)
            default: throw reader.unknown(key, known: keys)
            }
        }
        return options
    }

    /// Reads typed values out of TOML, with errors that name the file, the key and the expected type.
    struct Reader {
        let file: String
        let folder: URL

        func fail(_ message: String) -> TextCraftorError { .invalidConfig(file: file, message: message) }

        func expected(_ key: String, _ what: String, found: String) -> TextCraftorError {
            fail("key \"\(key)\": expected \(what), found \(found)")
        }

        func unknown(_ key: String, known: [String]) -> TextCraftorError {
            let name = key.split(separator: ".").last.map(String.init) ?? key
            let aliases = ["learning_rate": "lr", "rewards": "reward", "steps": "sampling_steps", "path": "paths"]
            let near = aliases[name] ?? known.map { ($0, editDistance(name, $0)) }.filter { $0.1 <= 2 }
                .min { $0.1 < $1.1 }?.0
            return fail("unknown key \"\(key)\"" + (near.map { " (did you mean \"\($0)\"?)" } ?? ""))
        }

        func number(_ value: TOMLValueConvertible, _ key: String, _ bound: Bound) throws -> Double {
            let number: Double
            switch value.type {
            case .double: number = value.double!
            case .int: number = Double(value.int!)
            default: throw expected(key, bound.phrase(integer: false), found: Self.kind(value))
            }
            if let problem = bound.problem(number, integer: false) { throw fail("key \"\(key)\": \(problem)") }
            return number
        }

        func integer(_ value: TOMLValueConvertible, _ key: String, _ bound: Bound) throws -> Int {
            guard let integer = value.int else { throw expected(key, bound.phrase(integer: true), found: Self.kind(value)) }
            if let problem = bound.problem(Double(integer), integer: true) { throw fail("key \"\(key)\": \(problem)") }
            return integer
        }

        func bool(_ value: TOMLValueConvertible, _ key: String) throws -> Bool {
            guard let bool = value.bool else { throw expected(key, "true or false", found: Self.kind(value)) }
            return bool
        }

        func string(_ value: TOMLValueConvertible, _ key: String) throws -> String {
            guard let string = value.string else { throw expected(key, "a string", found: Self.kind(value)) }
            return string
        }

        func choice<T: RawRepresentable & CaseIterable>(_ value: TOMLValueConvertible, _ key: String) throws -> T
        where T.RawValue == String {
            let choices = alternatives(T.allCases.map(\.rawValue))
            guard let string = value.string else { throw expected(key, choices, found: Self.kind(value)) }
            guard let choice = T(rawValue: string) else { throw expected(key, choices, found: "\"\(string)\"") }
            return choice
        }

        /// A path: `~` expanded, relative ones taken from the config file's folder.
        func path(_ value: TOMLValueConvertible, _ key: String) throws -> String {
            let path = NSString(string: try string(value, key)).expandingTildeInPath
            return path.hasPrefix("/") ? path : folder.appendingPathComponent(path).standardizedFileURL.path
        }

        func betas(_ value: TOMLValueConvertible, _ key: String) throws -> AdamBetas {
            let what = "a list of 2 numbers in [0, 1)"
            guard let array = value.array else { throw expected(key, what, found: Self.kind(value)) }
            guard array.count == 2 else { throw expected(key, what, found: "a list of \(array.count)") }
            let pair = try array.map { try number($0, key, .unit) }
            return AdamBetas(pair[0], pair[1])
        }

        /// `[[reward]]` tables (or one `[reward]` table): name, paths, gamma (default 1), scale (default: the reward's).
        func rewards(_ value: TOMLValueConvertible) throws -> [RewardOption] {
            let tables: [TOMLValueConvertible]
            switch value.type {
            case .table: tables = [value]
            case .array: tables = Array(value.array!)
            default: throw expected("reward", "a list of tables ([[reward]])", found: Self.kind(value))
            }
            return try tables.enumerated().map { index, item in
                let prefix = "reward[\(index)]"
                guard let table = item.table else { throw expected(prefix, "a table", found: Self.kind(item)) }
                var reward = RewardOption(name: "", paths: [])
                var named = false, hasPaths = false
                for key in table.keys.sorted() {
                    let value = table[key]!, path = "\(prefix).\(key)"
                    switch key {
                    case "name":
                        reward.name = try string(value, path)
                        guard RewardRegistry.names.contains(reward.name) else {
                            throw expected(path, alternatives(RewardRegistry.names), found: "\"\(reward.name)\"")
                        }
                        named = true
                    case "paths":
                        let what = "a string or a list of strings"
                        if value.type == .string {
                            reward.paths = [try self.path(value, path)]
                        } else if let array = value.array {
                            reward.paths = try array.map { try self.path($0, path) }
                        } else {
                            throw expected(path, what, found: Self.kind(value))
                        }
                        hasPaths = true
                    case "gamma": reward.gamma = try number(value, path, .any)
                    case "scale": reward.scale = try number(value, path, .any)
                    default: throw unknown(path, known: rewardKeys)
                    }
                }
                guard named else { throw fail("\(prefix): no \"name\" key") }
                guard hasPaths else { throw fail("\(prefix): no \"paths\" key") }
                return reward
            }
        }

        /// "a string", "an integer", ...: for "found ..." in messages.
        static func kind(_ value: TOMLValueConvertible) -> String {
            switch value.type {
            case .string: "a string"
            case .int: "an integer"
            case .double: "a float"
            case .bool: "a boolean"
            case .array: "a list"
            case .table: "a table"
            case .date: "a date"
            case .time: "a time"
            case .dateTime: "a date-time"
            }
        }
    }
}

/// `"a", "b" or "c"`.
func alternatives(_ names: [String]) -> String {
    let quoted = names.map { "\"\($0)\"" }
    return quoted.count < 2 ? quoted.joined() : quoted.dropLast().joined(separator: ", ") + " or " + quoted.last!
}

/// Levenshtein distance, for "did you mean" on unknown keys.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    guard !a.isEmpty else { return b.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in stride(from: 1, through: b.count, by: 1) {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}
