import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

@Suite struct CLIPTextModelTests {
    func load(_ model: TinySD, file: String, dtype: DType? = nil) throws -> CLIPTextModel {
        let folder = model.folder.appendingPathComponent("text_encoder")
        return try CLIPTextModel.load(
            try Weights.open(folder.appendingPathComponent(file)), configFile: folder.appendingPathComponent("config.json"),
            dtype: dtype)
    }

    /// sd15: quick_gelu, safetensors, pooled at argmax (eos_token_id 2); sd2: gelu, a torch.save .bin, pooled at
    /// the first eos with "!" padding.
    @Test(arguments: [(TinySD.sd15, "model.safetensors"), (TinySD.sd2, "pytorch_model.bin")])
    func matchesTransformers(model: TinySD, file: String) throws {
        let encoder = try load(model, file: file)
        let out = encoder(try model.output("text.input_ids"), outputHiddenStates: true)
        #expect(maxAbsDifference(out.lastHiddenState, try model.output("text.last_hidden_state")) < 1e-5)
        #expect(maxAbsDifference(out.pooledOutput, try model.output("text.pooler_output")) < 1e-5)
        #expect(out.hiddenStates?.count == 4)
        for (i, state) in (out.hiddenStates ?? []).enumerated() {
            #expect(maxAbsDifference(state, try model.output("text.hidden_states.\(i)")) < 1e-5, "hidden state \(i)")
        }
    }

    @Test func fp16VariantLoadsAndUpcasts() throws {
        let full = try load(.sd15, file: "model.safetensors")
        let half = try load(.sd15, file: "model.fp16.safetensors", dtype: .float32)
        #expect(half.namedParameters.allSatisfy { $0.tensor.dtype == .float32 })
        let ids = try TinySD.sd15.output("text.input_ids")
        let difference = maxAbsDifference(half(ids).lastHiddenState, full(ids).lastHiddenState)
        #expect(difference > 0 && difference < 2e-2, "fp16 weights change the output by \(difference)")
    }

    @Test func parametersKeepTheCheckpointNamesAndTrain() throws {
        let encoder = try load(.sd15, file: "model.safetensors")
        let names = encoder.namedParameters.map(\.name)
        #expect(names.first == "text_model.embeddings.token_embedding.weight")
        #expect(names.contains("text_model.encoder.layers.2.mlp.fc2.bias"))
        #expect(names.last == "text_model.final_layer_norm.bias")
        encoder.setTrainable(true)
        let ids = try TinySD.sd15.output("text.input_ids")
        encoder(ids).lastHiddenState.square().mean().backward()
        #expect(encoder.trainableParameters.allSatisfy { $0.grad != nil })
    }

    @Test func unknownActivationIsAClearError() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = TinySD.sd15.folder.appendingPathComponent("text_encoder")
        var json = try String(contentsOf: source.appendingPathComponent("config.json"), encoding: .utf8)
        json = json.replacingOccurrences(of: "\"quick_gelu\"", with: "\"swish9\"")
        let config = folder.appendingPathComponent("config.json")
        try json.write(to: config, atomically: true, encoding: .utf8)
        #expect(throws: StableDiffusionError.unsupported(file: config.path, key: "hidden_act", value: "swish9",
                                                         supported: CLIPTextConfig.activations)) {
            try CLIPTextModel.load(try Weights.open(source.appendingPathComponent("model.safetensors")), configFile: config)
        }
    }
}
