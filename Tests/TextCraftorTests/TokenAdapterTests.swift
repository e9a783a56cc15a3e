import Foundation
import NN
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

/// `adapter token`: one new token's rows train against the rewards, nothing else moves, and resume is exact.
@Suite(.serialized) struct TokenAdapterTests {
    func tokenConfig(maxSteps: Int) -> TrainingConfig {
        var config = smallRunConfig(maxSteps: maxSteps, saveEvery: 1, lr: 1e-2)
        config.adapter = .token
        config.token = "<aes>"
        config.initWord = "red"
        config.vectors = 2
        return config
    }

    func makeTokenTrainer(_ out: URL, maxSteps: Int) throws -> Trainer {
        let (pipeline, _, _, rewards) = try tinySetup()
        return try Trainer(pipeline: pipeline, original: TextEncoders(of: pipeline), modelFolder: tinySD15, rewards: rewards,
                           data: .prompts(try smallRunPrompts()), config: tokenConfig(maxSteps: maxSteps), run: RunFolder(out))
    }

    @Test func oneStepMovesOnlyTheTokenRows() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let trainer = try makeTokenTrainer(out, maxSteps: 1)
        let pipeline = trainer.pipeline
        let modules: [any Module] = [pipeline.textEncoder, pipeline.unet, pipeline.vae]
        let before = modules.flatMap { $0.namedParameters.map { ($0.name, $0.tensor.toArray(Float.self)) } }
        let adapter = try #require(trainer.tokenAdapter)
        let initial = adapter.first.toArray(Float.self)
        let red = try pipeline.tokenRows(of: "red").first.toArray(Float.self)
        #expect(initial == red + red)  // both vectors start as the init word's row
        try trainer.train()
        let after = modules.flatMap { $0.namedParameters.map { ($0.name, $0.tensor.toArray(Float.self)) } }
        #expect(before.count == after.count)
        for ((name, x), (_, y)) in zip(before, after) { #expect(x == y, "\(name) moved") }
        let moved = zip(adapter.first.toArray(Float.self), initial).map { abs($0 - $1) }.max()!
        #expect(moved > 1e-4, "the token rows did not move (\(moved))")
        // The optimizer holds the token's 2 x 32 values, nothing else.
        let state = trainer.optimizerState().tensors.values.filter { $0.rank > 0 }
        #expect(state.map { $0.shape }.allSatisfy { $0 == [2, 32] } && !state.isEmpty, "\(state.map(\.shape))")
        // The files the front ends load, the trained rows in each.
        let folder = out.appendingPathComponent("token")
        #expect(trainer.weightsFolders == [folder])
        for name in ["aes.safetensors", "aes.pt", "learned_embeds.safetensors"] {
            let file = try TokenEmbedding.read(folder.appendingPathComponent(name))
            #expect(file.first.toArray(Float.self) == adapter.first.toArray(Float.self), "\(name)")
        }
        #expect(try TokenEmbedding.read(folder.appendingPathComponent("learned_embeds.safetensors")).token == "<aes>")
        #expect(try TokenEmbedding.read(folder.appendingPathComponent("aes.pt")).token == "aes")
    }

    @Test func stoppedAndResumedTokenRunEndsBitIdentical() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let a = try makeTokenTrainer(straight, maxSteps: 4)
        try a.train()
        let first = try makeTokenTrainer(resumed, maxSteps: 4)
        let stopAt = StopFlag(after: 2)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        #expect(first.step == 2)
        let second = try makeTokenTrainer(resumed, maxSteps: 4)
        try second.resume()
        #expect(second.step == 2)
        #expect(second.tokenAdapter!.first.toArray(Float.self) == first.tokenAdapter!.first.toArray(Float.self))
        try second.train()
        #expect(a.tokenAdapter!.first.toArray(Float.self) == second.tokenAdapter!.first.toArray(Float.self))
        #expect(a.tokenAdapter!.first.toArray(Float.self) != first.tokenAdapter!.first.toArray(Float.self))
        let (stateA, metaA) = a.optimizerState(), (stateB, metaB) = second.optimizerState()
        #expect(metaA == metaB)
        for (key, t) in stateA { #expect(t.toArray(Float.self) == stateB[key]!.toArray(Float.self), "\(key)") }
    }

    /// SDXL: the token is in both encoders; --train text-encoder-2 trains its clip_g rows alone, and the run writes
    /// the clip_l/clip_g file and diffusers' two learned_embeds files.
    @Test func sdxlTrainsTheRowsTrainSelects() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let (pipeline, _, rewards) = try tinySDXLSetup()
        var config = tokenConfig(maxSteps: 1)
        config.train = .textEncoder2
        let trainer = try Trainer(pipeline: pipeline, original: TextEncoders(of: pipeline), modelFolder: tinySDXLFolder,
                                  rewards: rewards, data: .prompts(try smallRunPrompts()), config: config, run: RunFolder(out))
        let adapter = try #require(trainer.tokenAdapter)
        let (l, g) = (adapter.first.toArray(Float.self), adapter.second!.toArray(Float.self))
        let before = (pipeline.textEncoder2!.parameters + pipeline.textEncoder.parameters).map { $0.toArray(Float.self) }
        try trainer.train()
        #expect(adapter.first.toArray(Float.self) == l)  // clip_l's rows do not train
        #expect(adapter.second!.toArray(Float.self) != g)
        #expect((pipeline.textEncoder2!.parameters + pipeline.textEncoder.parameters).map { $0.toArray(Float.self) } == before)
        let folder = out.appendingPathComponent("token")
        let file = try TokenEmbedding.read(folder.appendingPathComponent("aes.safetensors"))
        #expect(file.format == .sdxl && file.first.shape == [2, 32] && file.second?.shape == [2, 48])
        #expect(file.second!.toArray(Float.self) == adapter.second!.toArray(Float.self))
        #expect(try TokenEmbedding.read(folder.appendingPathComponent("learned_embeds_2.safetensors")).first.shape == [2, 48])
        #expect(!FileManager.default.fileExists(atPath: folder.appendingPathComponent("aes.pt").path))
    }

    @Test func promptsGetTheTokenUnlessTheyNameIt() throws {
        let (pipeline, _, _, _) = try tinySetup()
        let adapter = try TokenAdapter(pipeline: pipeline, token: "<aes>", initWord: "red", vectors: 1, train: .textEncoder)
        #expect(adapter.prompt("a red circle") == "a red circle, <aes>")
        #expect(adapter.prompt("  a red circle ") == "a red circle, <aes>")
        #expect(adapter.prompt("<aes> a red circle") == "<aes> a red circle")
        #expect(adapter.prompt("") == "<aes>")
        #expect(adapter.stem == "aes")
    }

    @Test func settingsAreChecked() {
        func problem(_ change: (inout TrainingConfig) -> Void) -> String {
            var config = tokenConfig(maxSteps: 1)
            change(&config)
            do { try config.validate() } catch { return "\(error)" }
            return "valid"
        }
        #expect(problem { _ in } == "valid")
        #expect(problem { $0.adapter = .full } == "token: is for adapter token (add --adapter token)")
        #expect(problem { $0.initWord = nil } == "init_word: adapter token needs the word its rows start from, e.g. --init-word beautiful")
        #expect(problem { $0.token = "a b" } == "token: \"a b\" must be one word without whitespace")
        #expect(problem { $0.vectors = 0 } == "vectors: expected an integer >= 1, found 0")
        #expect(problem { $0.vectors = 76 } == "vectors: expected an integer <= 75, found 76")
        #expect(problem { $0.train = .unet } == "train: unet is the UNet stage; adapter token trains a token of the text encoder(s)")
    }
}
