import Foundation
import NN
import Rewards
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

let tinySDXLFolder = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl")

/// The tiny SDXL pipeline (scripts/parity/make_sdxl_fixtures.py) with both encoders trainable, frozen copies of them
/// as the originals, and the reward of the SD trainer fixture (aesthetic + CLIP score on the tiny CLIP).
/// `forceZeros` false rebuilds the pipeline as if model_index.json said `force_zeros_for_empty_prompt: false`.
func tinySDXLSetup(forceZeros: Bool = true) throws -> (StableDiffusionPipeline, TextEncoders, WeightedReward) {
    var pipeline = try StableDiffusionPipeline.load(folder: tinySDXLFolder)
    if !forceZeros {
        pipeline = StableDiffusionPipeline(
            tokenizer: pipeline.tokenizer, textEncoder: pipeline.textEncoder, tokenizer2: pipeline.tokenizer2,
            textEncoder2: pipeline.textEncoder2, unet: pipeline.unet, vae: pipeline.vae, schedulerConfig: pipeline.schedulerConfig,
            schedulerConfigFile: pipeline.schedulerConfigFile, forceZerosForEmptyPrompt: false)
    }
    let folder1 = tinySDXLFolder.appendingPathComponent("text_encoder"), folder2 = tinySDXLFolder.appendingPathComponent("text_encoder_2")
    let original = TextEncoders(
        try CLIPTextModel.load(try Weights.open(folder1.appendingPathComponent("model.safetensors")),
                               configFile: folder1.appendingPathComponent("config.json")),
        try CLIPTextModelWithProjection.load(try Weights.open(folder2.appendingPathComponent("model.safetensors")),
                                             configFile: folder2.appendingPathComponent("config.json")))
    original.first.setTrainable(false)
    original.second!.setTrainable(false)
    pipeline.textEncoder.setTrainable(true)
    pipeline.textEncoder2!.setTrainable(true)
    let clip = try CLIPModel.load(folder: tinyRewards.appendingPathComponent("clip"))
    let rewards = WeightedReward()
    rewards.add(try AestheticReward(embedder: clip, weights: tinyRewards.appendingPathComponent("aesthetic.pth")), gamma: 1)
    rewards.add(CLIPScoreReward(model: clip), gamma: 0.5)
    return (pipeline, original, rewards)
}

/// The gradients of both encoders' parameters, keyed "text_encoder.NAME" and "text_encoder_2.NAME".
func sdxlGradients(_ pipeline: StableDiffusionPipeline) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    for (prefix, module) in [("text_encoder", pipeline.textEncoder as any Module), ("text_encoder_2", pipeline.textEncoder2!)] {
        for (name, tensor) in module.namedParameters { out["\(prefix).\(name)"] = (tensor.grad ?? tensor.zerosLike()).clone() }
    }
    return out
}

func clearGradients(_ pipeline: StableDiffusionPipeline) {
    (pipeline.textEncoder.parameters + pipeline.textEncoder2!.parameters + pipeline.unet.parameters).forEach { $0.zeroGrad() }
}

@Suite(.serialized) struct SDXLWindowedGradientTests {
    /// On SDXL the walk-back sums the gradients of the hidden states and of the pooled embeddings over the window and
    /// sends both through the two encoders at once: the same gradient as plain backpropagation, for either way of
    /// forming the unconditional half (forced zeros, or the encoders of "").
    @Test(arguments: [(1, true), (3, true), (3, false)])
    func windowedEqualsFullBackprop(window: Int, forceZeros: Bool) throws {
        let (pipeline, original, rewards) = try tinySDXLSetup(forceZeros: forceZeros)
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234))
        let settings = SamplingSettings(samplingSteps: 4, gradientWindow: window, guidanceScale: 7.5)
        func step(_ mode: GradientMode) throws -> (StepOutcome, [String: Tensor]) {
            clearGradients(pipeline)
            let outcome = try promptTrainingStep(
                pipeline: pipeline, trainable: TextEncoders(of: pipeline), original: original, rewards: rewards,
                prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: mode)
            return (outcome, sdxlGradients(pipeline))
        }
        let (full, expected) = try step(.fullBackprop)
        let (windowed, found) = try step(.windowed)
        #expect(windowed.loss == full.loss)
        let error = relativeError(found, expected)
        #expect(error <= 1e-4, "window \(window): relative error \(error)")
        for prefix in ["text_encoder.", "text_encoder_2."] {
            let total = expected.filter { $0.key.hasPrefix(prefix) }.values.map { $0.abs().sum().item() }.reduce(0, +)
            #expect(total > 0, "\(prefix) has no gradient")
        }
        // The pooled embeddings carry gradient of their own: the projection, which only they pass through.
        #expect(expected["text_encoder_2.text_projection.weight"]!.abs().sum().item() > 0)
        #expect(pipeline.unet.parameters.allSatisfy { $0.grad == nil })
    }

    /// A VAE whose config sets latents_mean and latents_std (decoded as `latents * std / scaling + mean`): the
    /// piecewise-recomputed decoder starts from the same input as `pipeline.decode`, so the windowed gradient still
    /// equals plain backpropagation.
    @Test func latentStatisticsOfTheVAEKeepTheGradientExact() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("sdxl-stats-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: tinySDXLFolder, to: folder)
        defer { try? FileManager.default.removeItem(at: folder) }
        let configFile = folder.appendingPathComponent("vae/config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configFile)) as! [String: Any]
        config["latents_mean"] = [0.1, -0.2, 0.3, 0.05]
        config["latents_std"] = [1.1, 0.9, 1.2, 0.8]
        try JSONSerialization.data(withJSONObject: config).write(to: configFile)
        let (base, original, rewards) = try tinySDXLSetup()
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        pipeline.textEncoder.setTrainable(true)
        pipeline.textEncoder2!.setTrainable(true)
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 1234))
        let settings = SamplingSettings(samplingSteps: 3, gradientWindow: 2, guidanceScale: 7.5)
        func step(_ pipeline: StableDiffusionPipeline, _ mode: GradientMode) throws -> (Double, [String: Tensor]) {
            clearGradients(pipeline)
            let outcome = try promptTrainingStep(
                pipeline: pipeline, trainable: TextEncoders(of: pipeline), original: original, rewards: rewards,
                prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: mode)
            return (outcome.loss, sdxlGradients(pipeline))
        }
        let (fullLoss, expected) = try step(pipeline, .fullBackprop)
        let (windowedLoss, found) = try step(pipeline, .windowed)
        #expect(windowedLoss == fullLoss)
        #expect(relativeError(found, expected) <= 1e-4)
        #expect(try step(base, .windowed).0 != fullLoss, "the statistics changed nothing")
    }

    /// Freezing one encoder trains the other alone; its gradient is the one it gets when both train.
    @Test func oneEncoderTrainsAlone() throws {
        let (pipeline, original, rewards) = try tinySDXLSetup()
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 5))
        let settings = SamplingSettings(samplingSteps: 3, gradientWindow: 2, guidanceScale: 7.5)
        func step(_ original: TextEncoders) throws -> [String: Tensor] {
            clearGradients(pipeline)
            _ = try promptTrainingStep(pipeline: pipeline, trainable: TextEncoders(of: pipeline), original: original,
                                       rewards: rewards, prompts: fixturePrompts, initialNoise: noise, settings: settings)
            return sdxlGradients(pipeline)
        }
        let both = try step(original)
        pipeline.textEncoder2!.setTrainable(false)
        let first = try step(TextEncoders(original.first, pipeline.textEncoder2))
        #expect(pipeline.textEncoder2!.parameters.allSatisfy { $0.grad == nil })
        let firstNames = both.keys.filter { $0.hasPrefix("text_encoder.") }
        #expect(relativeError(first.filter { firstNames.contains($0.key) }, both.filter { firstNames.contains($0.key) }) <= 1e-5)
        pipeline.textEncoder2!.setTrainable(true)
        pipeline.textEncoder.setTrainable(false)
        let second = try step(TextEncoders(pipeline.textEncoder, original.second))
        #expect(pipeline.textEncoder.parameters.allSatisfy { $0.grad == nil })
        let secondNames = both.keys.filter { $0.hasPrefix("text_encoder_2.") }
        #expect(relativeError(second.filter { secondNames.contains($0.key) }, both.filter { secondNames.contains($0.key) }) <= 1e-5)
    }

    /// The UNet stage on SDXL: the encoders condition the window frozen, and the UNet's walk-back equals plain
    /// backpropagation.
    @Test func unetStageWindowedEqualsFullBackprop() throws {
        let (pipeline, _, rewards) = try tinySDXLSetup()
        pipeline.textEncoder.setTrainable(false)
        pipeline.textEncoder2!.setTrainable(false)
        pipeline.unet.setTrainable(true)
        let noise = Tensor.randn([2, 4, 8, 8], generator: Generator(seed: 9))
        let settings = SamplingSettings(samplingSteps: 3, gradientWindow: 2, guidanceScale: 7.5)
        func run(_ mode: GradientMode) throws -> [String: Tensor] {
            clearGradients(pipeline)
            let encoders = TextEncoders(of: pipeline)
            _ = try promptTrainingStep(pipeline: pipeline, trainable: encoders, original: encoders, rewards: rewards,
                                       prompts: fixturePrompts, initialNoise: noise, settings: settings, mode: mode,
                                       trainsTextEncoder: false)
            return Dictionary(uniqueKeysWithValues: pipeline.unet.namedParameters.map { ($0.name, ($0.tensor.grad ?? $0.tensor.zerosLike()).clone()) })
        }
        let full = try run(.fullBackprop), windowed = try run(.windowed)
        #expect(relativeError(windowed, full) <= 1e-4)
        #expect(full.values.map { $0.abs().sum().item() }.reduce(0, +) > 0)
        #expect((pipeline.textEncoder.parameters + pipeline.textEncoder2!.parameters).allSatisfy { $0.grad == nil })
    }
}

/// A trainer on the tiny SDXL for `target`, its originals copies of the encoders that train, as `TrainingSession`
/// builds them.
func makeSDXLTrainer(_ out: URL, target: TrainedNetwork, maxSteps: Int, saveEvery: Int = 1) throws -> Trainer {
    let (pipeline, copies, rewards) = try tinySDXLSetup()
    let original = TextEncoders(target.trainsFirstEncoder ? copies.first : pipeline.textEncoder,
                                target.trainsSecondEncoder ? copies.second : pipeline.textEncoder2)
    var config = smallRunConfig(maxSteps: maxSteps, saveEvery: saveEvery, lr: 1e-3)
    config.train = target
    return try Trainer(pipeline: pipeline, original: original, modelFolder: tinySDXLFolder, rewards: rewards,
                       data: .prompts(try smallRunPrompts()), config: config, run: RunFolder(out))
}

@Suite(.serialized) struct SDXLTrainerTests {
    /// Both encoders in one optimizer: stopped and resumed, the run ends with the bits of a run never stopped (both
    /// encoders' weights, every AdamW moment).
    @Test func stoppedAndResumedRunEndsBitIdentical() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let a = try makeSDXLTrainer(straight, target: .textEncoders, maxSteps: 4)
        try a.train()
        let first = try makeSDXLTrainer(resumed, target: .textEncoders, maxSteps: 4)
        let stopAt = StopFlag(after: 2)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        #expect(first.step == 2)
        let second = try makeSDXLTrainer(resumed, target: .textEncoders, maxSteps: 4)
        try second.resume()
        #expect(second.step == 2)
        try second.train()
        #expect(a.trainedModules.count == 2)
        for (x, y) in zip(a.trainedModules, second.trainedModules) {
            for ((name, p), (_, q)) in zip(x.namedParameters, y.namedParameters) {
                #expect(p.toArray(Float.self) == q.toArray(Float.self), "\(name) differs after resume")
            }
        }
        let (stateA, metaA) = a.optimizerState(), (stateB, metaB) = second.optimizerState()
        #expect(metaA == metaB)
        // Moments for every parameter that had a gradient: all of both encoders but text_encoder's last layer (16
        // tensors) and final layer norm (2), which SDXL's penultimate states never pass through, so AdamW skips them
        // as torch does (no moments, no weight decay).
        let count = a.trainedModules[0].parameters.count + a.trainedModules[1].parameters.count
        #expect(stateA.count == 2 * (count - 18))
        let unused = a.trainedModules[0].namedParameters.filter { $0.name.hasPrefix("text_model.encoder.layers.2.") || $0.name.hasPrefix("text_model.final_layer_norm.") }
        #expect(unused.count == 18)
        let model = try Tensor.load(safetensors: tinySDXLFolder.appendingPathComponent("text_encoder/model.safetensors"))
        for (name, p) in unused { #expect(p.toArray(Float.self) == model[name]!.toArray(Float.self), "\(name) moved") }
        for (key, t) in stateA { #expect(t.toArray(Float.self) == stateB[key]!.toArray(Float.self), "\(key)") }
    }

    /// Each choice writes the encoders it trains, in diffusers' layout: the model's config.json and transformers'
    /// key names (`text_projection.weight` for the second encoder), loadable as the model's own; the one that did not
    /// train is not written and keeps its weights.
    @Test(arguments: [TrainedNetwork.textEncoder, .textEncoder2, .textEncoders])
    func writesTheTrainedEncodersInDiffusersLayout(target: TrainedNetwork) throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let trainer = try makeSDXLTrainer(out, target: target, maxSteps: 1)
        try trainer.train()
        let run = RunFolder(out)
        let expected = [target.trainsFirstEncoder ? "text_encoder" : nil, target.trainsSecondEncoder ? "text_encoder_2" : nil].compactMap { $0 }
        #expect(trainer.weightsFolders.map(\.lastPathComponent) == expected)
        #expect(FileManager.default.fileExists(atPath: run.textEncoder.path) == target.trainsFirstEncoder)
        #expect(FileManager.default.fileExists(atPath: run.textEncoder2.path) == target.trainsSecondEncoder)
        for name in expected {
            let folder = out.appendingPathComponent(name)
            #expect(try Data(contentsOf: folder.appendingPathComponent("config.json"))
                    == Data(contentsOf: tinySDXLFolder.appendingPathComponent("\(name)/config.json")))
            let saved = try Tensor.load(safetensors: folder.appendingPathComponent("model.safetensors"))
            let model = try Tensor.load(safetensors: tinySDXLFolder.appendingPathComponent("\(name)/model.safetensors"))
            #expect(Set(saved.keys) == Set(model.keys), "\(name): the keys of the model's own file")
            #expect(saved.keys.contains { (saved[$0]! - model[$0]!).abs().max().item() > 0 }, "\(name) did not move")
            #expect(FileManager.default.fileExists(atPath: run.completeCheckpoints().last!.appendingPathComponent("\(name)/model.safetensors").path))
        }
        if target.trainsSecondEncoder {
            let encoder = try CLIPTextModelWithProjection.load(
                try Weights.open(run.textEncoder2.appendingPathComponent("model.safetensors")),
                configFile: run.textEncoder2.appendingPathComponent("config.json"))
            #expect(encoder.namedParameters.contains { $0.name == "text_projection.weight" })
        }
        // An encoder that does not train stays the model's.
        let frozen = target.trainsFirstEncoder ? trainer.pipeline.textEncoder2! as any Module : trainer.pipeline.textEncoder
        let frozenName = target.trainsFirstEncoder ? "text_encoder_2" : "text_encoder"
        if target != .textEncoders {
            let model = try Tensor.load(safetensors: tinySDXLFolder.appendingPathComponent("\(frozenName)/model.safetensors"))
            for (name, p) in frozen.namedParameters { #expect(p.toArray(Float.self) == model[name]!.toArray(Float.self), "\(name)") }
        }
    }

    /// The UNet stage on SDXL writes unet/ and leaves both encoders untouched.
    @Test func unetStageWritesTheUNet() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let trainer = try makeSDXLTrainer(out, target: .unet, maxSteps: 1)
        try trainer.train()
        #expect(trainer.weightsFolders.map(\.lastPathComponent) == ["unet"])
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("unet/diffusion_pytorch_model.safetensors").path))
        #expect(!FileManager.default.fileExists(atPath: RunFolder(out).textEncoder.path))
    }

    /// The second encoder on an SD 1.x model is refused naming the key.
    @Test func theSecondEncoderNeedsSDXL() throws {
        let (pipeline, _, original, rewards) = try tinySetup()
        var config = TrainingConfig()
        config.train = .textEncoder2
        #expect(throws: TextCraftorError.invalidSetting(
            key: "train", message: "text-encoder-2 needs a second text encoder (SDXL), and \(tinySD15.path) is a Stable Diffusion 1.x/2.x model: use text-encoder or unet")) {
            try Trainer(pipeline: pipeline, original: TextEncoders(original), modelFolder: tinySD15, rewards: rewards,
                        data: .prompts(try SampledBatches(fixturePrompts, batchSize: 1, shuffle: false, seed: 0)),
                        config: config, run: RunFolder(temporaryRun()))
        }
    }
}

@Suite struct EncoderFoldersTests {
    let sd15Encoder = tinySD15.appendingPathComponent("text_encoder")

    /// A run folder gives the encoders it holds; an encoder folder goes where its config's architectures say; SD
    /// 1.x/2.x takes text_encoder only; anything else is one line naming the key.
    @Test func foldersResolveByWhatTheyHold() throws {
        let both = try EncoderFolders.resolve(tinySDXLFolder.path, key: "text_encoder", architecture: .sdxl)
        #expect(both == EncoderFolders(first: tinySDXLFolder.appendingPathComponent("text_encoder"),
                                      second: tinySDXLFolder.appendingPathComponent("text_encoder_2")))
        let second = tinySDXLFolder.appendingPathComponent("text_encoder_2")
        #expect(try EncoderFolders.resolve(second.path, key: "k", architecture: .sdxl) == EncoderFolders(second: second))
        // A fine-tuned SD 1.x encoder (CLIP ViT-L) stands in for SDXL's first.
        #expect(try EncoderFolders.resolve(sd15Encoder.path, key: "k", architecture: .sdxl) == EncoderFolders(first: sd15Encoder))
        #expect(try EncoderFolders.resolve(tinySDXLFolder.path, key: "k", architecture: .sd)
                == EncoderFolders(first: tinySDXLFolder.appendingPathComponent("text_encoder")))

        let run = temporaryRun()
        defer { try? FileManager.default.removeItem(at: run) }
        try FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
        #expect(throws: TextCraftorError.invalidSetting(
            key: "text_encoder", message: "\(run.path): neither a text encoder folder (config.json) nor a folder holding text_encoder/ or text_encoder_2/")) {
            try EncoderFolders.resolve(run.path, key: "text_encoder", architecture: .sdxl)
        }
        try FileManager.default.copyItem(at: second, to: run.appendingPathComponent("text_encoder_2"))
        #expect(try EncoderFolders.resolve(run.path, key: "k", architecture: .sdxl) == EncoderFolders(second: run.appendingPathComponent("text_encoder_2")))
        #expect(throws: TextCraftorError.invalidSetting(
            key: "mix", message: "\(run.path): holds only text_encoder_2/, and a Stable Diffusion 1.x/2.x model has one text encoder (text_encoder/)")) {
            try EncoderFolders.resolve(run.path, key: "mix", architecture: .sd)
        }
        #expect(throws: TextCraftorError.invalidSetting(key: "k", message: "/nonexistent/run: no such file or folder")) {
            try EncoderFolders.resolve("/nonexistent/run", key: "k", architecture: .sdxl)
        }
    }

    /// The UNet stage's session conditions on the run's encoders: their weights replace the pipeline's.
    @Test func theUNetStageLoadsTheRunsEncoders() throws {
        let first = temporaryRun(), second = temporaryRun()
        defer { [first, second].forEach { try? FileManager.default.removeItem(at: $0) } }
        let trainer = try makeSDXLTrainer(first, target: .textEncoder2, maxSteps: 1)
        try trainer.train()
        let prompts = first.appendingPathComponent("prompts.txt")
        try "a red circle\n".write(to: prompts, atomically: true, encoding: .utf8)
        var config = TrainingConfig()
        config.model = tinySDXLFolder.path
        config.train = .unet
        config.textEncoder = first.path
        config.prompts = prompts.path
        config.rewards = [RewardOption(name: "clip", paths: [tinyRewards.appendingPathComponent("clip").path])]
        config.out = second.path
        config.samplingSteps = 2
        config.gradientWindow = 1
        let session = try TrainingSession(config: config)
        let saved = try Tensor.load(safetensors: first.appendingPathComponent("text_encoder_2/model.safetensors"))
        for (name, p) in session.trainer.pipeline.textEncoder2!.namedParameters {
            #expect(p.toArray(Float.self) == saved[name]!.toArray(Float.self), "\(name)")
        }
        #expect(session.trainer.pipeline.textEncoder2!.parameters.allSatisfy { !$0.requiresGrad })
    }
}

@Suite(.serialized) struct SDXLDirectTrainingTests {
    /// Direct fine-tuning on SDXL conditions the UNet on the captions through both encoders (hidden states and pooled
    /// embeddings, so the projection of text_encoder_2 gets gradient too); the UNet stage's direct step leaves them
    /// without gradient. The draws are the SD step's: same generator state, same images.
    @Test func bothEncodersTakeTheGradient() throws {
        let (pipeline, _, rewards) = try tinySDXLSetup()
        let images = Tensor.rand([2, 3, 64, 64], generator: Generator(seed: 4))
        func step(trainsTextEncoder: Bool) throws -> StepOutcome {
            clearGradients(pipeline)
            return try directTrainingStep(
                pipeline: pipeline, textEncoders: TextEncoders(of: pipeline), rewards: rewards, images: images,
                captions: fixturePrompts, timestepRange: 100...600, generator: Generator(seed: 11), trainsTextEncoder: trainsTextEncoder)
        }
        let outcome = try step(trainsTextEncoder: true)
        #expect(outcome.loss.isFinite && outcome.images.shape == [2, 3, 64, 64])
        let grads = sdxlGradients(pipeline)
        for prefix in ["text_encoder.", "text_encoder_2."] {
            #expect(grads.filter { $0.key.hasPrefix(prefix) }.values.map { $0.abs().sum().item() }.reduce(0, +) > 0, "\(prefix)")
        }
        #expect(grads["text_encoder_2.text_projection.weight"]!.abs().sum().item() > 0)
        pipeline.unet.setTrainable(true)  // the UNet stage: the UNet takes the gradient
        let frozen = try step(trainsTextEncoder: false)
        #expect(pipeline.unet.parameters.contains { $0.grad != nil })
        #expect(abs(frozen.loss - outcome.loss) <= 1e-6 * abs(outcome.loss))  // the same draws; kernels may differ with a graph
        #expect((pipeline.textEncoder.parameters + pipeline.textEncoder2!.parameters).allSatisfy { $0.grad == nil })
    }
}
