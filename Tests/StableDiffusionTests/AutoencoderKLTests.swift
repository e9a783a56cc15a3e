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
}
