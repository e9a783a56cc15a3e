import Foundation
import Rewards
import ShapesWorld
import StableDiffusion
import Torch

/// What an evaluation is doing, for a command to show.
public enum EvalProgress {
    /// Before generating: how many images exist already, how many are missing.
    case planned(variants: Int, prompts: Int, imagesPerPrompt: Int, missing: Int, present: Int)
    case generated(done: Int, total: Int, variant: String)
    case scored(done: Int, total: Int)
}

/// The paper's benchmark as a library: every variant (the original, fine-tuned encoders, blends, mixes, per
/// scheduler) draws every prompt with the same seed, each image is scored by every reward (and on ShapesWorld by the
/// oracle), and OUT gets the images, eval.json, results.csv, summary.json, table.md and report.html. Images already
/// in OUT are kept, so an interrupted evaluation resumes.
///
/// Everything the configuration can get wrong fails in `init`, before a file is written.
public final class Evaluator {
    public let config: EvalConfig
    public let model: URL
    /// How a single-file model was read (`ModelSource.notes`), for the output.
    public let modelNotes: [String]
    /// The model as the user named it: the folder, or the single file.
    let modelPath: String
    public let prompts: EvalPromptSet
    let sampling: EvalSampling
    let pipeline: StableDiffusionPipeline
    let variants: [EvalVariant]
    let scorers: [EvalScorer]
    let output: URL

    public init(config: EvalConfig) throws {
        try config.validate()
        self.config = config
        let device = try Device.opened(config.device, key: "device")
        let source = config.demo ? ModelSource(folder: try ShapesWorldBundle.located(config.model)) : try config.modelSource()
        model = source.folder
        modelNotes = source.notes
        modelPath = source.path
        prompts = try Self.promptSet(config)
        sampling = config.sampling
        output = URL(fileURLWithPath: config.out!)
        do {
            pipeline = try source.load(dtype: config.dtype.dtype, device: device, variant: config.variant)
        } catch {
            throw TextCraftorError.invalidSetting(key: "model", message: "\(model.path): \(error)")
        }
        try pipeline.applyLoRAs(config.lora)
        try pipeline.loadEmbeddings(config.embedding)
        // What the sampling settings ask of the model (clip_skip within its layers, crop for SDXL only), before
        // anything is written.
        try pipeline.validate(sampling.request("", index: 0))
        let encoders = try Self.encoderFolders(config)
        var loaded: [String: LoadedEncoders] = [:]
        for (name, folder) in encoders {
            do { loaded[name] = try Self.loadEncoders(folder, pipeline: pipeline, variant: config.variant) } catch {
                throw TextCraftorError.invalidSetting(key: "text_encoder", message: "\(name)=\(folder): not a text encoder folder: \(error)")
            }
        }
        variants = try Self.variants(config, pipeline: pipeline, encoders: encoders, loaded: loaded, steps: sampling.steps)
        scorers = try Self.scorers(config, bundle: config.demo ? model : nil, device: device)
    }

    /// Prepares OUT, generates the missing images, scores them all and writes the results; returns the summary.
    public func run(progress: (EvalProgress) -> Void = { _ in }) throws -> EvalSummary {
        let manifest = EvalManifest(
            model: modelPath + (config.lora.isEmpty ? "" : " + LoRA " + config.lora.joined(separator: " + ")), dtype: config.dtype.rawValue, device: config.device, prompts: prompts.prompts, sampling: sampling,
            variants: variants.map { EvalManifest.Variant(name: $0.name, description: $0.description) })
        try EvalFolder.prepare(output, manifest: manifest, overwrite: config.overwrite)
        let images = try generate(progress: progress)
        let scores = try score(images, progress: progress)
        // Win rates count against the original drawn with the same scheduler.
        let references = variants.map { v in variants.firstIndex { $0.schedulerName == v.schedulerName }! }
        let summary = EvalSummary(
            variants: variants.map { ($0.name, $0.description) }, rewards: scorers.map(\.name), prompts: prompts,
            imagesPerPrompt: sampling.imagesPerPrompt, scores: scores, references: references)
        try write(summary, scores: scores, images: images)
        return summary
    }

    // MARK: - The configuration to prompts, variants and scorers

    static func promptSet(_ config: EvalConfig) throws -> EvalPromptSet {
        if config.demo, !config.parti, config.prompts.isEmpty {
            let texts = ShapesPrompts.make(count: config.limit ?? config.sample ?? 24, split: .heldOut, seed: config.seed &+ 101)
            return EvalPromptSet(prompts: texts.map { EvalPrompt(text: $0, group: "held-out") }, grouping: .none)
        }
        let files = config.parti ? [try partiPrompts()] : config.prompts.map { URL(fileURLWithPath: $0) }
        var set = try EvalPromptSet.files(files, column: config.column, category: config.category, challenge: config.challenge)
        if let limit = config.limit { set = set.limited(to: limit) }
        if let sample = config.sample { set = set.sampled(sample, seed: config.seed) }
        return set
    }

    static func partiPrompts() throws -> URL {
        guard let url = TextCraftorResources.partiPrompts else {
            throw TextCraftorError.invalidSetting(key: "parti", message: "PartiPrompts.tsv is not installed with this binary: give it as a prompt file")
        }
        return url
    }

    /// (name, folder) of each text encoder, and with `demo` and none given, the demo's run.
    static func encoderFolders(_ config: EvalConfig) throws -> [(name: String, folder: String)] {
        var result: [(name: String, folder: String)] = []
        for entry in config.textEncoder {
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
            try checkName(name, key: "text_encoder", entry: entry)
            guard name != "original" else {
                throw TextCraftorError.invalidSetting(key: "text_encoder", message: "\(entry): the name original is the model's own encoder")
            }
            guard !result.contains(where: { $0.name == name }) else {
                throw TextCraftorError.invalidSetting(key: "text_encoder", message: "two encoders named \(name); name them NAME=DIR")
            }
            result.append((name, folder))
        }
        if config.demo, result.isEmpty {
            let run = "demo/run"
            guard FileManager.default.fileExists(atPath: run + "/text_encoder/config.json") else {
                throw TextCraftorError.invalidSetting(
                    key: "text_encoder",
                    message: "the demo compares the original with a fine-tuned encoder: run `textcraftor demo` first (it writes demo/run) or give one")
            }
            result.append(("fine-tuned", run))
        }
        return result
    }

    /// Variant names become folder names: letters, digits and . _ - @ + only.
    static func checkName(_ name: String, key: String, entry: String) throws {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "._-@+"))
        guard !name.isEmpty, name.unicodeScalars.allSatisfy(allowed.contains), !name.hasPrefix(".") else {
            throw TextCraftorError.invalidSetting(
                key: key, message: "\(entry.prefix(80)): the name \"\(name.prefix(40))\" must be letters, digits and . _ - @ + (it names a folder)")
        }
    }

    /// A fine-tuned folder's encoders, per place (nil: the model's own there; SD 1.x/2.x fill the first only).
    typealias LoadedEncoders = (first: CLIPTextModel?, second: CLIPTextModelWithProjection?)

    /// SD 1.x/2.x: `loadTextEncoder`; SDXL: the run or encoder folder resolved per place (`EncoderFolders`).
    static func loadEncoders(_ folder: String, pipeline: StableDiffusionPipeline, variant: String?) throws -> LoadedEncoders {
        guard pipeline.architecture == .sdxl else {
            return (try pipeline.loadTextEncoder(folder: URL(fileURLWithPath: folder), variant: variant), nil)
        }
        return try EncoderFolders.resolve(folder, key: "text_encoder", architecture: .sdxl).encoders(for: pipeline, variant: variant)
    }

    static func variants(_ config: EvalConfig, pipeline: StableDiffusionPipeline, encoders: [(name: String, folder: String)],
                         loaded: [String: LoadedEncoders], steps: Int) throws -> [EvalVariant] {
        let finetunedSteps = config.finetunedSteps
        var base: [(name: String, description: String, mix: EncoderMix?)] = [("original", "the model's own text encoder", nil)]
        let stepsNote = finetunedSteps.map { " (last \($0) UNet calls)" } ?? ""
        for (name, folder) in encoders {
            base.append((name, "\(folder)\(stepsNote)", EncoderMix.finetuned(loaded[name]!.first, loaded[name]!.second, name: name, finetunedSteps: finetunedSteps)))
        }
        for text in config.blend {
            guard let w = finiteNumber(text), w >= 0 else {
                throw TextCraftorError.invalidSetting(key: "blend", message: "\(text.prefix(40)): expected a weight of 0 or more")
            }
            for (name, folder) in encoders {
                base.append(("\(name)@\(text)", "\(text) x \(folder) + \(1 - w) x original\(stepsNote)",
                             EncoderMix.blend(loaded[name]!.first, loaded[name]!.second, weight: w, name: name, finetunedSteps: finetunedSteps)))
            }
        }
        for (i, spec) in config.mix.enumerated() {
            var components: [EncoderMix.Component] = []
            for entry in spec.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                guard let equals = entry.lastIndex(of: "="), let w = finiteNumber(String(entry[entry.index(after: equals)...])) else {
                    throw TextCraftorError.invalidSetting(key: "mix", message: "\(spec.prefix(80)): entry \"\(entry.prefix(40))\" is not NAME=W")
                }
                let name = String(entry[..<equals])
                if name == "original" { components.append(.init(encoder: nil, weight: w)); continue }
                let encoder: LoadedEncoders
                if let known = loaded[name] { encoder = known } else {
                    do { encoder = try Self.loadEncoders(name, pipeline: pipeline, variant: config.variant) } catch {
                        throw TextCraftorError.invalidSetting(
                            key: "mix", message: "\(spec.prefix(80)): \(name.prefix(80)) is neither a text encoder's name nor a text encoder folder")
                    }
                }
                components.append(.init(encoder: encoder.first, encoder2: encoder.second, weight: w, name: name))
            }
            guard !components.isEmpty else { throw TextCraftorError.invalidSetting(key: "mix", message: "\"\(spec.prefix(80))\": no entries") }
            base.append((config.mix.count == 1 ? "mix" : "mix\(i + 1)", "mix \(spec)\(stepsNote)",
                         EncoderMix(components, finetunedSteps: finetunedSteps)))
        }
        let schedulers: [String?] = config.scheduler.isEmpty ? [nil] : config.scheduler
        var variants: [EvalVariant] = []
        for name in schedulers {
            let made: any Scheduler
            do { made = try makeScheduler(name, karras: config.karras, pipeline: pipeline, steps: steps) } catch {
                // An argument error names its flag (--scheduler, --karras); a config error its file, here wrapped.
                if case StableDiffusionError.invalidArgument = error { throw error }
                throw TextCraftorError.invalidSetting(key: "scheduler", message: "\(name ?? ""): \(error)")
            }
            try made.prepareSampling(steps: steps)
            let calls = made.timesteps.count
            for b in base {
                if let mix = b.mix {
                    do { try pipeline.validate(mix, unetCalls: calls) } catch { throw TextCraftorError.invalidArgument("\(b.name): \(error)") }
                }
                let suffix = schedulers.count > 1 ? "+\(name!)" : ""
                let description = b.description + (name.map { ", scheduler \($0)" } ?? "") + (config.karras ? ", Karras sigmas" : "")
                variants.append(EvalVariant(name: b.name + suffix, description: description, mix: b.mix, schedulerName: name))
            }
        }
        let names = variants.map(\.name)
        guard Set(names).count == names.count else {
            throw TextCraftorError.invalidArgument("two variants share a name: \(names.joined(separator: ", "))")
        }
        return variants
    }

    static func scorers(_ config: EvalConfig, bundle: URL?, device: Device) throws -> [EvalScorer] {
        var scorers: [EvalScorer] = []
        func add(_ name: String, _ reward: any Reward) {
            reward.preprocessing = .evaluation
            scorers.append(EvalScorer(name: name, device: device, reward: reward))
        }
        for spec in config.reward {
            let option = try RewardOption(spec: spec)
            guard !scorers.contains(where: { $0.name == option.name }) else {
                throw TextCraftorError.invalidSetting(key: "reward", message: "names \(option.name) twice")
            }
            do { add(option.name, try RewardRegistry.load(name: option.name, paths: option.paths, device: device)) } catch {
                throw TextCraftorError.invalidSetting(key: "reward", message: "\(spec.prefix(200)): \(error)")
            }
        }
        if let bundle {
            if config.reward.isEmpty {
                for name in ["aesthetic", "clip"] { add(name, try ShapesWorldBundle.reward(name, in: bundle, device: device)) }
            }
            scorers.append(EvalScorer(name: "alignment", device: device, oracle: { Oracle.alignment($0, prompt: $1) }))
            scorers.append(EvalScorer(name: "quality", device: device, oracle: { pixels, _ in Oracle.quality(pixels) }))
        }
        return scorers
    }

    /// A scheduler by name: the model's own (nil), a `SchedulerName`, or `trainer`: the sampler training uses (DDIM,
    /// trailing timesteps, no clipping), to measure an encoder where it was trained. `karras`: with Karras sigmas,
    /// which `trainer` has not.
    static func makeScheduler(_ name: String?, karras: Bool, pipeline: StableDiffusionPipeline, steps: Int) throws -> any Scheduler {
        if name == "trainer" {
            if karras { throw SchedulerName.noKarrasSigmas("trainer (DDIM)") }
            return try SamplingSettings(samplingSteps: steps, gradientWindow: 1, guidanceScale: 0).makeScheduler(pipeline)
        }
        return try pipeline.makeScheduler(name, karras: karras)
    }

    // MARK: - Generating and scoring

    static func imageName(_ index: Int) -> String { String(format: "%05d.png", index) }

    /// Generates the images missing from OUT/VARIANT/ and returns every image's file, [variant][image].
    func generate(progress: (EvalProgress) -> Void) throws -> [[URL]] {
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
        progress(.planned(variants: variants.count, prompts: prompts.prompts.count, imagesPerPrompt: perPrompt, missing: missing,
                          present: total - missing))
        var schedulers: [String: any Scheduler] = [:]
        for (k, (v, p)) in todo.enumerated() {
            let variant = variants[v]
            let key = variant.schedulerName ?? ""
            let scheduler = try schedulers[key] ?? Self.makeScheduler(variant.schedulerName, karras: config.karras, pipeline: pipeline, steps: sampling.steps)
            schedulers[key] = scheduler
            let request = sampling.request(prompts.prompts[p].text, index: p)
            let result = try pipeline.generate(request, mix: variant.mix, scheduler: scheduler)
            for i in 0..<perPrompt {
                // Written next to its place, then renamed: an interrupted eval leaves whole images or none.
                let url = urls[v][p * perPrompt + i]
                let partial = url.deletingLastPathComponent().appendingPathComponent(".partial-" + url.lastPathComponent)
                try PNG.write(result.images[i], to: partial)
                guard rename(partial.path, url.path) == 0 else { throw TextCraftorError.invalidArgument("\(url.path): cannot be written") }
            }
            progress(.generated(done: (k + 1) * perPrompt, total: missing, variant: variant.name))
        }
        return urls
    }

    /// `[variant][scorer][image]`, from the PNGs on disk (so a resumed eval scores exactly what a straight one does).
    func score(_ images: [[URL]], progress: (EvalProgress) -> Void) throws -> [[[Double]]] {
        let texts = prompts.prompts.flatMap { Array(repeating: $0.text, count: sampling.imagesPerPrompt) }
        let total = images.reduce(0) { $0 + $1.count }
        var done = 0
        return try images.map { files in
            var columns = scorers.map { _ in [Double]() }
            for start in stride(from: 0, to: files.count, by: config.batchSize) {
                let range = start..<min(start + config.batchSize, files.count)
                let pixels = try range.map { try ImageIO.readRGB8(files[$0]) }
                for (s, scorer) in scorers.enumerated() {
                    columns[s] += try scorer.score(pixels, prompts: Array(texts[range]))
                }
                done += range.count
                progress(.scored(done: done, total: total))
            }
            return columns
        }
    }

    // MARK: - Outputs

    func write(_ summary: EvalSummary, scores: [[[Double]]], images: [[URL]]) throws {
        try summary.json().write(to: output.appendingPathComponent("summary.json"), options: .atomic)
        try Data(summary.markdown().utf8).write(to: output.appendingPathComponent("table.md"), options: .atomic)
        try Data(resultsCSV(scores: scores, images: images).utf8).write(to: output.appendingPathComponent("results.csv"), options: .atomic)

        let shown = min(config.gridPrompts, prompts.prompts.count)
        let step = max(1, prompts.prompts.count / max(shown, 1))
        let gridRows = (0..<shown).map { $0 * step }.map { p in
            (prompt: prompts.prompts[p].text,
             images: images.map { (try? Data(contentsOf: $0[p * sampling.imagesPerPrompt])) ?? Data() })
        }
        let settings = [
            "model: \(modelPath)",
            "prompts: \(prompts.prompts.count)" + (prompts.grouping == .none ? "" : " in \(prompts.groups.count) \(prompts.grouping == .style ? "styles" : "categories")"),
            "sampling: \(sampling.steps) steps, guidance \(sampling.guidance), \(sampling.imagesPerPrompt) image(s) per prompt, seed \(sampling.seed) (prompt i: seed + i)",
            "variants: " + variants.map { "\($0.name) (\($0.description))" }.joined(separator: "; "),
        ]
        let report = EvalReport(summary: summary, title: config.demo ? "TextCraftor eval: ShapesWorld" : "TextCraftor eval",
                                settings: settings, grid: gridRows)
        try Data(report.html().utf8).write(to: output.appendingPathComponent("report.html"), options: .atomic)
    }

    /// One row per image and score.
    func resultsCSV(scores: [[[Double]]], images: [[URL]]) -> String {
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
        return csv
    }
}

/// A finite number, or nil (`nan` and `inf` are not weights).
public func finiteNumber(_ text: String) -> Double? {
    Double(text.trimmingCharacters(in: .whitespaces)).flatMap { $0.isFinite ? $0 : nil }
}
