import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

@Suite struct UNet2DConditionModelTests {
    func unet(_ model: TinySD) throws -> UNet2DConditionModel {
        try UNet2DConditionModel.load(folder: model.folder.appendingPathComponent("unet"))
    }

    /// sd15: 1x1-conv proj_in/out, 4 heads everywhere; sd2: linear proj_in/out, heads [2, 4, 4], upcast_attention.
    @Test(arguments: TinySD.allCases)
    func forwardMatchesDiffusers(model: TinySD) throws {
        let unet = try unet(model)
        let out = withNoGrad {
            unet(
                try! model.output("unet.sample"), timestep: try! model.output("unet.timesteps"),
                encoderHiddenStates: try! model.output("unet.context"))
        }
        let expected = try model.output("unet.out")
        #expect(out.shape == [2, 4, 8, 8])
        let error = maxAbsDifference(out, expected)
        print("UNet \(model): max |out - diffusers| = \(error), max |diffusers| = \(expected.abs().max().item())")
        #expect(error < 1e-4)
    }

    @Test(arguments: TinySD.allCases)
    func gradientWithRespectToTheTextMatchesDiffusers(model: TinySD) throws {
        let unet = try unet(model)
        let context = try model.output("unet.context").requiringGrad()
        let out = unet(try model.output("unet.sample"), timestep: try model.output("unet.timesteps"), encoderHiddenStates: context)
        let loss = (out * (try model.output("unet.w"))).sum()
        let grad = Autograd.grad(outputs: [loss], inputs: [context])[0]!
        let expected = try model.output("unet.grad_context")
        let error = maxAbsDifference(grad, expected)
        let scale = expected.abs().max().item()
        print("UNet \(model): max |grad - diffusers| = \(error), max |diffusers grad| = \(scale)")
        #expect(error < 1e-4 * scale)  // relative: the gradients are ~6e-3 here
        #expect(unet.trainableParameters.isEmpty)  // frozen weights; the gradient flows only to the text
    }

    /// The gradient with respect to the sample, against fingerprints of diffusers' (sum, sum of |g|, max |g|, one
    /// element), computed with /work/pyref (diffusers 0.39) on the fixture inputs: torch.autograd.grad of
    /// sum(unet(sample, timesteps, context) * w) with respect to sample.
    @Test(arguments: [
        (TinySD.sd15, [-8.977704048156738, 214.50401306152344, 1.989387035369873, -0.0039043615106493235]),
        (TinySD.sd2, [1.0806710720062256, 279.01312255859375, 3.157508373260498, 0.6079463958740234]),
    ])
    func gradientWithRespectToTheSampleMatchesDiffusers(model: TinySD, expected: [Double]) throws {
        let unet = try unet(model)
        let sample = try model.output("unet.sample").requiringGrad()
        let out = unet(sample, timestep: try model.output("unet.timesteps"), encoderHiddenStates: try model.output("unet.context"))
        let grad = Autograd.grad(outputs: [(out * (try model.output("unet.w"))).sum()], inputs: [sample])[0]!
        let found = [grad.sum().item(), grad.abs().sum().item(), grad.abs().max().item(), grad[1][2][3][4].item()]
        print("UNet \(model): sample gradient fingerprint \(found), diffusers \(expected)")
        for (a, b) in zip(found, expected) { #expect(abs(a - b) < 1e-4 * max(abs(b), 1)) }
    }

    /// A 10x6 sample does not halve evenly twice (10 -> 5 -> 3): the up path takes each size from the skip connection
    /// (diffusers' `upsample_size`). Fingerprints (sum, sum of |out|, out[0,1,9,5], out[0,3,4,0]) from diffusers with
    /// sample = torch.randn(1, 4, 10, 6, generator=torch.Generator().manual_seed(3)), timestep torch.tensor(500.5)
    /// (a fractional scalar), context = the fixture's unet.context[:1].
    @Test(arguments: [
        (TinySD.sd15, [-9.155170440673828, 81.16947174072266, 0.3364722728729248, 0.396199494600296]),
        (TinySD.sd2, [-4.596687316894531, 77.30620574951172, -0.1900033950805664, -0.3442634344100952]),
    ])
    func oddSizesAndAScalarTimestepMatchDiffusers(model: TinySD, expected: [Double]) throws {
        let unet = try unet(model)
        let sample = Tensor.randn([1, 4, 10, 6], generator: Generator(seed: 3))
        let context = try model.output("unet.context").slice(dim: 0, end: 1)
        let out = withNoGrad { unet(sample, timestep: Tensor(scalar: Float(500.5)), encoderHiddenStates: context) }
        #expect(out.shape == [1, 4, 10, 6])
        let found = [out.sum().item(), out.abs().sum().item(), out[0][1][9][5].item(), out[0][3][4][0].item()]
        print("UNet \(model): odd-size fingerprint \(found), diffusers \(expected)")
        for (a, b) in zip(found, expected) { #expect(abs(a - b) < 1e-4 * max(abs(b), 1)) }
    }

    @Test func parametersKeepDiffusersNames() throws {
        let unet = try unet(.sd2)
        let names = Set(unet.namedParameters.map(\.name))
        let source = try Weights.open(TinySD.sd2.folder.appendingPathComponent("unet"))
        #expect(names == Set(source.keys))
        #expect(names.contains("down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight"))
        #expect(names.contains("up_blocks.0.upsamplers.0.conv.weight"))
        #expect(names.contains("mid_block.attentions.0.proj_in.weight"))
        #expect(unet.config.attention_head_dim == .each([2, 4, 4]))
    }

    // MARK: what a user can get wrong

    /// A copy of tiny-sd15's unet folder with `edit` applied to its config and `weights` as its tensors.
    func modifiedUNet(
        config edit: (inout [String: Any]) -> Void = { _ in }, weights: (inout [String: Tensor]) -> Void = { _ in }
    ) throws -> URL {
        let source = TinySD.sd15.folder.appendingPathComponent("unet")
        let folder = try temporaryFolder("unet").appendingPathComponent("unet")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let data = try Data(contentsOf: source.appendingPathComponent("config.json"))
        var json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        edit(&json)
        try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
            .write(to: folder.appendingPathComponent("config.json"))
        var tensors = try Tensor.load(safetensors: source.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        weights(&tensors)
        try Tensor.save(tensors, to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        return folder
    }

    @Test func unsupportedConfigValuesNameTheFileTheKeyAndWhatIsSupported() throws {
        let blockType = try modifiedUNet(config: { $0["down_block_types"] = ["AttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"] })
        defer { try? FileManager.default.removeItem(at: blockType.deletingLastPathComponent()) }
        let config = blockType.appendingPathComponent("config.json").path
        do {
            _ = try UNet2DConditionModel.load(folder: blockType)
            Issue.record("an unsupported block type loaded")
        } catch {
            #expect("\(error)" == "\(config): down_block_types \"AttnDownBlock2D\" is not supported (supported: CrossAttnDownBlock2D, DownBlock2D)")
        }
        let classEmbedding = try modifiedUNet(config: { $0["class_embed_type"] = "timestep" })
        defer { try? FileManager.default.removeItem(at: classEmbedding.deletingLastPathComponent()) }
        #expect(throws: StableDiffusionError.unsupported(
            file: classEmbedding.appendingPathComponent("config.json").path, key: "class_embed_type", value: "timestep",
            supported: ["null"])) { try UNet2DConditionModel.load(folder: classEmbedding) }
        let lengths = try modifiedUNet(config: { $0["attention_head_dim"] = [2, 4] })
        defer { try? FileManager.default.removeItem(at: lengths.deletingLastPathComponent()) }
        #expect(throws: StableDiffusionError.invalidConfig(
            file: lengths.appendingPathComponent("config.json").path,
            message: "key \"attention_head_dim\" has 2 entries, down_block_types has 3")) {
            try UNet2DConditionModel.load(folder: lengths)
        }
    }

    @Test func absentKeysTakeDiffusersDefaults() throws {
        let folder = try modifiedUNet(config: { $0 = ["block_out_channels": [8, 16, 16], "down_block_types": $0["down_block_types"]!] })
        defer { try? FileManager.default.removeItem(at: folder.deletingLastPathComponent()) }
        let config = try decodeConfig(UNet2DConditionConfig.self, from: folder.appendingPathComponent("config.json"))
        #expect(config.attention_head_dim == .same(8))
        #expect(config.cross_attention_dim == .same(1280))
        #expect(config.up_block_types == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
        #expect(config.mid_block_type == "UNetMidBlock2DCrossAttn")
        #expect(config.norm_num_groups == 32 && config.norm_eps == 1e-5 && config.flip_sin_to_cos && config.freq_shift == 0)
        // Four up blocks for three down blocks: the lengths disagree.
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "config.json", message: "key \"up_block_types\" has 4 entries, down_block_types has 3")) {
            try config.validate(file: "config.json")
        }
    }

    @Test func weightsThatDoNotFitAreNamedWithTheirShapes() throws {
        func message(_ folder: URL) -> String {
            do {
                _ = try UNet2DConditionModel.load(folder: folder)
                return "loaded"
            } catch { return "\(error)" }
        }
        let missing = try modifiedUNet(weights: { $0["conv_in.bias"] = nil })
        let extra = try modifiedUNet(weights: { $0["conv_in.scale"] = Tensor.ones([8]) })
        let shape = try modifiedUNet(weights: { $0["mid_block.attentions.0.proj_out.weight"] = Tensor.zeros([16, 16]) })
        defer { for f in [missing, extra, shape] { try? FileManager.default.removeItem(at: f.deletingLastPathComponent()) } }
        func file(_ folder: URL) -> String { folder.appendingPathComponent("diffusion_pytorch_model.safetensors").path }
        #expect(message(missing) == "\(file(missing)) does not fit the model: 1 missing key: conv_in.bias [8]")
        #expect(message(extra) == "\(file(extra)) does not fit the model: 1 unused key: conv_in.scale")
        #expect(message(shape) == "\(file(shape)) does not fit the model: 'mid_block.attentions.0.proj_out.weight' has shape [16, 16] in the checkpoint, the model expects [16, 16, 1, 1]")
    }

    @Test func aMissingFolderOrWeightsFileIsNamed() throws {
        let root = try temporaryFolder("model")
        defer { try? FileManager.default.removeItem(at: root) }
        let absent = root.appendingPathComponent("unet")
        #expect(throws: StableDiffusionError.missingFile(absent.path)) { try UNet2DConditionModel.load(folder: absent) }
        try FileManager.default.createDirectory(at: absent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            at: TinySD.sd15.folder.appendingPathComponent("unet/config.json"), to: absent.appendingPathComponent("config.json"))
        do {
            _ = try UNet2DConditionModel.load(folder: absent, variant: "fp16")
            Issue.record("a folder without weights loaded")
        } catch {
            #expect("\(error)" == "\(absent.path): no weights file (looked for diffusion_pytorch_model.fp16.safetensors, diffusion_pytorch_model.safetensors, diffusion_pytorch_model.fp16.bin, diffusion_pytorch_model.bin)")
        }
    }

    @Test func fp16VariantIsPreferredAndCanBeUpcast() throws {
        let folder = try modifiedUNet()
        defer { try? FileManager.default.removeItem(at: folder.deletingLastPathComponent()) }
        let full = try Tensor.load(safetensors: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        try Tensor.save(full.mapValues { $0.to(.float16) }, to: folder.appendingPathComponent("diffusion_pytorch_model.fp16.safetensors"))
        let half = try UNet2DConditionModel.load(folder: folder, variant: "fp16")
        #expect(half.namedParameters.allSatisfy { $0.tensor.dtype == .float16 })
        let upcast = try UNet2DConditionModel.load(folder: folder, variant: "fp16", dtype: .float32)
        #expect(upcast.namedParameters.allSatisfy { $0.tensor.dtype == .float32 })
        let model = TinySD.sd15
        let out = withNoGrad {
            upcast(try! model.output("unet.sample"), timestep: try! model.output("unet.timesteps"),
                   encoderHiddenStates: try! model.output("unet.context"))
        }
        let difference = maxAbsDifference(out, try model.output("unet.out"))
        print("UNet fp16 weights, float32 compute: max |out - diffusers float32| = \(difference)")
        #expect(difference > 0 && difference < 1e-2)
    }
}

extension UNet2DConditionModelTests {
    /// Half precision runs end to end (sd2 has upcast_attention, so its attention runs in float32 inside).
    @Test(arguments: [(TinySD.sd15, DType.float16), (TinySD.sd2, DType.float16), (TinySD.sd2, DType.bfloat16)])
    func halfPrecisionStaysCloseToFloat32(model: TinySD, dtype: DType) throws {
        let unet = try UNet2DConditionModel.load(folder: model.folder.appendingPathComponent("unet"), dtype: dtype)
        let out = withNoGrad {
            unet(
                try! model.output("unet.sample").to(dtype), timestep: try! model.output("unet.timesteps"),
                encoderHiddenStates: try! model.output("unet.context").to(dtype))
        }
        #expect(out.dtype == dtype)
        let difference = maxAbsDifference(out, try model.output("unet.out"))
        print("UNet \(model) in \(dtype): max |out - diffusers float32| = \(difference)")
        #expect(difference < (dtype == .float16 ? 1e-2 : 1e-1))  // measured: 3.3e-3 (fp16), 3.3e-2 (bf16)
    }
}
