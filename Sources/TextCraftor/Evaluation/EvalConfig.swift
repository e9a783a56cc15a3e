import Foundation

/// Everything an evaluation is run with, keyed as the `eval` flags (`images_per_prompt` is `--images-per-prompt`).
/// `OUT/eval.json` records what the images depend on, so that a rerun resumes and another run is refused.
public struct EvalConfig: InferenceConfiguration {
    // The model
    /// A diffusers folder (with `demo`: default the ShapesWorld bundle).
    public var model: String?
    /// With a single-file `model`: a diffusers folder of its architecture (configs, tokenizers, scheduler).
    public var modelConfig: String?
    /// With a single-file `model`: its UNet's weights rather than its `model_ema.*` copy.
    public var noEma = false
    /// The scheduler's prediction type, where it is not the model's (`ModelSource`).
    public var predictionType: String?
    /// Weights variant to prefer, e.g. fp16.
    public var variant: String?
    public var dtype = FloatType.float32
    public var device = "cpu"
    /// ShapesWorld: held-out prompts, the bundle's rewards and the oracle's alignment and quality.
    public var demo = false

    // The prompts
    /// The Parti-Prompts benchmark shipped with the tool.
    public var parti = false
    /// Prompt files; several are styles (the HPSv2 benchmark's four JSON lists, say).
    public var prompts: [String] = []
    /// The column (TSV/CSV) or key (JSON objects) holding the prompt.
    public var column = "prompt"
    public var category: String?
    public var challenge: String?
    /// The first N prompts, or N drawn with `seed`.
    public var limit: Int?
    public var sample: Int?

    // The variants
    /// Fine-tuned encoders, NAME=DIR or DIR (named by its folder).
    public var textEncoder: [String] = []
    public var embedding: [String] = []
    /// Each text encoder also blended with the original by each weight (named NAME@W).
    public var blend: [String] = []
    /// Style mixes NAME=W,NAME=W,... (mix1, mix2, ...).
    public var mix: [String] = []
    /// Schedulers: every variant per scheduler (named VARIANT+SCHEDULER). Empty: the model's own.
    public var scheduler: [String] = []
    /// Karras sigmas for every scheduler (each must have them: euler, dpm, dpm-sde).
    public var karras = false
    /// Fine-tuned embeddings for the last N UNet calls only (nil: all).
    public var finetunedSteps: Int?
    /// LoRA files merged into the model (`FILE[:SCALE]`): every variant, the original included, runs on the result.
    public var lora: [String] = []

    // Sampling: prompt i draws with seed + i in every variant
    /// Denoising steps (nil: 25; 10 with `demo`).
    public var steps: Int?
    /// Classifier-free guidance (nil: 7.5; 5 with `demo`).
    public var guidance: Double?
    public var imagesPerPrompt = 1
    public var seed: UInt64 = 0
    /// diffusers' `clip_skip` for every variant (the prompts only, as diffusers).
    public var clipSkip: Int?
    /// SDXL: the crop's top-left in the size conditioning (nil: 0,0).
    public var crop: CropCoordinates?

    // Scoring and output
    /// Rewards, NAME=PATH as `score` takes them, scored in evaluation preprocessing.
    public var reward: [String] = []
    /// Images per reward forward pass.
    public var batchSize = 8
    public var out: String?
    /// Replace an earlier eval's different run in `out`.
    public var overwrite = false
    /// Prompts shown in the report's image grid.
    public var gridPrompts = 8

    public init() {}

    public static let fields: [ConfigField<Self>] = inferenceFields + [
        .flag("demo", \.demo),
        .flag("parti", \.parti),
        .strings("prompts", \.prompts),
        .string("column", \.column),
        .string("category", \.category),
        .string("challenge", \.challenge),
        .integer("limit", \.limit, .positive),
        .integer("sample", \.sample, .positive),
        .strings("text_encoder", \.textEncoder),
        .strings("blend", \.blend),
        .strings("mix", \.mix),
        .strings("scheduler", \.scheduler),
        .flag("karras", \.karras),
        .integer("finetuned_steps", \.finetunedSteps, .positive),
        .strings("lora", \.lora),
        .integer("steps", \.steps, .between(1, 10_000)),
        .number("guidance", \.guidance, .nonNegative),
        .integer("images_per_prompt", \.imagesPerPrompt, .between(1, 1024)),
        .seed("seed", \.seed),
        .integer("clip_skip", \.clipSkip, .between(0, 1024)),
        ConfigField("crop", \.crop, read: { try $1.crop($0, $2) }, problem: \.problem),
        .strings("reward", \.reward),
        .integer("batch_size", \.batchSize, .between(1, 4096)),
        .path("out", \.out),
        .flag("overwrite", \.overwrite),
        .integer("grid_prompts", \.gridPrompts, .nonNegative),
    ]

    public func validateRelations() throws {
        func fail(_ key: String, _ message: String) -> TextCraftorError { .invalidSetting(key: key, message: message) }
        if limit != nil, sample != nil { throw fail("limit", "cannot be used with sample") }
        if parti, !prompts.isEmpty { throw fail("parti", "cannot be used with prompts") }
        if out == nil { throw fail("out", "no output folder given") }
        if !demo, model == nil { throw fail("model", "give a diffusers folder, or demo") }
        if !demo, !parti, prompts.isEmpty { throw fail("prompts", "give a prompt set: parti or prompt files") }
        if !demo, reward.isEmpty { throw fail("reward", "give at least one NAME=PATH") }
        if !blend.isEmpty, textEncoder.isEmpty { throw fail("blend", "needs text_encoder") }
        if !parti, prompts.isEmpty, category != nil || challenge != nil {
            throw fail(category != nil ? "category" : "challenge", "needs parti or prompt files")
        }
    }

    /// What the images depend on (a rerun with other values is another run).
    var sampling: EvalSampling {
        EvalSampling(steps: steps ?? (demo ? 10 : 25), guidance: guidance ?? (demo ? 5 : 7.5), imagesPerPrompt: imagesPerPrompt,
                     seed: seed, clipSkip: clipSkip, crop: crop.map { [$0.top, $0.left] })
    }
}
