import ArgumentParser
import Foundation
import Rewards
import ShapesWorld
import StableDiffusion
import TextCraftor
import Torch

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

            Every --reward is scored in evaluation preprocessing. Writes OUT/VARIANT/00000.png ... (kept: a rerun \
            generates only the missing images, so an interrupted eval resumes), OUT/eval.json (what the images \
            depend on; a different run in OUT is refused unless --overwrite), results.csv (one row per image and \
            reward), summary.json (mean and 95% interval over prompts, win rate against the original, per style or \
            category), table.md (the paper's Table 1 and 2 layout) and report.html (tables, bar charts, image grid).

            --demo evaluates on the ShapesWorld bundle: held-out prompts, its aesthetic and CLIP rewards, and the \
            oracle's alignment and quality; the fine-tuned encoder defaults to demo/run from `textcraftor demo`.
            """)

    @Option(help: "A diffusers model folder (with --demo: default the ShapesWorld bundle).", completion: .directory)
    var model: String?
    @OptionGroup var dtypeOptions: DTypeOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @Option(help: "Weights variant to prefer, e.g. fp16.") var weightsVariant: String?
    @Flag(help: "Evaluate on the ShapesWorld bundle with its rewards and the oracle's alignment and quality.") var demo = false

    @Flag(help: "The Parti-Prompts benchmark (1632 prompts, shipped with the tool).") var parti = false
    @Option(name: .customLong("prompts"), help: "A prompt file (.txt, .tsv, .csv, .json); several are styles.", completion: .file())
    var promptFiles: [String] = []
    @Option(help: "The column (TSV/CSV) or key (JSON objects) holding the prompt.") var column = "prompt"
    @Option(help: "Keep only this Category (Parti, or a table with that column).") var category: String?
    @Option(help: "Keep only this Challenge (Parti, or a table with that column).") var challenge: String?
    @Option(help: "Keep the first N prompts.") var limit: Int?
    @Option(help: "Keep N prompts drawn with --seed (in file order).") var sample: Int?

    @Option(help: ArgumentHelp("A fine-tuned text encoder, as NAME=DIR or DIR (named by its folder). Repeatable.", valueName: "NAME=DIR"))
    var textEncoder: [String] = []
    @Option(help: ArgumentHelp("Also each --text-encoder blended: W x fine-tuned + (1 - W) x original. Repeatable.", valueName: "W"))
    var blend: [String] = []
    @Option(help: ArgumentHelp("A style mix NAME=W,NAME=W,... (NAME: original, a --text-encoder's name, or a folder). Repeatable.",
                               valueName: "NAME=W,..."))
    var mix: [String] = []
    @Option(help: "A scheduler: the model's own, ddim, euler, dpm, pndm, or trainer (DDIM with trailing timesteps, as training samples). Repeatable: every variant per scheduler.")
    var scheduler: [String] = []
    @Option(help: ArgumentHelp("Fine-tuned embeddings for the last N UNet calls only (default: all).", valueName: "N"))
    var finetunedSteps: Int?

    @Option(help: "Denoising steps (default 25; 10 with --demo).") var steps: Int?
    @Option(help: "Classifier-free guidance (default 7.5; 5 with --demo).") var guidance: Double?
    @Option(help: "Images per prompt.") var imagesPerPrompt = 1
    @Option(help: "Seed of the noise (prompt i uses seed + i) and of --sample.") var seed: UInt64 = 0

    @Option(name: .customLong("reward"), help: ArgumentHelp("NAME=PATH as in `score` (aesthetic, pickscore, hpsv2, clip). Repeatable.",
                                                             valueName: "NAME=PATH"))
    var rewards: [String] = []
    @Option(help: "Images per reward forward pass.") var batchSize = 8

    @Option(help: "Output folder.", completion: .directory) var out: String
    @Flag(help: "Replace an earlier eval's different run in OUT.") var overwrite = false
    @Option(help: "Prompts shown in the report's image grid.") var gridPrompts = 8

    func validate() throws {
        for (flag, value) in [("--images-per-prompt", imagesPerPrompt), ("--batch-size", batchSize)] where value < 1 {
            throw CommandError("\(flag) must be at least 1 (got \(value))")
        }
        guard gridPrompts >= 0 else { throw CommandError("--grid-prompts must not be negative (got \(gridPrompts))") }
        for (flag, value) in [("--limit", limit), ("--sample", sample), ("--steps", steps), ("--finetuned-steps", finetunedSteps)] {
            if let value, value < 1 { throw CommandError("\(flag) must be at least 1 (got \(value))") }
        }
        if limit != nil, sample != nil { throw CommandError("--limit and --sample cannot be used together") }
        if parti, !promptFiles.isEmpty { throw CommandError("--parti and --prompts cannot be used together") }
        if !demo, model == nil { throw CommandError("give --model DIR (a diffusers folder), or --demo") }
        if !demo, !parti, promptFiles.isEmpty { throw CommandError("give a prompt set: --parti or --prompts FILE") }
        if !demo, rewards.isEmpty { throw CommandError("give at least one --reward NAME=PATH") }
        if let guidance, guidance < 0 { throw CommandError("--guidance must not be negative (got \(guidance))") }
        if !blend.isEmpty, textEncoder.isEmpty { throw CommandError("--blend needs --text-encoder") }
    }

    func run() throws {
        let (dtype, device) = (dtypeOptions.dtype.dtype, try speakingFlags { try deviceOptions.opened() })
        let modelURL = demo ? try shapesBundle(model) : URL(fileURLWithPath: model!)
        let prompts = try promptSet()
        let encoders = try encoderFolders()
        let sampling = EvalSampling(
            steps: steps ?? (demo ? 10 : 25), guidance: guidance ?? (demo ? 5 : 7.5), imagesPerPrompt: imagesPerPrompt,
            seed: seed)

        // Everything that can be wrong with the flags fails here, before a model loads or a file is written.
        let pipeline: StableDiffusionPipeline
        do { pipeline = try StableDiffusionPipeline.load(folder: modelURL, dtype: dtype, device: device, variant: weightsVariant) } catch {
            throw CommandError("--model \(modelURL.path): \(error)")
        }
        var loaded: [String: CLIPTextModel] = [:]
        for (name, folder) in encoders {
            do { loaded[name] = try pipeline.loadTextEncoder(folder: URL(fileURLWithPath: folder), variant: weightsVariant) } catch {
                throw CommandError("--text-encoder \(name)=\(folder): not a text encoder folder: \(error)")
            }
        }
        let variants = try makeVariants(pipeline: pipeline, encoders: encoders, loaded: loaded, sampling: sampling)
        let scorers = try makeScorers(bundle: demo ? modelURL : nil, device: device)

        let output = URL(fileURLWithPath: out)
        let manifest = EvalManifest(
            model: modelURL.path, dtype: dtypeOptions.dtype.rawValue, device: deviceOptions.device ?? "cpu", prompts: prompts.prompts, sampling: sampling,
            variants: variants.map { EvalManifest.Variant(name: $0.name, description: $0.description) })
        try EvalFolder.prepare(output, manifest: manifest, overwrite: overwrite)

        let images = try generate(variants, prompts: prompts, sampling: sampling, pipeline: pipeline, output: output)
        let scores = try score(images, prompts: prompts, sampling: sampling, scorers: scorers)
        // Win rates count against the original drawn with the same scheduler.
        let references = variants.map { v in variants.firstIndex { $0.schedulerName == v.schedulerName }! }
        let summary = EvalSummary(
            variants: variants.map { ($0.name, $0.description) }, rewards: scorers.map(\.name), prompts: prompts,
            imagesPerPrompt: sampling.imagesPerPrompt, scores: scores, references: references)
        try write(summary, scores: scores, images: images, prompts: prompts, variants: variants, scorers: scorers,
                  sampling: sampling, model: modelURL, output: output)
        print(summary.markdown(), terminator: "")
        print("wrote \(out)/report.html, summary.json, table.md, results.csv")
    }

    // MARK: - Flags to prompts, variants and scorers

    func promptSet() throws -> EvalPromptSet {
        var set: EvalPromptSet
        if demo, !parti, promptFiles.isEmpty {
            guard category == nil, challenge == nil else { throw CommandError("--category and --challenge need --parti or --prompts") }
            let texts = ShapesPrompts.make(count: limit ?? sample ?? 24, split: .heldOut, seed: seed &+ 101)
            return EvalPromptSet(prompts: texts.map { EvalPrompt(text: $0, group: "held-out") }, grouping: .none)
        }
        let files = parti ? [try Self.partiPrompts()] : promptFiles.map { URL(fileURLWithPath: $0) }
        do { set = try EvalPromptSet.files(files, column: column, category: category, challenge: challenge) } catch {
            throw CommandError("\(error)")
        }
        if let limit { set = set.limited(to: limit) }
        if let sample { set = set.sampled(sample, seed: seed) }
        return set
    }

    static func partiPrompts() throws -> URL {
        guard let url = TextCraftorResources.partiPrompts else {
            throw CommandError("PartiPrompts.tsv is not installed with this binary: give --prompts PartiPrompts.tsv")
        }
        return url
    }

    /// (name, folder) of each --text-encoder, and for --demo without one, the demo's run.
    func encoderFolders() throws -> [(name: String, folder: String)] {
        var result: [(name: String, folder: String)] = []
        for entry in textEncoder {
            var name: String, folder: String
            if let equals = entry.firstIndex(of: "="), !FileManager.default.fileExists(atPath: entry) {
                name = String(entry[..<equals])
                folder = String(entry[entry.index(after: equals)...])
            } else {
                folder = entry
                name = URL(fileURLWithPath: entry).standardizedFileURL.lastPathComponent
                if name == "text_encoder" || name == "run" {
                    name = URL(fileURLWithPath: entry).standardizedFileURL.deletingLastPathComponent().lastPathComponent
                }
            }
            try Self.checkName(name, flag: "--text-encoder \(entry)")
            guard name != "original" else { throw CommandError("--text-encoder \(entry): the name original is the model's own encoder") }
            guard !result.contains(where: { $0.name == name }) else {
                throw CommandError("--text-encoder: two encoders named \(name); name them NAME=DIR")
            }
            result.append((name, folder))
        }
        if demo, result.isEmpty {
            let run = "demo/run"
            guard FileManager.default.fileExists(atPath: run + "/text_encoder/config.json") else {
                throw CommandError("--demo compares the original with a fine-tuned encoder: run `textcraftor demo` first (it writes demo/run) or give --text-encoder")
            }
            result.append(("fine-tuned", run))
        }
        return result
    }

    /// Variant names become folder names: letters, digits and . _ - @ + only.
    static func checkName(_ name: String, flag: String) throws {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "._-@+"))
        guard !name.isEmpty, name.unicodeScalars.allSatisfy(allowed.contains), !name.hasPrefix(".") else {
            throw CommandError("\(flag): the name \"\(name)\" must be letters, digits and . _ - @ + (it names a folder)")
        }
    }

    func makeVariants(pipeline: StableDiffusionPipeline, encoders: [(name: String, folder: String)],
                      loaded: [String: CLIPTextModel], sampling: EvalSampling) throws -> [EvalVariant] {
        var base: [(name: String, description: String, mix: EncoderMix?)] = [("original", "the model's own text encoder", nil)]
        let steps = finetunedSteps.map { " (last \($0) UNet calls)" } ?? ""
        for (name, folder) in encoders {
            base.append((name, "\(folder)\(steps)", EncoderMix.finetuned(loaded[name]!, name: name, finetunedSteps: finetunedSteps)))
        }
        for text in blend {
            guard let w = EncoderRecipe.number(text), w >= 0 else { throw CommandError("--blend \(text): expected a weight of 0 or more") }
            for (name, folder) in encoders {
                base.append(("\(name)@\(text)", "\(text) x \(folder) + \(1 - w) x original\(steps)",
                             EncoderMix.blend(loaded[name]!, weight: w, name: name, finetunedSteps: finetunedSteps)))
            }
        }
        for (i, spec) in mix.enumerated() {
            var components: [EncoderMix.Component] = []
            for entry in spec.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                guard let equals = entry.lastIndex(of: "="), let w = EncoderRecipe.number(String(entry[entry.index(after: equals)...])) else {
                    throw CommandError("--mix \(spec): entry \"\(entry)\" is not NAME=W")
                }
                let name = String(entry[..<equals])
                if name == "original" { components.append(.init(encoder: nil, weight: w)); continue }
                let encoder: CLIPTextModel
                if let known = loaded[name] { encoder = known } else {
                    do { encoder = try pipeline.loadTextEncoder(folder: URL(fileURLWithPath: name), variant: weightsVariant) } catch {
                        throw CommandError("--mix \(spec): \(name) is neither a --text-encoder name nor a text encoder folder")
                    }
                }
                components.append(.init(encoder: encoder, weight: w, name: name))
            }
            guard !components.isEmpty else { throw CommandError("--mix \"\(spec)\": no entries") }
            base.append((mix.count == 1 ? "mix" : "mix\(i + 1)", "mix \(spec)\(steps)", EncoderMix(components, finetunedSteps: finetunedSteps)))
        }
        let schedulers: [String?] = scheduler.isEmpty ? [nil] : scheduler
        var variants: [EvalVariant] = []
        for name in schedulers {
            let made: any Scheduler
            do { made = try Self.makeScheduler(name, pipeline: pipeline, steps: sampling.steps) } catch {
                throw CommandError("--scheduler \(name ?? ""): \(error)")
            }
            try made.setTimesteps(sampling.steps)
            let calls = made.timesteps.count
            for b in base {
                if let mix = b.mix {
                    do { try pipeline.validate(mix, unetCalls: calls) } catch { throw CommandError("\(b.name): \(error)") }
                }
                let suffix = schedulers.count > 1 ? "+\(name!)" : ""
                let description = b.description + (name.map { ", scheduler \($0)" } ?? "")
                variants.append(EvalVariant(name: b.name + suffix, description: description, mix: b.mix, schedulerName: name))
            }
        }
        let names = variants.map(\.name)
        guard Set(names).count == names.count else { throw CommandError("two variants share a name: \(names.joined(separator: ", "))") }
        return variants
    }

    func makeScorers(bundle: URL?, device: Device) throws -> [EvalScorer] {
        var scorers: [EvalScorer] = []
        func add(_ name: String, _ reward: any Reward) {
            reward.preprocessing = .evaluation
            scorers.append(EvalScorer(name: name, device: device, reward: reward))
        }
        for spec in rewards {
            let (name, paths) = try speakingFlags { let r = try RewardOption(spec: spec); return (r.name, r.paths) }
            guard !scorers.contains(where: { $0.name == name }) else { throw CommandError("--reward names \(name) twice") }
            do { add(name, try RewardRegistry.load(name: name, paths: paths, device: device)) } catch {
                throw CommandError("--reward \(spec): \(error)")
            }
        }
        if let bundle {
            if rewards.isEmpty {
                for name in ["aesthetic", "clip"] { add(name, try ShapesWorldBundle.reward(name, in: bundle, device: device)) }
            }
            scorers.append(EvalScorer(name: "alignment", device: device, oracle: { Oracle.alignment($0, prompt: $1) }))
            scorers.append(EvalScorer(name: "quality", device: device, oracle: { pixels, _ in Oracle.quality(pixels) }))
        }
        return scorers
    }

    /// A scheduler by name: the model's own (nil), ddim, euler, dpm, pndm, or `trainer`: the sampler training uses
    /// (DDIM, trailing timesteps, no clipping), to measure an encoder where it was trained.
    static func makeScheduler(_ name: String?, pipeline: StableDiffusionPipeline, steps: Int) throws -> any Scheduler {
        if name == "trainer" {
            return try SamplingSettings(samplingSteps: steps, gradientWindow: 1, guidanceScale: 0).makeScheduler(pipeline)
        }
        return try pipeline.makeScheduler(name)
    }

    // MARK: - Generating and scoring

    static func imageName(_ index: Int) -> String { String(format: "%05d.png", index) }

    /// Generates the images missing from OUT/VARIANT/ and returns every image's file, [variant][image].
    func generate(_ variants: [EvalVariant], prompts: EvalPromptSet, sampling: EvalSampling,
                  pipeline: StableDiffusionPipeline, output: URL) throws -> [[URL]] {
        let files = FileManager.default
        let perPrompt = sampling.imagesPerPrompt
        let urls = variants.map { v in
            (0..<prompts.prompts.count * perPrompt).map { output.appendingPathComponent(v.name).appendingPathComponent(Self.imageName($0)) }
        }
        var todo: [(variant: Int, prompt: Int)] = []
        for v in variants.indices {
            try files.createDirectory(at: output.appendingPathComponent(variants[v].name), withIntermediateDirectories: true)
            for p in prompts.prompts.indices where (0..<perPrompt).contains(where: { !files.fileExists(atPath: urls[v][p * perPrompt + $0].path) }) {
                todo.append((v, p))
            }
        }
        let total = urls.reduce(0) { $0 + $1.count }, missing = todo.count * perPrompt
        FileHandle.standardError.write(Data("\(variants.count) variants x \(prompts.prompts.count) prompts x \(perPrompt) images: \(missing) to generate, \(total - missing) already in \(out)\n".utf8))
        guard !todo.isEmpty else { return urls }
        let bar = ProgressBar("generate", total: missing)
        var schedulers: [String: any Scheduler] = [:]
        for (k, (v, p)) in todo.enumerated() {
            let variant = variants[v]
            let key = variant.schedulerName ?? ""
            let scheduler = try schedulers[key] ?? Self.makeScheduler(variant.schedulerName, pipeline: pipeline, steps: sampling.steps)
            schedulers[key] = scheduler
            var request = GenerationRequest(prompts: [prompts.prompts[p].text])
            request.steps = sampling.steps
            request.guidanceScale = sampling.guidance
            request.imagesPerPrompt = perPrompt
            request.seed = sampling.seed &+ UInt64(p)
            let result = try pipeline.generate(request, mix: variant.mix, scheduler: scheduler)
            for i in 0..<perPrompt {
                // Written next to its place, then renamed: an interrupted eval leaves whole images or none.
                let url = urls[v][p * perPrompt + i]
                let partial = url.deletingLastPathComponent().appendingPathComponent(".partial-" + url.lastPathComponent)
                try PNG.write(result.images[i], to: partial)
                guard rename(partial.path, url.path) == 0 else { throw CommandError("\(url.path): cannot be written") }
            }
            bar.update((k + 1) * perPrompt, note: variant.name)
        }
        return urls
    }

    /// `[variant][scorer][image]`, from the PNGs on disk (so a resumed eval scores exactly what a straight one does).
    func score(_ images: [[URL]], prompts: EvalPromptSet, sampling: EvalSampling, scorers: [EvalScorer]) throws -> [[[Double]]] {
        let texts = prompts.prompts.flatMap { Array(repeating: $0.text, count: sampling.imagesPerPrompt) }
        let bar = ProgressBar("score", total: images.reduce(0) { $0 + $1.count })
        var done = 0
        return try images.map { files in
            var columns = scorers.map { _ in [Double]() }
            for start in stride(from: 0, to: files.count, by: batchSize) {
                let range = start..<min(start + batchSize, files.count)
                let pixels = try withNoGrad {
                    Tensor.stack(try range.map { try ImageIO.read(files[$0]) })
                }
                for (s, scorer) in scorers.enumerated() {
                    columns[s] += try scorer.score(pixels, prompts: Array(texts[range]))
                }
                done += range.count
                bar.update(done)
            }
            return columns
        }
    }

    // MARK: - Outputs

    func write(_ summary: EvalSummary, scores: [[[Double]]], images: [[URL]], prompts: EvalPromptSet, variants: [EvalVariant],
               scorers: [EvalScorer], sampling: EvalSampling, model: URL, output: URL) throws {
        try summary.json().write(to: output.appendingPathComponent("summary.json"), options: .atomic)
        try Data(summary.markdown().utf8).write(to: output.appendingPathComponent("table.md"), options: .atomic)

        var csv = "variant,group,prompt_index,image,prompt,reward,score\n"
        func quoted(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
        for (v, variant) in variants.enumerated() {
            for i in images[v].indices {
                let prompt = prompts.prompts[i / sampling.imagesPerPrompt]
                for (s, scorer) in scorers.enumerated() {
                    csv += "\(quoted(variant.name)),\(quoted(prompt.group)),\(i / sampling.imagesPerPrompt),"
                        + "\(variant.name)/\(images[v][i].lastPathComponent),\(quoted(prompt.text)),\(scorer.name),"
                        + String(format: "%.6f", scores[v][s][i]) + "\n"
                }
            }
        }
        try Data(csv.utf8).write(to: output.appendingPathComponent("results.csv"), options: .atomic)

        let shown = min(gridPrompts, prompts.prompts.count)
        let step = max(1, prompts.prompts.count / max(shown, 1))
        let gridRows = (0..<shown).map { $0 * step }.map { p in
            (prompt: prompts.prompts[p].text,
             images: images.map { (try? Data(contentsOf: $0[p * sampling.imagesPerPrompt])) ?? Data() })
        }
        let settings = [
            "model: \(model.path)",
            "prompts: \(prompts.prompts.count)" + (prompts.grouping == .none ? "" : " in \(prompts.groups.count) \(prompts.grouping == .style ? "styles" : "categories")"),
            "sampling: \(sampling.steps) steps, guidance \(sampling.guidance), \(sampling.imagesPerPrompt) image(s) per prompt, seed \(sampling.seed) (prompt i: seed + i)",
            "variants: " + variants.map { "\($0.name) (\($0.description))" }.joined(separator: "; "),
        ]
        let report = EvalReport(summary: summary, title: demo ? "TextCraftor eval: ShapesWorld" : "TextCraftor eval", settings: settings, grid: gridRows)
        try Data(report.html().utf8).write(to: output.appendingPathComponent("report.html"), options: .atomic)
    }
}

/// What the images depend on: the same in a rerun, or the images on disk are another run's.
struct EvalSampling: Codable, Equatable {
    var steps: Int
    var guidance: Double
    var imagesPerPrompt: Int
    var seed: UInt64
}

struct EvalVariant {
    let name: String
    let description: String
    let mix: EncoderMix?
    let schedulerName: String?
}

/// A score column: a reward model, or a measure computed from the pixels and the prompt (the ShapesWorld oracle).
struct EvalScorer {
    let name: String
    let device: Device
    var reward: (any Reward)? = nil
    var oracle: (([UInt8], String) -> Double)? = nil

    /// `pixels` [N, 3, H, W] in [0, 1].
    func score(_ pixels: Tensor, prompts: [String]) throws -> [Double] {
        if let reward { return try withNoGrad { try reward.score(pixels.to(device), prompts: prompts).to(.float64).toArray(Double.self) } }
        let bytes = (pixels * 255).round().clamp(min: 0, max: 255).permute([0, 2, 3, 1]).to(.uint8).contiguous().toArray(UInt8.self)
        let stride = bytes.count / prompts.count
        return prompts.indices.map { oracle!(Array(bytes[$0 * stride..<($0 + 1) * stride]), prompts[$0]) }
    }
}

/// OUT/eval.json.
struct EvalManifest: Codable, Equatable {
    struct Variant: Codable, Equatable {
        let name: String
        let description: String
    }
    var model: String
    var dtype: String
    var device: String
    var prompts: [EvalPrompt]
    var sampling: EvalSampling
    var variants: [Variant]

    /// The first thing that differs from `other`, in words.
    func difference(from other: EvalManifest) -> String? {
        if model != other.model { return "model \(other.model), not \(model)" }
        if dtype != other.dtype || device != other.device { return "dtype/device \(other.dtype)/\(other.device)" }
        if prompts != other.prompts { return "other prompts (\(other.prompts.count), not \(prompts.count))" }
        if sampling != other.sampling {
            return "other sampling (steps \(other.sampling.steps), guidance \(other.sampling.guidance), \(other.sampling.imagesPerPrompt) per prompt, seed \(other.sampling.seed))"
        }
        for variant in variants {
            if let old = other.variants.first(where: { $0.name == variant.name }), old != variant {
                return "variant \(variant.name) was \(old.description)"
            }
        }
        return nil
    }
}

enum EvalFolder {
    /// OUT is new or empty, or an earlier eval of the same images (resumed, and may gain variants); an eval of other
    /// images is replaced only with --overwrite; a folder that is not an eval's is never touched.
    static func prepare(_ url: URL, manifest: EvalManifest, overwrite: Bool) throws {
        let files = FileManager.default
        let record = url.appendingPathComponent("eval.json")
        let contents = (try? files.contentsOfDirectory(atPath: url.path)) ?? []
        if !contents.isEmpty {
            guard let data = files.contents(atPath: record.path) else {
                throw CommandError("\(url.path) is not empty and holds no eval.json: choose a new or empty --out")
            }
            guard let old = try? JSONDecoder().decode(EvalManifest.self, from: data) else {
                throw CommandError("\(record.path) cannot be read: choose a new or empty --out")
            }
            if let difference = manifest.difference(from: old) {
                guard overwrite else {
                    throw CommandError("\(url.path) holds images of a different run (\(difference)): pass --overwrite to replace them, or choose another --out")
                }
                try files.removeItem(at: url)
            }
        }
        try files.createDirectory(at: url, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(manifest).write(to: record, options: .atomic)
    }
}
