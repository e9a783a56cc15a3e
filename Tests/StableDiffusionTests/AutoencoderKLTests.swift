import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

@Suite struct AutoencoderKLTests {
    func vae(_ model: TinySD) throws -> AutoencoderKL {
        try AutoencoderKL.load(folder: model.folder.appendingPathComponent("vae"))
    }

    /// sd2's VAE file keeps the attention under the pre-0.14 names (query/key/value/proj_attn).
    @Test(arguments: TinySD.allCases)
    func encodeAndDecodeMatchDiffusers(model: TinySD) throws {
        let vae = try vae(model)
        #expect(vae.vaeScaleFactor == 8)
        let (posterior, decoded) = try withNoGrad {
            let posterior = vae.encode(try model.output("vae.image"))
            return (posterior, vae.decode(posterior.mean))
        }
        let meanError = maxAbsDifference(posterior.mean, try model.output("vae.mean"))
        let stdError = maxAbsDifference(posterior.std, try model.output("vae.std"))
        let decodeError = maxAbsDifference(decoded, try model.output("vae.decoded"))
        print("VAE \(model): max error mean \(meanError), std \(stdError), decoded \(decodeError)")
        #expect(posterior.mean.shape == [1, 4, 8, 8])
        #expect(decoded.shape == [1, 3, 64, 64])
        #expect(meanError < 1e-4)
        #expect(stdError < 1e-4)
        #expect(decodeError < 1e-4)
    }

    @Test func oldAttentionNamesLoadUnderTheNewNames() throws {
        let source = try Weights.open(TinySD.sd2.folder.appendingPathComponent("vae"))
        #expect(source.keys.contains("encoder.mid_block.attentions.0.proj_attn.weight"))
        let names = try vae(.sd2).namedParameters.map(\.name)
        #expect(names.count == source.keys.count)
        #expect(names.contains("encoder.mid_block.attentions.0.to_out.0.weight"))
        #expect(names.contains("decoder.mid_block.attentions.0.to_q.bias"))
        #expect(!names.contains { $0.contains("proj_attn") || $0.contains(".query.") })
    }

    @Test func sampleDrawsNoiseLikeDiffusers() throws {
        let vae = try vae(.sd15)
        let posterior = withNoGrad { vae.encode(try! TinySD.sd15.output("vae.image")) }
        let drawn = posterior.sample(generator: Generator(seed: 42))
        // diffusers: mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(42))
        let noise = Tensor.randn([1, 4, 8, 8], generator: Generator(seed: 42))
        #expect(maxAbsDifference(drawn, posterior.mean + posterior.std * noise) == 0)
        #expect(maxAbsDifference(posterior.mode(), posterior.mean) == 0)
        #expect(maxAbsDifference(posterior.std, (posterior.logvar * 0.5).exp()) == 0)
    }

    @Test func unsupportedBlockTypeIsNamed() throws {
        let folder = try temporaryFolder("vae")
        defer { try? FileManager.default.removeItem(at: folder) }
        let data = try Data(contentsOf: TinySD.sd15.folder.appendingPathComponent("vae/config.json"))
        var json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        json["up_block_types"] = ["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        let config = folder.appendingPathComponent("config.json")
        try JSONSerialization.data(withJSONObject: json).write(to: config)
        try FileManager.default.copyItem(
            at: TinySD.sd15.folder.appendingPathComponent("vae/diffusion_pytorch_model.safetensors"),
            to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        #expect(throws: StableDiffusionError.unsupported(
            file: config.path, key: "up_block_types", value: "AttnUpDecoderBlock2D", supported: ["UpDecoderBlock2D"])) {
            try AutoencoderKL.load(folder: folder)
        }
    }
}
