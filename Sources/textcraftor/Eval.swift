import ArgumentParser
import Foundation
import TextCraftor

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark text encoders as the paper does: generate for a prompt set with each variant, score, compare.",
        discussion: """
            Every variant draws the same prompts with the same seeds (prompt i: --seed + i), so images differ only \
            by the variant: the original model, each --text-encoder NAME=DIR, each --blend W of each of them \
            (named NAME@W), each --mix (mix1, mix2, ...), and with several --scheduler each of those per scheduler \
            (named VARIANT+SCHEDULER).

            Prompt sets: --parti (the 1632 Parti-Prompts shipped with the tool; --category, --challenge), --prompts \
            FILE (any file the trainer reads; several files are styles, e.g. the HPSv2 benchmark's anime.json \
            concept-art.json paintings.json photo.json, reported per style and averaged), then --limit N or a \
            seeded --sample N.

            Every --reward scores the written PNGs as its published tool does (Pillow's bicubic resize of the \
            8-bit image, reproduced bit for bit, and the tool's crop; see `textcraftor score --help`). Writes OUT/VARIANT/00000.png ... (kept: a rerun \
            generates only the missing images, so an interrupted eval resumes), OUT/eval.json (what the images \
            depend on; a different run in OUT is refused unless --overwrite), results.csv (one row per image and \
            reward), summary.json (mean and 95% interval over prompts, win rate against the original, per style or \
            category), table.md (the paper's Table 1 and 2 layout) and report.html (tables, bar charts, image grid).

            --demo evaluates on the ShapesWorld bundle: held-out prompts, its aesthetic and CLIP rewards, and the \
            oracle's alignment and quality; the fine-tuned encoder defaults to demo/run from `textcraftor demo`.
            """)

    @OptionGroup var options: InferenceOptions
    @OptionGroup(title: "Evaluation") var flags: EvalFlags

    func run() throws {
        let evaluator = try speakingFlags {
            try Evaluator(config: options.configuration(flags))
        }
        sayModelNotes(evaluator.modelNotes)
        var generating: ProgressBar?
        var scoring: ProgressBar?
        let out = evaluator.config.out!
        let summary = try speakingFlags {
            try evaluator.run { event in
                switch event {
                case .planned(let variants, let prompts, let perPrompt, let missing, let present):
                    FileHandle.standardError.write(Data("\(variants) variants x \(prompts) prompts x \(perPrompt) images: \(missing) to generate, \(present) already in \(out)\n".utf8))
                    if missing > 0 { generating = ProgressBar("generate", total: missing) }
                case .generated(let done, _, let variant):
                    generating?.update(done, note: variant)
                case .scored(let done, let total):
                    scoring = scoring ?? ProgressBar("score", total: total)
                    scoring?.update(done)
                }
            }
        }
        print(summary.markdown(), terminator: "")
        print("wrote \(out)/report.html, summary.json, table.md, results.csv")
    }
}

/// The flags of `eval`, each named after its `EvalConfig` key; nil or empty: not given.
struct EvalFlags: ParsableArguments {
    @Option(help: "Weights dtype: float32 (default), float16 or bfloat16.") var dtype: FloatType?
    @Flag(help: "Evaluate on the ShapesWorld bundle with its rewards and the oracle's alignment and quality.") var demo = false

    @Flag(help: "The Parti-Prompts benchmark (1632 prompts, shipped with the tool).") var parti = false
    @Option(help: "A prompt file (.txt, .tsv, .csv, .json); several are styles.", completion: .file()) var prompts: [String] = []
    @Option(help: "The column (TSV/CSV) or key (JSON objects) holding the prompt (default prompt).") var column: String?
    @Option(help: "Keep only this Category (Parti, or a table with that column).") var category: String?
    @Option(help: "Keep only this Challenge (Parti, or a table with that column).") var challenge: String?
    @Option(help: "Keep the first N prompts.") var limit: Int?
    @Option(help: "Keep N prompts drawn with --seed (in file order).") var sample: Int?

    @Option(help: ArgumentHelp("A fine-tuned text encoder, as NAME=DIR or DIR (named by its folder); DIR may also be a bare state dict file (.pth/.pt/.bin/.safetensors). Repeatable.", valueName: "NAME=DIR"))
    var textEncoder: [String] = []
    @Option(help: ArgumentHelp("Also each --text-encoder blended: W x fine-tuned + (1 - W) x original. Repeatable.", valueName: "W"))
    var blend: [String] = []
    @Option(help: ArgumentHelp("A style mix NAME=W,NAME=W,... (NAME: original, a --text-encoder's name, or a folder). Repeatable.",
                               valueName: "NAME=W,..."))
    var mix: [String] = []
    @Option(help: ArgumentHelp(
        "A scheduler: the model's own, ddim, euler, euler-ancestral, dpm, dpm-sde, pndm, or trainer (DDIM with trailing timesteps, as training samples). Repeatable: every variant per scheduler.",
        discussion: schedulerNames))
    var scheduler: [String] = []
    @Flag(help: ArgumentHelp(
        "Karras sigmas (use_karras_sigmas) for every --scheduler (each must have them: euler, dpm, dpm-sde).",
        discussion: karrasDiscussion))
    var karras = false
    @Option(help: ArgumentHelp("Fine-tuned embeddings for the last N UNet calls only (default: all).", valueName: "N"))
    var finetunedSteps: Int?

    @Option(help: ArgumentHelp(
        "A LoRA merged into the model, times SCALE (default 1): the original variant and every variant's UNet run on it. Repeatable.",
        discussion: "A --text-encoder variant brings its own encoder. To compare a LoRA with the model, bake it with `textcraftor merge --lora FILE --out DIR` and give --text-encoder lora=DIR.",
        valueName: "FILE[:SCALE]"))
    var lora: [String] = []

    @Option(help: "Denoising steps (default 25; 10 with --demo).") var steps: Int?
    @Option(help: "Classifier-free guidance (default 7.5; 5 with --demo).") var guidance: Double?
    @Option(help: "Images per prompt (default 1).") var imagesPerPrompt: Int?
    @Option(help: "Seed of the noise (prompt i uses seed + i) and of --sample (default 0).") var seed: UInt64?
    @Option(help: ArgumentHelp("diffusers' clip_skip for every variant (default 0).", valueName: "N")) var clipSkip: Int?
    @Option(help: ArgumentHelp("SDXL: the crop's top-left in the size conditioning (default 0,0).", valueName: "TOP,LEFT"),
            transform: CropCoordinates.parse)
    var crop: CropCoordinates?

    @Option(help: ArgumentHelp("NAME=PATH as in `score` (aesthetic, pickscore, hpsv2, hpsv2.1, clip, aesthetic25, imagereward). Repeatable.", valueName: "NAME=PATH"))
    var reward: [String] = []
    @Option(help: "Images per reward forward pass (default 8).") var batchSize: Int?

    @Option(help: "Output folder.", completion: .directory) var out: String?
    @Flag(help: "Replace an earlier eval's different run in OUT.") var overwrite = false
    @Option(help: "Prompts shown in the report's image grid (default 8).") var gridPrompts: Int?
}
