import Foundation
import NN
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

func makeLoRATrainer(_ out: URL, maxSteps: Int, format: LoRAFormat = .kohya, dropout: Double = 0) throws -> Trainer {
    let (pipeline, _, original, rewards) = try tinySetup()
    var config = smallRunConfig(maxSteps: maxSteps, saveEvery: 1, lr: 1e-2)
    config.adapter = .lora
    config.lora.rank = 2
    config.lora.alpha = 4
    config.lora.format = format
    config.lora.dropout = dropout
    return try Trainer(pipeline: pipeline, original: TextEncoders(original), modelFolder: tinySD15, rewards: rewards,
                       data: .prompts(try smallRunPrompts()), config: config, run: RunFolder(out))
}

private func maxAbsDifference(_ a: Tensor, _ b: Tensor) -> Double { (a.to(.float64) - b.to(.float64)).abs().max().item() }

@Suite(.serialized) struct LoRATrainingTests {
    /// Only the adapters train: AdamW holds their tensors (2 per targeted layer), the encoder's weights do not move,
    /// the adapters' up weights do, and OUT/lora.safetensors has kohya's names, alpha and metadata, in float16.
    @Test func onlyTheAdaptersTrainAndTheFileIsKohyas() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let trainer = try makeLoRATrainer(out, maxSteps: 2)
        let before = trainer.pipeline.textEncoder.stateDict().mapValues { $0.clone() }
        #expect(trainer.trainedModules.isEmpty)
        #expect(trainer.adapters[0].parameters.count == 3 * 6 * 2)
        #expect(trainer.pipeline.textEncoder.trainableParameters.isEmpty)
        try trainer.train()
        for (name, tensor) in trainer.pipeline.textEncoder.stateDict() {
            #expect(maxAbsDifference(tensor, before[name]!) == 0, "\(name) moved")
        }
        let lora = (trainer.adapters[0] as! LoRARun).network
        #expect(lora.entries.allSatisfy { $0.adapter.up.abs().max().item() > 0 }, "every up weight trained")
        #expect(trainer.weightsFolders.map(\.lastPathComponent) == ["lora.safetensors"])
        let file = try SafeTensorsFile(url: out.appendingPathComponent("lora.safetensors"))
        #expect(file.names.count == 3 * 6 * 3)
        #expect(file.info("lora_te_text_model_encoder_layers_2_mlp_fc1.lora_down.weight")?.shape == [2, 32])
        #expect(file.info("lora_te_text_model_encoder_layers_2_mlp_fc1.lora_up.weight")?.dtype == .float16)
        #expect(try Tensor(file.tensorData("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha")).item() == 4)
        #expect(file.metadata["ss_network_module"] == "networks.lora")
        #expect(file.metadata["ss_network_dim"] == "2")
        #expect(file.metadata["ss_network_alpha"] == "4.0")
        #expect(file.metadata["ss_base_model_version"] == "sd_v1")
        #expect(file.metadata["modelspec.architecture"] == "stable-diffusion-v1/lora")
        #expect(file.metadata["modelspec.sai_model_spec"] == "1.0.0")
        // The checkpoint keeps the adapters in float32.
        let checkpoint = try RunFolder(out).latestCheckpoint().appendingPathComponent("lora.safetensors")
        #expect(try SafeTensorsFile(url: checkpoint).info("lora_te_text_model_encoder_layers_2_mlp_fc1.lora_up.weight")?.dtype == .float32)
    }

    /// Stopped after 2 steps and resumed by a new trainer, a LoRA run ends with the adapters and AdamW state of a
    /// straight run, bit for bit, dropout masks included (drawn from the run's LoRA generator, kept in checkpoints).
    @Test func stoppedAndResumedLoRARunEndsBitIdentical() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        defer { [straight, resumed].forEach { try? FileManager.default.removeItem(at: $0) } }
        let a = try makeLoRATrainer(straight, maxSteps: 4, dropout: 0.2)
        try a.train()
        let first = try makeLoRATrainer(resumed, maxSteps: 4, dropout: 0.2)
        let stopAt = StopFlag(after: 2)
        first.stopRequested = { stopAt.shouldStop() }
        try first.train { _ in stopAt.count() }
        #expect(first.step == 2)
        let second = try makeLoRATrainer(resumed, maxSteps: 4, dropout: 0.2)
        try second.resume()
        #expect(second.step == 2)
        try second.train()
        for (x, y) in zip(a.adapters[0].parameters, second.adapters[0].parameters) {
            #expect(x.toArray(Float.self) == y.toArray(Float.self))
        }
        let (stateA, metaA) = a.optimizerState(), (stateB, metaB) = second.optimizerState()
        #expect(metaA == metaB)
        #expect(stateA.count == 3 * 6 * 2 * 2)
        for (key, t) in stateA { #expect(t.toArray(Float.self) == stateB[key]!.toArray(Float.self), "\(key)") }
    }

    /// PEFT names, with alpha/rank folded into lora_B; `generate --lora` of that file gives the trained adapters'
    /// embeddings (float16 rounding only).
    @Test func peftFileGivesTheTrainedEmbeddings() throws {
        let out = temporaryRun()
        defer { try? FileManager.default.removeItem(at: out) }
        let trainer = try makeLoRATrainer(out, maxSteps: 1, format: .peft)
        try trainer.train()
        let file = try SafeTensorsFile(url: out.appendingPathComponent("lora.safetensors"))
        #expect(file.names.count == 3 * 6 * 2)
        #expect(file.info("text_encoder.text_model.encoder.layers.1.self_attn.out_proj.lora_B.weight")?.shape == [32, 2])
        let pipeline = trainer.pipeline
        let trained = withNoGrad { pipeline.encode(fixturePrompts) }
        let fresh = try StableDiffusionPipeline.load(folder: tinySD15)
        try fresh.mergeLoRAs([LoRASpec(path: out.appendingPathComponent("lora.safetensors").path)])
        let merged = withNoGrad { fresh.encode(fixturePrompts) }
        let base = withNoGrad { try! StableDiffusionPipeline.load(folder: tinySD15).encode(fixturePrompts) }
        #expect(maxAbsDifference(merged, trained) < 2e-3 * maxAbsDifference(trained, base) + 1e-6)
        #expect(maxAbsDifference(trained, base) > 0)
    }

    /// A run.json written before `adapter` existed still decodes (full training); LoRA keys are checked.
    @Test func olderRunRecordsDecodeAndLoRAKeysAreChecked() throws {
        var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig())) as! [String: Any]
        object["adapter"] = nil
        object["lora"] = nil
        let config = try JSONDecoder().decode(TrainingConfig.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(config.adapter == .full)
        #expect(config.lora == LoRASettings())
        var bad = TrainingConfig()
        bad.lora.targets = ["q_proj,to_q"]
        #expect(throws: TextCraftorError.invalidSetting(
            key: "lora_targets", message: "\"to_q\" is not one of q_proj, k_proj, v_proj, out_proj, fc1, fc2")) { try bad.validate() }
        bad = TrainingConfig()
        bad.adapter = .lora
        bad.train = .unet
        #expect(throws: TextCraftorError.invalidSetting(
            key: "adapter", message: "lora trains text encoders: use --adapter full with --train unet")) { try bad.validate() }
    }
}
