import Foundation
import ShapesWorld
import Torch

/// The study's settings: which arms run, with how many seeds, and the shared recipe every arm starts from (the
/// demo's settings by default). Keys as the `study` flags. `StudyConfig.quick` is the `--quick` starting point: one
/// seed and short runs, sized so the whole study fits in about ten minutes on two idle cores.
public struct StudyConfig: Configuration {
    /// The ShapesWorld bundle (nil: the one shipped with the package).
    public var model: String?
    public var out = "study"
    /// Whether these are the quick settings (recorded; the values themselves come from `StudyConfig.quick`).
    public var quick = false
    /// Seeds per arm: seed, seed + 1, ... Each changes the training noise and prompt order and the evaluation noise.
    public var seeds = 3
    public var seed: UInt64 = 0
    /// The arms to run, comma-separated ("" or "all": every arm). Arms that another arm starts from are added.
    public var arms = ""
    /// Training steps of each arm (the UNet stage's too).
    public var steps = 60
    public var batchSize = 8
    public var lr = 1e-4
    /// The UNet stage's learning rate (it trains many more numbers than the encoder).
    public var unetLr = 1e-5
    public var loraLr = 1e-3
    public var tokenLr = 1e-3
    public var samplingSteps = 10
    /// K of the main arm (the demo's 3 of 10; the paper's 5 of 25 scaled is 2). The window arms set their own.
    public var gradWindow = 3
    public var guidance = 5.0
    /// Gamma of the CLIP constraint in the arms that have it.
    public var clipWeight = 0.3
    /// The authors' test-time split scaled to `sampling_steps`: the fine-tuned encoder conditions only the last N UNet
    /// calls (15 of 25 in the paper; 6 of 10 here).
    public var finetunedSteps = 6
    /// Held-out prompts every arm is measured on (the same ones for every arm and seed), and images per prompt.
    public var evalPrompts = 24
    public var imagesPerPrompt = 4
    /// The curve over training: every `probe_every` steps, the first `probe_prompts` held-out prompts, one image each.
    public var probeEvery = 10
    public var probePrompts = 8
    /// Ground-truth renders (clean scenes of the training split with their captions) for the direct arm.
    public var directImages = 256
    /// Images per strip in the report (the first image of the first N held-out prompts).
    public var stripImages = 8

    public init() {}

    /// `--quick`: one seed, short runs and a small evaluation; every other value as the full study's.
    public static var quick: StudyConfig {
        var config = StudyConfig()
        config.quick = true
        config.seeds = 1
        config.steps = 40
        config.lr = 1.5e-4  // about the demo's total movement (60 steps at 1e-4) in fewer steps
        config.unetLr = 1.5e-5
        config.evalPrompts = 16
        config.imagesPerPrompt = 2
        config.probeEvery = 10
        config.probePrompts = 4
        config.directImages = 128
        return config
    }

    public static let fields: [ConfigField<Self>] = [
        .path("model", \.model),
        .string("out", \.out),
        .flag("quick", \.quick),
        .integer("seeds", \.seeds, .between(1, 100)),
        .seed("seed", \.seed),
        .string("arms", \.arms),
        .integer("steps", \.steps, .positive),
        .integer("batch_size", \.batchSize, .between(1, 4096)),
        .number("lr", \.lr, .positive),
        .number("unet_lr", \.unetLr, .positive),
        .number("lora_lr", \.loraLr, .positive),
        .number("token_lr", \.tokenLr, .positive),
        .integer("sampling_steps", \.samplingSteps, .between(1, 1000)),
        .integer("grad_window", \.gradWindow, .positive),
        .number("guidance", \.guidance, .nonNegative),
        .number("clip_weight", \.clipWeight, .nonNegative),
        .integer("finetuned_steps", \.finetunedSteps, .nonNegative),
        .integer("eval_prompts", \.evalPrompts, .positive),
        .integer("images_per_prompt", \.imagesPerPrompt, .positive),
        .integer("probe_every", \.probeEvery, .positive),
        .integer("probe_prompts", \.probePrompts, .positive),
        .integer("direct_images", \.directImages, .positive),
        .integer("strip_images", \.stripImages, .positive),
    ]

    public func validateRelations() throws {
        guard gradWindow <= samplingSteps else {
            throw TextCraftorError.invalidSetting(key: "grad_window", message: "\(gradWindow) is more than sampling_steps (\(samplingSteps))")
        }
        guard finetunedSteps <= samplingSteps else {
            throw TextCraftorError.invalidSetting(
                key: "finetuned_steps", message: "\(finetunedSteps) is more than sampling_steps (\(samplingSteps))")
        }
        guard probePrompts <= evalPrompts else {
            throw TextCraftorError.invalidSetting(key: "probe_prompts", message: "\(probePrompts) is more than eval_prompts (\(evalPrompts))")
        }
        _ = try selectedArms()
    }

    /// The arms asked for, in the study's order, with the baseline and the arms they start from; an unknown name is
    /// an error that lists the known ones.
    public func selectedArms() throws -> [StudyArm] {
        let names = arms.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if names.isEmpty || names == ["all"] { return StudyArm.all }
        var wanted: Set<String> = [StudyArm.baselineName]  // every finding compares with it
        for name in names {
            guard let arm = StudyArm.named(name) else {
                throw TextCraftorError.invalidSetting(
                    key: "arms", message: "unknown arm \"\(excerpt(name, limit: 40))\" (known: \(StudyArm.all.map(\.name).joined(separator: ", ")))")
            }
            wanted.insert(arm.name)
            for needed in arm.needs { wanted.insert(needed) }
        }
        return StudyArm.all.filter { wanted.contains($0.name) }
    }

    /// The seeds of the study.
    public var seedList: [UInt64] { (0..<seeds).map { seed &+ UInt64($0) } }

    /// What an arm's result depends on: every setting but the output folder, the arm selection, the seed count and
    /// the quick marker. A rerun in the same folder must have the same (`Study` refuses otherwise).
    public var recipeSettings: StudyConfig {
        var config = self
        config.out = ""
        config.arms = ""
        config.seeds = 1
        config.quick = false
        config.model = model.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        return config
    }

    /// Where the settings differ from `other`'s, as "key: here vs there" (for the rerun error).
    func differences(from other: StudyConfig) -> [String] {
        let mine = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(self))) as? [String: Any] ?? [:]
        let theirs = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(other))) as? [String: Any] ?? [:]
        return Set(mine.keys).union(theirs.keys).sorted().compactMap { key in
            let a = mine[key].map { "\($0)" } ?? "none", b = theirs[key].map { "\($0)" } ?? "none"
            let snake = key.reduce(into: "") { $0 += $1.isUppercase ? "_" + $1.lowercased() : String($1) }
            return a == b ? nil : "\(snake) \(b) there, \(a) here"
        }
    }
}
