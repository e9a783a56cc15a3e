import Foundation
import NN
import Rewards
import StableDiffusion
import Testing
import Torch

@testable import ShapesWorld

func temporaryFolder(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("shapes-\(name)-\(UUID().uuidString)")
}

@Suite(.serialized) struct PretrainingTests {
    /// Every stage for a step or two: the smallest run that goes through all the code and writes a whole bundle.
    static func tinyPlan() -> PretrainingPlan {
        var plan = PretrainingPlan()
        plan.seed = 7
        (plan.clipSteps, plan.vaeSteps, plan.unetSteps, plan.aestheticSteps) = (2, 2, 2, 2)
        (plan.clipBatchSize, plan.vaeBatchSize, plan.unetBatchSize, plan.aestheticBatchSize) = (8, 4, 4, 8)
        return plan
    }

    /// The pretraining runs one short epoch of each stage, and what it writes loads through the loaders of real
    /// Stable Diffusion (the diffusers folder) and of the rewards.
    @Test func aShortPretrainingWritesABundleTheRealLoadersRead() throws {
        let out = temporaryFolder("pretrain")
        defer { try? FileManager.default.removeItem(at: out) }
        let pretraining = ShapesPretraining(plan: Self.tinyPlan(), output: out)
        var steps: [PretrainingStage: Int] = [:]
        pretraining.onStep = { stage, _, _, loss in
            steps[stage, default: 0] += 1
            #expect(loss.isFinite)
        }
        let record = try pretraining.run()
        #expect(record.stages.map(\.stage) == PretrainingStage.allCases)
        #expect(steps == [.clip: 2, .vae: 2, .unet: 2, .aesthetic: 2])
        #expect(!FileManager.default.fileExists(atPath: out.path + ".partial"))

        let pipeline = try StableDiffusionPipeline.load(folder: out)
        #expect(pipeline.defaultSize == 32)
        let scaling = try #require(record.stages.first { $0.stage == .vae }?.metrics["scaling_factor"])
        #expect(abs(pipeline.vae.config.scaling_factor - scaling) < 1e-12)
        var request = GenerationRequest(prompts: ["a red circle on the left"])
        request.steps = 2
        let images = try pipeline.generate(request).images
        #expect(images.shape == [1, 32, 32, 3])
        let scores = try ShapesJudge(bundle: out).score(images: images, prompts: request.prompts)
        #expect(scores.count == 1 && scores[0].aesthetic.isFinite && scores[0].clipScore.isFinite)

        // Half-precision storage, read back as float32; the text encoder is the CLIP's text tower, exactly.
        let textWeights = try Weights.open(out.appendingPathComponent("text_encoder/model.safetensors"))
        #expect(textWeights.info("text_model.embeddings.token_embedding.weight")?.dtype == .float16)
        let clip = try CLIPModel.load(folder: ShapesWorldBundle.clip(in: out), dtype: .float32)
        let ids = tokenIds(clip.tokenizer, ["a small blue square at the top"])
        let fromCLIP = withNoGrad { clip.textModel(ids).lastHiddenState }
        let fromPipeline = withNoGrad { pipeline.textEncoder(ids).lastHiddenState }
        #expect((fromCLIP - fromPipeline).abs().max().item() == 0)
        #expect(pipeline.tokenizer.tokenize(["a tiny disc"]).ids == clip.tokenizer.tokenize(["a tiny disc"]).ids)

        // OUT exists now: a second run refuses rather than overwrite it.
        #expect(throws: ShapesWorldError.self) { try ShapesPretraining(plan: Self.tinyPlan(), output: out).run() }
    }

    /// A run stopped after some stages continues from there: the finished stages are read back, not retrained.
    @Test func aStoppedPretrainingResumesFromItsLastFinishedStage() throws {
        let out = temporaryFolder("resume")
        let partial = URL(fileURLWithPath: out.path + ".partial")
        defer { try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: partial) }
        try ShapesPretraining(plan: Self.tinyPlan(), output: out).run()
        let clipWeights = try Data(contentsOf: out.appendingPathComponent("rewards/clip/model.safetensors"))
        // Make it look like a run stopped after the VAE: the record lists two stages.
        try FileManager.default.moveItem(at: out, to: partial)
        let recordURL = partial.appendingPathComponent("pretraining.json")
        var record = try JSONDecoder().decode(PretrainingRecord.self, from: Data(contentsOf: recordURL))
        record.stages = Array(record.stages.prefix(2))
        try JSONEncoder().encode(record).write(to: recordURL)

        let resumed = ShapesPretraining(plan: Self.tinyPlan(), output: out)
        var trained: Set<PretrainingStage> = []
        var reloaded: [PretrainingStage] = []
        resumed.onStep = { stage, _, _, _ in trained.insert(stage) }
        resumed.onStageEnd = { report, wasResumed in if wasResumed { reloaded.append(report.stage) } }
        let final = try resumed.run()
        #expect(trained == [.unet, .aesthetic])
        #expect(reloaded == [.clip, .vae])
        #expect(final.stages.map(\.stage) == PretrainingStage.allCases)
        #expect(try Data(contentsOf: out.appendingPathComponent("rewards/clip/model.safetensors")) == clipWeights)
        // A different plan does not reuse a partial folder: every stage is trained again.
        try FileManager.default.moveItem(at: out, to: partial)
        var other = Self.tinyPlan()
        other.seed = 8
        let fresh = ShapesPretraining(plan: other, output: out)
        var retrained: Set<PretrainingStage> = []
        fresh.onStep = { stage, _, _, _ in retrained.insert(stage) }
        try fresh.run()
        #expect(retrained == Set(PretrainingStage.allCases))
        #expect(try Data(contentsOf: out.appendingPathComponent("rewards/clip/model.safetensors")) != clipWeights)
    }

    @Test func theRecipeDegradesAndNamesQualityAsAsked() {
        var random = SplitMix64(seed: 11)
        let recipe = SampleRecipe(degradationProbability: 0.5, qualityWordProbability: 1)
        var degraded = 0
        for _ in 0..<400 {
            let sample = Sample.random(split: .train, recipe: recipe, using: &random)
            let word = sample.caption.split(separator: ",").first.map(String.init)
            #expect(word == (sample.degradation?.kind.word ?? SampleRecipe.cleanWord))
            // The quality word leaves the attributes as they were.
            #expect(Captions.parse(sample.caption) == sample.scene.attributes)
            if sample.degradation != nil { degraded += 1 } else { #expect(sample.pixels == Renderer.render(sample.scene)) }
        }
        #expect((170...230).contains(degraded), "\(degraded) of 400 degraded at p = 0.5")
        var plain = SplitMix64(seed: 12)
        for _ in 0..<50 {
            let sample = Sample.random(split: .train, recipe: .clean, using: &plain)
            #expect(sample.degradation == nil && sample.pixels == Renderer.render(sample.scene))
            #expect(Captions.parse(sample.caption) == sample.scene.attributes)
            #expect(!sample.caption.hasPrefix(SampleRecipe.cleanWord + ","))
        }
    }

    /// The UNet's recipe: "sharp" goes with most clean renders and a quality word with few degraded ones, so captions
    /// silent about quality come mostly with washed-out renders (0.5·0.7 / (0.5·0.7 + 0.5·0.15) = 82%).
    @Test func silentCaptionsGoMostlyWithDegradedRendersInTheUNetRecipe() {
        var random = SplitMix64(seed: 13)
        let recipe = UNetPretrainer.defaultRecipe
        var silent = 0, silentDegraded = 0, sharp = 0, sharpDegraded = 0
        for _ in 0..<2000 {
            let sample = Sample.random(split: .train, recipe: recipe, using: &random)
            #expect(sample.degradation.map { $0.kind == .lowContrast && $0.strength >= 0.5 } ?? true)
            let word = sample.caption.split(separator: ",").first.map(String.init)
            if word == SampleRecipe.cleanWord {
                sharp += 1
                if sample.degradation != nil { sharpDegraded += 1 }
            } else if word != Degradation.Kind.lowContrast.word {
                silent += 1
                if sample.degradation != nil { silentDegraded += 1 }
            }
        }
        let share = Double(silentDegraded) / Double(silent)
        #expect(abs(share - 0.82) < 0.04, "\(silentDegraded) of \(silent) silent captions with degraded renders")
        #expect(sharpDegraded == 0 && abs(Double(sharp) / 2000 - 0.425) < 0.03, "\(sharp) sharp captions")
    }
}

/// The bundle shipped with the package (Resources/ShapesWorld).
@Suite(.serialized) struct ShippedBundleTests {
    @Test func isADiffusersFolderUnder20MB() throws {
        let bundle = try #require(ShapesWorldBundle.url)
        var total = 0
        let files = FileManager.default.enumerator(at: bundle, includingPropertiesForKeys: [.fileSizeKey])!
        for case let url as URL in files { total += (try url.resourceValues(forKeys: [.fileSizeKey]).fileSize) ?? 0 }
        #expect(total <= 20_000_000, "the bundle holds \(total) bytes")
        for path in ["model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "text_encoder/config.json",
                     "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                     "rewards/clip/config.json", "rewards/clip/model.safetensors", "rewards/aesthetic.safetensors",
                     "pretraining.json"] {
            #expect(FileManager.default.fileExists(atPath: bundle.appendingPathComponent(path).path), "\(path)")
        }
    }

    /// The bundle loads like real Stable Diffusion, and draws what training prompts ask for: 4 DDIM steps (guidance 3)
    /// give an oracle alignment of at least 0.7 for prompts that ask for a clean image ("sharp, ..."). Prompts silent
    /// about quality draw mostly washed-out images, as the UNet was taught (`UNetPretrainer.defaultRecipe`): their
    /// colours sit near mid grey and are read less reliably, and the oracle's quality is far lower. That gap is the
    /// headroom the demo's text encoder learns to close.
    @Test func aFourStepSampleShowsTheTrainingPrompts() throws {
        let bundle = try #require(ShapesWorldBundle.url)
        let pipeline = try StableDiffusionPipeline.load(folder: bundle)
        let prompts = ShapesPrompts.make(count: 32, split: .train, seed: 99)
        func sample(prefix: String) throws -> (alignment: Double, quality: Double) {
            var request = GenerationRequest(prompts: prompts.map { prefix + $0 })
            request.steps = 4
            request.guidanceScale = 3
            request.imagesPerPrompt = 2
            request.seed = 5
            let bytes = try pipeline.generate(request).images.contiguous().toArray(UInt8.self)
            let images = (0..<(2 * prompts.count)).map { Array(bytes[$0 * 3072..<($0 + 1) * 3072]) }
            let alignment = images.indices.map { Oracle.alignment(images[$0], prompt: prompts[$0 / 2]) }
            return (alignment.reduce(0, +) / Double(images.count), images.map(Oracle.quality).reduce(0, +) / Double(images.count))
        }
        let sharp = try sample(prefix: SampleRecipe.cleanWord + ", ")
        let plain = try sample(prefix: "")
        #expect(sharp.alignment >= 0.7, "mean oracle alignment \(sharp.alignment) over \(2 * prompts.count) images")
        #expect(plain.alignment >= 0.6, "plain prompts: mean oracle alignment \(plain.alignment)")
        #expect(sharp.quality > plain.quality + 1.5, "oracle quality: \(sharp.quality) sharp, \(plain.quality) plain")
    }
}
