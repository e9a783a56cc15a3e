import ArgumentParser
import Foundation
import ShapesWorld
import Torch
import StableDiffusion
import TextCraftor

struct Shapes: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "ShapesWorld, the embedded default world: tiny procedural scenes, their captions and an oracle.",
        subcommands: [Render.self, Pretrain.self, Eval.self])

    struct Render: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Render random scenes as 32x32 PNGs with captions (a folder `train --mode direct --data` reads).",
            discussion: """
                Writes 0000.png, 0001.png, ..., metadata.jsonl (one {"file_name", "text"} object per image, with the \
                scene's attributes, its split, the oracle's quality score and the degradation if any) and grid.png, a \
                contact sheet of the first 64 images scaled x4. The same --seed gives the same bytes. --split \
                held-out draws only the held-out (shape, colour) pairs, which training scenes never use. --degrade \
                blurs, adds noise, lowers the contrast or tints each image (kind and strength 0.2-1 from the seed).
                """)

        @Option(help: "The output folder (created if needed).", completion: .directory) var out: String
        @Option(help: "How many scenes.") var count = 64
        @Option(help: "The seed of the scenes, captions and degradations.") var seed: UInt64 = 0
        @Option(help: "train or held-out.") var split = "train"
        @Flag(help: "Degrade every image with a random degradation.") var degrade = false

        func run() throws {
            guard count >= 1 else { throw CommandError("--count must be at least 1 (got \(count))") }
            guard let split = Split(rawValue: split) else {
                throw CommandError("--split \(self.split): expected train or held-out")
            }
            let folder = URL(fileURLWithPath: out)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            var rng = SplitMix64(seed: seed)
            var lines: [String] = []
            var sheet: [[UInt8]] = []
            let digits = max(4, String(count - 1).count)
            for index in 0..<count {
                let scene = Scene.random(split: split, using: &rng)
                let caption = Captions.caption(for: scene, seed: rng.next())
                var image = Renderer.render(scene)
                var degradation: Degradation?
                if degrade {
                    degradation = Degradation.random(using: &rng)
                    image = degradation!.apply(to: image)
                }
                let name = String(repeating: "0", count: max(0, digits - String(index).count)) + "\(index).png"
                try PNG.encode(pixels: image, width: Renderer.side, height: Renderer.side)
                    .write(to: folder.appendingPathComponent(name), options: .atomic)
                var entry: [String: Any] = [
                    "file_name": name, "text": caption, "shape": scene.shape.rawValue, "colour": scene.colour.rawValue,
                    "size": scene.size.rawValue, "position": scene.position.rawValue,
                    "background": scene.background.rawValue, "split": split.rawValue,
                    "quality": (Oracle.quality(image) * 1000).rounded() / 1000,
                ]
                if let degradation {
                    entry["degradation"] = degradation.kind.rawValue
                    entry["strength"] = (degradation.strength * 1000).rounded() / 1000
                }
                let json = try JSONSerialization.data(withJSONObject: entry, options: [.sortedKeys, .withoutEscapingSlashes])
                lines.append(String(decoding: json, as: UTF8.self))
                if sheet.count < 64 { sheet.append(image) }
            }
            try (lines.joined(separator: "\n") + "\n").write(
                to: folder.appendingPathComponent("metadata.jsonl"), atomically: true, encoding: .utf8)
            let grid = Renderer.contactSheet(sheet, columns: min(8, sheet.count), scale: 4)
            try PNG.encode(pixels: grid.pixels, width: grid.width, height: grid.height)
                .write(to: folder.appendingPathComponent("grid.png"), options: .atomic)
            print("wrote \(count) \(split.rawValue) scenes, metadata.jsonl and grid.png to \(folder.path)")
        }
    }

    struct Pretrain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Train ShapesWorld's tiny models from scratch and write the bundle the demo runs on.",
            discussion: """
                Four stages, each with its own seed derived from --seed: a tiny CLIP (contrastive, on renders and \
                captions, half of them degraded and named so: "blurry, a large red circle ..."), a tiny VAE \
                (32x32x3 <-> 8x8x4, its scaling factor measured as 1/std of the latents), a tiny UNet on the frozen CLIP \
                text tower (epsilon prediction, SD1.5's schedule, 10% caption dropout; half its renders washed-out, \
                "sharp, ..." on 85% of the clean ones' captions, "washed-out, ..." on 30% of the others', so that a \
                prompt silent about quality draws a mostly washed-out image) and an aesthetic head (LAION's predictor shape) regressing \
                the oracle's quality score from the CLIP image embedding, on degraded renders and VAE round trips.

                Writes OUT as a diffusers folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, \
                scheduler/) plus rewards/clip/ and rewards/aesthetic.safetensors and pretraining.json (plan, times, \
                losses and measurements). Work goes to OUT.partial first; a stopped run continues from its last \
                finished stage when run again with the same options. The default plan takes about 50 minutes on 2 \
                idle CPU cores; --scale 0.01 runs every stage briefly (a smoke test).
                """)

        @Option(help: "The bundle folder to write (must not exist).", completion: .directory) var out: String
        @Option(help: "The seed of every stage.") var seed: UInt64 = 0
        @Option(help: "Multiply every stage's steps by this (e.g. 0.01 for a quick check).") var scale = 1.0
        @Option(help: "CLIP steps (default \(PretrainingPlan().clipSteps)).") var clipSteps: Int?
        @Option(help: "VAE steps (default \(PretrainingPlan().vaeSteps)).") var vaeSteps: Int?
        @Option(help: "UNet steps (default \(PretrainingPlan().unetSteps)).") var unetSteps: Int?
        @Option(help: "Aesthetic head steps (default \(PretrainingPlan().aestheticSteps)).") var aestheticSteps: Int?

        func run() throws {
            guard scale > 0 else { throw CommandError("--scale must be positive (got \(scale))") }
            var plan = PretrainingPlan()
            plan.seed = seed
            if let clipSteps { plan.clipSteps = clipSteps }
            if let vaeSteps { plan.vaeSteps = vaeSteps }
            if let unetSteps { plan.unetSteps = unetSteps }
            if let aestheticSteps { plan.aestheticSteps = aestheticSteps }
            for stage in PretrainingStage.allCases where plan.steps(stage) < 1 {
                throw CommandError("--\(stage.rawValue)-steps must be at least 1")
            }
            plan = plan.scaled(by: scale)
            let output = URL(fileURLWithPath: out)
            let pretraining = ShapesPretraining(plan: plan, output: output)
            var bar: ProgressBar?
            var smoothed = 0.0
            pretraining.onStep = { stage, step, total, loss in
                if step == 1 {
                    bar = ProgressBar(stage.rawValue, total: total)
                    smoothed = loss
                }
                smoothed = 0.98 * smoothed + 0.02 * loss
                bar?.update(step, note: "loss \(String(format: "%.4f", smoothed))")
            }
            pretraining.onStageEnd = { report, resumed in
                let metrics = report.metrics.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.4g", $0.value))" }
                let head = resumed ? "\(report.stage.title): done in an earlier run" : report.stage.title
                print("\(head): \(report.steps) steps in \(String(format: "%.0f", report.seconds)) s, loss "
                    + "\(String(format: "%.4f", report.firstLoss)) -> \(String(format: "%.4f", report.lastLoss))"
                    + (metrics.isEmpty ? "" : "; " + metrics.joined(separator: ", ")))
            }
            let record = try pretraining.run()
            let seconds = record.stages.map(\.seconds).reduce(0, +)
            print("wrote the ShapesWorld bundle to \(output.path) (\(String(format: "%.1f", seconds / 60)) min of training)")
        }
    }

    struct Eval: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Score text encoders on ShapesWorld: rewards and oracle, as a table.",
            discussion: """
                Samples images for prompts of a split with the bundle's UNet and VAE, conditioned on each encoder in \
                turn (the bundle's own first, then each --text-encoder), with the same noise for all, and prints the \
                mean aesthetic reward, CLIP score, oracle alignment (share of the prompt's attributes the image shows) \
                and oracle quality (1-10). --text-encoder takes a folder with config.json and model.safetensors, or a \
                training run's folder (its text_encoder/ is used).
                """)

        @Option(help: "The bundle (default: the one shipped with the package).", completion: .directory) var model: String?
        @Option(help: "A fine-tuned text encoder folder (repeatable).", completion: .directory) var textEncoder: [String] = []
        @Option(help: "train or held-out.") var split = "held-out"
        @Option(help: "How many prompts (distinct scenes).") var prompts = 24
        @Option(help: "Images per prompt.") var imagesPerPrompt = 4
        @Option(help: "DDIM steps.") var steps = 10
        @Option(help: "Classifier-free guidance.") var guidance = 5.0
        @Option(help: "Seed of the prompts and the noise.") var seed: UInt64 = 0
        @Option(help: "Also write the table as JSON to this file.", completion: .file()) var json: String?
        @Option(help: ArgumentHelp("A negative prompt for every sample, e.g. \"washed-out, blurry\".", valueName: "WORDS")) var negative = ""
        @Option(help: ArgumentHelp("Words put before every prompt when sampling, e.g. \"sharp, \" or \"blurry, \"; the oracle still judges the plain prompt.", valueName: "WORDS")) var prefix = ""

        func run() throws {
            guard let split = Split(rawValue: split) else { throw CommandError("--split \(self.split): expected train or held-out") }
            for (flag, value) in [("--prompts", prompts), ("--images-per-prompt", imagesPerPrompt), ("--steps", steps)] where value < 1 {
                throw CommandError("\(flag) must be at least 1 (got \(value))")
            }
            let bundle = try shapesBundle(model)
            let pipeline = try StableDiffusionPipeline.load(folder: bundle)
            let judge = try ShapesJudge(bundle: bundle)
            let prompts = ShapesPrompts.make(count: self.prompts, split: split, seed: seed &+ 101)
            var rows: [(String, ShapesScores)] = []
            var encoders: [(String, CLIPTextModel?)] = [("original", nil)]
            for folder in textEncoder {
                let encoder: CLIPTextModel
                do { encoder = try pipeline.loadTextEncoder(folder: URL(fileURLWithPath: folder)) } catch {
                    throw CommandError("--text-encoder \(folder): \(error)")
                }
                encoders.append((folder, encoder))
            }
            for (name, encoder) in encoders {
                let evaluator = DemoEvaluator(
                    pipeline: pipeline, original: pipeline.textEncoder, judge: judge, prompts: prompts,
                    imagesPerPrompt: imagesPerPrompt, steps: steps, guidance: guidance, seed: seed &+ 303,
                    finetuned: encoder)
                evaluator.prefix = prefix
                evaluator.negative = negative
                let bar = ProgressBar("eval \(name)", total: prompts.count)
                rows.append((name, try evaluator.evaluate(blend: encoder == nil ? nil : 1) { done, _ in bar.update(done) }.mean))
            }
            let width = max(14, rows.map(\.0.count).max()! + 2)
            print("\(split.rawValue) prompts: \(prompts.count) x \(imagesPerPrompt) images, DDIM \(steps) steps, guidance \(guidance)")
            print(DemoReport.header(width: width))
            for (name, scores) in rows { print(DemoReport.row(name, scores, width: width)) }
            if let json {
                let object: [String: Any] = [
                    "split": split.rawValue, "prompts": prompts.count, "images_per_prompt": imagesPerPrompt, "steps": steps,
                    "guidance": guidance, "seed": seed,
                    "encoders": rows.map { ["name": $0.0, "scores": DemoReport.scoresObject($0.1)] as [String: Any] },
                ]
                try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                    .write(to: URL(fileURLWithPath: json), options: .atomic)
            }
        }
    }
}
