import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion
@testable import TextCraftor

/// How a single file is read without a config folder: the published configs built in, and the prediction type from
/// the usual test; and the single-file layout at the real shapes (built on the meta device, so nothing is allocated).
@Suite struct ModelSourceTests {
    static let single = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/single")

    /// The published models' components at real shapes, written in the original layout and read back through the
    /// reader's maps with the built-in configs: every key placed, under the names the published files use.
    @Test(arguments: [(ModelPreset.sd15, SingleFileCheckpoint.Layout.sd1, 1131), (.sd21, .sd2, 1214), (.sdxl, .sdxl, 2514)])
    func thePublishedLayoutsAtRealShapes(preset: ModelPreset, layout: SingleFileCheckpoint.Layout, keys: Int) throws {
        let published = try ModelPreset.publishedConfigs(for: layout, vPrediction: layout == .sd2, inChannels: 4)
        let writer = SingleFileLayoutWriter(layout: layout)
        let configs = try ModelExport.Configs(published.folder, architecture: layout.architecture)
        var file = LazyWeights(origin: "meta")
        var components: [(name: String, weights: any WeightSource)] = []
        try preset.forEachComponent({ VarBuilder(shapesOn: .meta) }) { component in
            var weights = LazyWeights(origin: component.name)
            for (key, tensor) in component.module.stateDict() {
                weights.entries[key] = LazyWeights.Entry(dtype: tensor.dtype, shape: tensor.shape) { throw CancellationError() }
            }
            components.append((component.name, weights))
            for (key, entry) in try writer.originalWeights(component.name, weights, unet: configs.unet, vae: configs.vae).entries {
                #expect(file.entries[key] == nil, "\(key) twice")
                file.entries[key] = entry
            }
        }
        try SingleFileCheckpoint.verifyRoundTrip(file, url: URL(fileURLWithPath: "/meta.safetensors"), expected: components,
                                                 unet: configs.unet, vae: configs.vae, text: configs.text, text2: configs.text2)
        #expect(file.entries.count == keys)
        // Names and shapes as the published files hold them.
        var expected: [String: [Int]] = [
            "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3], "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
            "model.diffusion_model.time_embed.0.weight": [1280, 320], "first_stage_model.decoder.mid.attn_1.q.weight": [512, 512, 1, 1],
            "first_stage_model.encoder.down.3.block.1.conv2.weight": [512, 512, 3, 3],
            "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": [128, 256, 1, 1],
        ]
        switch layout {
        case .sd1:
            expected["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"] = [768, 3072]
            expected["model.diffusion_model.output_blocks.2.1.conv.weight"] = [1280, 1280, 3, 3]
            expected["model.diffusion_model.output_blocks.5.2.conv.weight"] = [1280, 1280, 3, 3]
            expected["model.diffusion_model.input_blocks.3.0.op.weight"] = [320, 320, 3, 3]
        case .sd2:
            expected["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"] = [3072, 1024]
            expected["cond_stage_model.model.positional_embedding"] = [77, 1024]
            expected["model.diffusion_model.input_blocks.1.1.proj_in.weight"] = [320, 320]
        case .sdxl:
            expected["conditioner.embedders.1.model.text_projection"] = [1280, 1280]
            expected["conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight"] = [5120, 1280]
            expected["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = [768]
            expected["model.diffusion_model.label_emb.0.0.weight"] = [1280, 2816]
            expected["model.diffusion_model.output_blocks.2.2.conv.weight"] = [1280, 1280, 3, 3]
            expected["model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight"] = [1280, 2048]
        }
        for (key, shape) in expected { #expect(file.entries[key]?.shape == shape, "\(key): \(file.entries[key]?.shape ?? [])") }
    }

    @Test func anSD2FileWithoutConfigsIsReadAsThePublishedModelOfItsPredictionType() throws {
        let file = Self.single.appendingPathComponent("tiny-sd2.safetensors")
        let source = try ModelSource(model: file.path, modelConfig: nil)
        // The tiny model's random norm varies little: the test says epsilon, so the 512 base model's configs.
        #expect(source.predictionType == "epsilon")
        #expect(source.publishedConfigs == "stable-diffusion-2-1-base")
        #expect(source.notes[2] == "prediction type epsilon (the usual SD 2.x test: standard deviation of model.diffusion_model.output_blocks.8.1.transformer_blocks.0.norm1.bias is 0.0280, <= 0.09)", "\(source.notes)")
        let scheduler = try decodeConfig(SchedulerConfig.self, from: source.folder.appendingPathComponent("scheduler/scheduler_config.json"))
        #expect(scheduler.predictionType == "epsilon" && scheduler.className == "PNDMScheduler")

        // A file whose last norm varies as a v-model's does (std 0.1), and one that carries a v_pred key.
        let weights = try Weights.open(file)
        var tensors: [String: Tensor] = [:]
        for key in weights.keys { tensors[key] = try weights.tensor(key) }
        let norm = "model.diffusion_model.output_blocks.8.1.transformer_blocks.0.norm1.bias"
        let width = tensors[norm]!.size(0)
        tensors[norm] = Tensor((0..<width).map { $0 % 2 == 0 ? Float(0.1) : -0.1 }, shape: [width])
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("model-source-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let v = folder.appendingPathComponent("v.safetensors")
        try Tensor.save(tensors, to: v)
        let vSource = try ModelSource(model: v.path, modelConfig: nil)
        #expect(vSource.predictionType == "v_prediction" && vSource.publishedConfigs == "stable-diffusion-2-1")
        #expect(vSource.notes[2].hasSuffix("is 0.1000, > 0.09)"), "\(vSource.notes)")
        let unet = try decodeConfig(UNet2DConditionConfig.self, from: vSource.folder.appendingPathComponent("unet/config.json"))
        #expect(unet.sample_size == 96)
        // The flag wins over the test.
        let flagged = try ModelSource(model: v.path, modelConfig: nil, predictionType: "epsilon")
        #expect(flagged.predictionType == "epsilon" && flagged.notes[2] == "prediction type epsilon (--prediction-type)")

        tensors[norm] = Tensor.zeros([width])
        tensors["v_pred"] = Tensor.zeros([0])
        let marked = folder.appendingPathComponent("marked.safetensors")
        try Tensor.save(tensors, to: marked)
        let markedSource = try ModelSource(model: marked.path, modelConfig: nil)
        #expect(markedSource.predictionType == "v_prediction" && markedSource.notes[2] == "prediction type v_prediction (the file has a v_pred key)")
    }
}
