import Foundation
import NN
import Rewards
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

/// The guards against reward hacking: the proximity penalty against a hand computation, the random window's draws,
/// early stopping's logic, and both kept across a resume.
@Suite(.serialized) struct GuardsTests {
    /// The tiny SD 1.5 trainer of `TrainerTests` (batch 2 of 3 shuffled prompts, 3 sampling steps, window 2, seed 7)
    /// with `change` applied to its configuration; rewards: aesthetic alone (CLIP score is the held-out signal).
    func guardedTrainer(_ out: URL, maxSteps: Int, change: (inout TrainingConfig) -> Void) throws -> Trainer {
        let (pipeline, _, original, _) = try tinySetup()
        let clip = try CLIPModel.load(folder: tinyRewards.appendingPathComponent("clip"))
        let rewards = WeightedReward()
        rewards.add(try AestheticReward(embedder: clip, weights: tinyRewards.appendingPathComponent("aesthetic.pth")), gamma: 1)
        var config = smallRunConfig(maxSteps: maxSteps, saveEvery: 1, lr: 1e-2)
        change(&config)
        let trainer = try Trainer(pipeline: pipeline, original: TextEncoders(original), modelFolder: tinySD15, rewards: rewards,
                                  data: .prompts(try smallRunPrompts()), config: config, run: RunFolder(out))
        if let spec = config.earlyStop {
            trainer.heldOut = try HeldOutEvaluator(prompts: ["a yellow star", "a blue square on red"], signal: try EarlyStopSignal(spec: spec))
        }
        return trainer
    }

    /// metrics.jsonl's lines as objects, without the wall-clock `step_time`.
    func metrics(_ run: URL) throws -> [[String: Double]] {
        try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n").map { line in
            var object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            object["step_time"] = nil
            return object.compactMapValues { ($0 as? NSNumber)?.doubleValue }
        }
    }

    // MARK: proximity

    /// Before any update the trained encoder is its original: the term is exactly 0 and so is its gradient.
    @Test func proximityIsZeroAtTheStartWithNoGradient() throws {
        let (pipeline, trainable, original, _) = try tinySetup()
        let value = proximityTerm(pipeline: pipeline, trainable: TextEncoders(trainable), original: TextEncoders(original),
                                  prompts: fixturePrompts, height: 64, width: 64, weight: 3)
        #expect(value == 0)
        for (name, gradient) in gradients(trainable) { #expect(gradient.square().sum().item() == 0, "\(name)") }
    }

    /// Adding d to the final layer norm's bias moves every hidden state by d: the term is mean(d²), and the bias's
    /// gradient of W·term is W·2d/D (the mean runs over B·77·D numbers, B·77 of which share each entry of d).
    @Test func proximityAfterAPerturbationMatchesTheHandComputation() throws {
        let (pipeline, trainable, original, _) = try tinySetup()
        let bias = try #require(trainable.namedParameters.first { $0.name.hasSuffix("final_layer_norm.bias") }?.tensor)
        let width = bias.size(0)
        let d = Tensor.randn([width], generator: Generator(seed: 11)) * 0.05
        withNoGrad { bias.copy_(bias + d) }
        let weight = 3.0
        let value = proximityTerm(pipeline: pipeline, trainable: TextEncoders(trainable), original: TextEncoders(original),
                                  prompts: fixturePrompts, height: 64, width: 64, weight: weight)
        let expected = d.to(.float64).square().mean().item()
        #expect(abs(value - expected) <= 1e-4 * expected, "\(value) against \(expected)")
        let gradient = try #require(bias.grad).to(.float64).toArray(Double.self)
        let hand = (d.to(.float64) * (2 * weight / Double(width))).toArray(Double.self)
        for (g, h) in zip(gradient, hand) { #expect(abs(g - h) <= 1e-4 * abs(h) + 1e-9, "\(g) against \(h)") }
        // W = 0 measures without a gradient.
        trainable.parameters.forEach { $0.grad = nil }
        #expect(abs(proximityTerm(pipeline: pipeline, trainable: TextEncoders(trainable), original: TextEncoders(original),
                                  prompts: fixturePrompts, height: 64, width: 64, weight: 0) - expected) <= 1e-4 * expected)
        #expect(bias.grad == nil)
    }

    /// SDXL: scaling text_encoder_2's projection by 1 + ε leaves the hidden states as they were and moves the pooled
    /// embeddings by ε times themselves, so the term is ε² mean(pooled²); the first encoder's gradient is 0.
    @Test func proximityOnSDXLCountsThePooledEmbeddings() throws {
        let (pipeline, original, _) = try tinySDXLSetup()
        let trainable = TextEncoders(of: pipeline)
        func term() -> Double {
            proximityTerm(pipeline: pipeline, trainable: trainable, original: original, prompts: fixturePrompts, height: 64, width: 64, weight: 1)
        }
        #expect(term() == 0)
        let projection = try #require(pipeline.textEncoder2!.namedParameters.first { $0.name == "text_projection.weight" }?.tensor)
        let epsilon = 0.01
        withNoGrad { projection.copy_(projection * (1 + epsilon)) }
        clearGradients(pipeline)
        let value = term()
        let tokens = pipeline.promptTokens(fixturePrompts)
        let pooled = withNoGrad {
            pipeline.encode(tokens, textEncoder: original.first, textEncoder2: original.second, sizes: SizeConditioning(height: 64, width: 64))
        }.textEmbeds!
        let expected = epsilon * epsilon * pooled.to(.float64).square().mean().item()
        #expect(abs(value - expected) <= 1e-3 * expected, "\(value) against \(expected)")
        let grads = sdxlGradients(pipeline)
        #expect(grads.filter { $0.key.hasPrefix("text_encoder.") }.allSatisfy { $0.value.square().sum().item() == 0 })
        #expect(grads["text_encoder_2.text_projection.weight"]!.square().sum().item() > 0)
    }

    /// A reward token's original is the token reading its initial rows, the init word's: the penalty is 0 at the start
    /// and, after the rows move, the MSE against the prompts with the init word written out in the token's place.
    @Test func proximityOfARewardTokenIsAgainstTheInitWord() throws {
        let (pipeline, _, _, _) = try tinySetup()
        let adapter = try TokenAdapter(pipeline: pipeline, token: "<aes>", initWord: "red", vectors: 2, train: .textEncoder)
        let encoders = TextEncoders(of: pipeline)
        let prompts = ["a circle", "two squares"].map(adapter.prompt)
        func term(_ weight: Double) -> Double {
            proximityTerm(pipeline: pipeline, trainable: encoders, original: encoders, prompts: prompts, height: 64, width: 64,
                          weight: weight, tokenAdapter: adapter)
        }
        #expect(term(1) == 0)
        #expect((adapter.first.grad?.square().sum().item() ?? 0) == 0)
        withNoGrad { adapter.first.copy_(adapter.first + Tensor.randn(adapter.first.shape, generator: Generator(seed: 2)) * 0.1) }
        adapter.first.grad = nil
        let value = term(2)
        func hidden(_ texts: [String]) -> Tensor {
            withNoGrad { pipeline.encode(pipeline.promptTokens(texts), textEncoder: pipeline.textEncoder, textEncoder2: nil, sizes: nil).hiddenStates }
        }
        let expected = (hidden(prompts) - hidden(["a circle, red red", "two squares, red red"])).to(.float64).square().mean().item()
        #expect(value > 0 && abs(value - expected) <= 1e-6 * expected, "\(value) against \(expected)")
        #expect(try #require(adapter.first.grad).square().sum().item() > 0)
        #expect(pipeline.textEncoder.addedTokenEmbeddings === adapter.first, "the swap is undone")
    }

    /// In a run: `proximity` is 0 at step 1 (the weights are still the original's), positive after, and the loss
    /// carries W times it.
    @Test func proximityIsLoggedAndWeighted() throws {
        let plain = temporaryRun(), guarded = temporaryRun()
        defer { [plain, guarded].forEach { try? FileManager.default.removeItem(at: $0) } }
        try guardedTrainer(plain, maxSteps: 1) { _ in }.train()
        try guardedTrainer(guarded, maxSteps: 3) { $0.proximityWeight = 1000 }.train()
        let (a, b) = (try metrics(plain), try metrics(guarded))
        #expect(b.map { $0["proximity"] != nil } == [true, true, true])
        #expect(b[0]["proximity"] == 0)
        #expect(b[0]["loss"] == a[0]["loss"], "step 1 is the same step: the penalty is 0 there")
        #expect(b[1]["proximity"]! > 0 && b[2]["proximity"]! > 0)
        #expect(a[0]["proximity"] == nil, "off by default")
    }

    // MARK: random window

    @Test func windowDrawsAreReproducibleAndCoverTheRange() {
        let draws = (0..<300).map { WindowDraw.length(seed: 7, step: $0, maximum: 5) }
        #expect(draws == (0..<300).map { WindowDraw.length(seed: 7, step: $0, maximum: 5) })
        #expect(Set(draws) == Set(1...5))
        let counts = Dictionary(grouping: draws, by: { $0 }).mapValues(\.count)
        #expect(counts.values.allSatisfy { $0 > 30 }, "about 60 each: \(counts)")
        #expect(draws != (0..<300).map { WindowDraw.length(seed: 8, step: $0, maximum: 5) })
        #expect((0..<50).allSatisfy { WindowDraw.length(seed: 7, step: $0, maximum: 1) == 1 })
    }

    /// The run logs the drawn windows; stopped after 2 steps and resumed, it draws the same ones and ends with the
    /// same weights.
    @Test func randomWindowsSurviveAResume() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        func change(_ c: inout TrainingConfig) {
            c.randomWindow = true
            c.gradientWindow = 3
        }
        let a = try guardedTrainer(straight, maxSteps: 4, change: change)
        try a.train()
        let windows = try metrics(straight).map { Int($0["grad_window"]!) }
        #expect(windows == (0..<4).map { WindowDraw.length(seed: 7, step: $0, maximum: 3) })
        #expect(Set(windows).count > 1, "\(windows)")

        let first = try guardedTrainer(resumed, maxSteps: 4, change: change)
        let stopAt = StopFlag(after: 2)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        let second = try guardedTrainer(resumed, maxSteps: 4, change: change)
        try second.resume()
        #expect(second.step == 2)
        try second.train()
        #expect(try metrics(resumed) == metrics(straight))
        for ((name, x), (_, y)) in zip(a.trainedModules[0].namedParameters, second.trainedModules[0].namedParameters) {
            #expect(x.toArray(Float.self) == y.toArray(Float.self), "\(name)")
        }
    }

    // MARK: early stopping

    /// A scripted signal: best at the 2nd evaluation, patience 3, so the 5th stops.
    @Test func earlyStoppingStopsAfterPatienceEvaluationsWithoutImprovement() throws {
        var stopping = EarlyStopping(patience: 3)
        let script: [(step: Int, value: Double)] = [(0, 1.0), (10, 2.0), (20, 1.5), (30, 2.0), (40, .nan), (50, 9.0)]
        var improved: [Bool] = []
        for (step, value) in script where !stopping.stopped { improved.append(stopping.record(value, step: step)) }
        #expect(improved == [true, true, false, false, false])
        #expect(stopping.stopped)
        #expect(stopping.best == 2.0 && stopping.bestStep == 10 && stopping.sinceBest == 3)
        // An improvement resets the count.
        var patient = EarlyStopping(patience: 2)
        for (step, value) in [(1, 1.0), (2, 0.5), (3, 1.2), (4, 1.1)] { patient.record(value, step: step) }
        #expect(!patient.stopped && patient.bestStep == 3 && patient.sinceBest == 1)
        // It survives state.json.
        var state = TrainingState(step: 50, promptCursor: Data(), seed: 1)
        state.earlyStopping = stopping
        #expect(try JSONDecoder().decode(TrainingState.self, from: JSONEncoder().encode(state)).earlyStopping == stopping)
    }

    /// A run with early stopping every step: held_out at step 0 and each step, OUT/best/ at the best one, stopping
    /// where the recorded values say; a run stopped after 2 steps and resumed keeps the count and ends the same.
    @Test func earlyStoppingInARunAndAcrossAResume() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let clip = tinyRewards.appendingPathComponent("clip").path
        func change(_ c: inout TrainingConfig) {
            c.earlyStop = "clip=\(clip)"
            c.earlyStopEvery = 1
            c.earlyStopPatience = 2
            c.learningRate = 5e-2
        }
        let a = try guardedTrainer(straight, maxSteps: 8, change: change)
        try a.train()
        let lines = try metrics(straight)
        #expect(lines[0].keys.sorted() == ["held_out", "step"] && lines[0]["step"] == 0)
        // Replaying the logged values gives the trainer's decisions.
        var replay = EarlyStopping(patience: 2)
        for line in lines where !replay.stopped { replay.record(line["held_out"]!, step: Int(line["step"]!)) }
        var state = try #require(a.earlyStopping)
        #expect(abs(state.best! - replay.best!) <= 1e-12 * abs(replay.best!), "metrics.jsonl keeps the value to about 1e-16")
        state.best = replay.best
        #expect(state == replay)
        #expect(a.step == (replay.stopped ? Int(lines.last!["step"]!) : 8))
        let best = try JSONSerialization.jsonObject(with: Data(contentsOf: straight.appendingPathComponent("best/best.json"))) as! [String: Any]
        #expect(best["step"] as? Int == state.bestStep && best["signal"] as? String == "clip")
        #expect(abs((best["held_out"] as? Double ?? 0) - state.best!) <= 1e-12 * abs(state.best!))
        #expect(FileManager.default.fileExists(atPath: straight.appendingPathComponent("best/text_encoder/model.safetensors").path))

        let first = try guardedTrainer(resumed, maxSteps: 8, change: change)
        let stopAt = StopFlag(after: 2)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        #expect(first.step == 2)
        let second = try guardedTrainer(resumed, maxSteps: 8, change: change)
        try second.resume()
        #expect(second.earlyStopping == first.earlyStopping)
        try second.train()
        #expect(second.earlyStopping == a.earlyStopping)
        #expect(second.step == a.step)
        #expect(try metrics(resumed) == lines)
        #expect(try Data(contentsOf: resumed.appendingPathComponent("best/text_encoder/model.safetensors"))
            == Data(contentsOf: straight.appendingPathComponent("best/text_encoder/model.safetensors")))
        // A stopped run, resumed, does not go on.
        if state.stopped {
            let third = try guardedTrainer(straight, maxSteps: 8, change: change)
            try third.resume()
            try third.train()
            #expect(third.step == a.step)
        }
    }

    @Test func theDefaultSplitHoldsOutEveryTenthPrompt() throws {
        let prompts = (1...25).map { "prompt \($0)" }
        let split = try heldOutSplit(prompts, heldOutFile: nil, column: "prompt")
        #expect(split.heldOut == ["prompt 10", "prompt 20"])
        #expect(split.train.count == 23 && !split.train.contains("prompt 10"))
        #expect(try heldOutSplit((1...400).map { "p\($0)" }, heldOutFile: nil, column: "prompt").heldOut.count == 32)
        #expect(message { try heldOutSplit(Array(prompts.prefix(9)), heldOutFile: nil, column: "prompt") }
            == "held_out_prompts: early stopping holds out every tenth prompt, and the prompt file has 9: give held-out prompts")
    }

    // MARK: settings

    @Test func badSettingsAreOneLineErrors() {
        let cases: [((inout TrainingConfig) -> Void, String)] = [
            ({ (c: inout TrainingConfig) in c.proximityWeight = -1 }, "proximity_weight: expected a number >= 0, found -1.0"),
            ({ (c: inout TrainingConfig) in c.proximityWeight = .infinity }, "proximity_weight: expected a number >= 0, found inf"),
            ({ (c: inout TrainingConfig) in c.proximityWeight = 1; c.train = .unet },
             "proximity_weight: the UNet stage trains no text encoder: there is no embedding to keep close"),
            ({ (c: inout TrainingConfig) in c.earlyStopEvery = 0 }, "early_stop_every: expected an integer >= 1, found 0"),
            ({ (c: inout TrainingConfig) in c.earlyStopPatience = 0 }, "early_stop_patience: expected an integer >= 1, found 0"),
            ({ (c: inout TrainingConfig) in c.earlyStop = "vibes=/x" },
             "early_stop: unknown reward \"vibes\" (known: aesthetic, pickscore, hpsv2, clip, hpsv2.1, aesthetic25, imagereward, oracle)"),
            ({ (c: inout TrainingConfig) in c.earlyStop = "clip" }, "early_stop: clip: expected NAME=PATH (a reward that is not trained) or oracle"),
            ({ (c: inout TrainingConfig) in c.earlyStop = "clip=" }, "early_stop: clip=: no path given"),
            ({ (c: inout TrainingConfig) in c.earlyStop = "aesthetic=/a,/b"; c.rewards = [RewardOption(name: "aesthetic", paths: ["/a", "/b"])] },
             "early_stop: aesthetic is a trained reward: early stopping needs a signal the run does not optimise (e.g. clip when training aesthetic)"),
            ({ (c: inout TrainingConfig) in c.earlyStop = "oracle"; c.mode = .direct },
             "held_out_prompts: direct mode has no prompt file to hold prompts out of: give one"),
        ]
        for (change, expected) in cases {
            var config = TrainingConfig()
            change(&config)
            #expect(message { try config.validate() } == expected)
        }
    }

    /// A run.json written before these keys existed still resumes, with their defaults.
    @Test func anOlderRecordStillReads() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var config = TrainingConfig()
        config.maxSteps = 7
        var record = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as! [String: Any]
        for key in ["proximityWeight", "randomWindow", "earlyStopEvery", "earlyStopPatience"] { record[key] = nil }
        try JSONSerialization.data(withJSONObject: record).write(to: folder.appendingPathComponent("run.json"))
        #expect(try TrainingSession.recordedConfig(in: folder) == config)
    }

    @Test func settingsFromAFile() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("run.toml")
        try """
            proximity_weight = 2.5
            random_window = true
            early_stop = "clip=rewards/clip"
            early_stop_every = 20
            early_stop_patience = 4
            held_out_prompts = "held.txt"
            """.write(to: file, atomically: true, encoding: .utf8)
        let config: TrainingConfig = try ConfigFile.load(file)
        #expect(config.proximityWeight == 2.5 && config.randomWindow && config.earlyStopEvery == 20 && config.earlyStopPatience == 4)
        #expect(config.earlyStop == "clip=" + folder.appendingPathComponent("rewards/clip").standardizedFileURL.path)
        #expect(config.heldOutPrompts == folder.appendingPathComponent("held.txt").standardizedFileURL.path)
        try config.validate()
    }
}
