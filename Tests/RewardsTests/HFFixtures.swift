import Foundation
import NN
import Testing
import Torch

@testable import Rewards

/// What scripts/parity/make_reward_fixtures_hf.py wrote under Fixtures/hf: two tiny transformers CLIPModel folders,
/// a tiny LAION aesthetic head, and the scores and image gradients PyTorch computed with them.
enum HFFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("hf")
    /// PickScore_v1-like: gelu, pytorch_model.bin with position_ids buffers, text_config_dict, tokenizer beside
    /// config.json with "!" padding, image size 32.
    static let pickscore = root.appendingPathComponent("pickscore")
    /// OpenAI ViT-L/14-like: quick_gelu, model.safetensors, tokenizer/, image size 64.
    static let clip = root.appendingPathComponent("clip")
    static let aesthetic = root.appendingPathComponent("aesthetic.pth")
    static let badAesthetic = root.appendingPathComponent("bad_aesthetic.pth")
    static let prompts = ["a photo of a cat on a red sofa", "an astronaut riding a horse, oil painting"]

    static func output(_ name: String) throws -> Tensor {
        try SafeTensorsFile(url: root.appendingPathComponent("outputs.safetensors")).tensor(name)
    }

    /// max |a - b| / max |b|: the error relative to the size of the reference.
    static func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
        let (a, b) = (a.to(.float64), b.to(.float64))
        #expect(a.shape == b.shape)
        return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
    }

    /// A fresh temporary folder, removed by the caller's `defer`.
    static func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("hfclip-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Scores and image gradients of a reward against the PyTorch reference, for one preprocessing mode.
    static func expectMatchesReference(_ reward: any Reward, key: String, mode: PreprocessingMode) throws {
        reward.preprocessing = mode
        let images = try HFFixtures.output("images").requiringGrad()
        let scores = try reward.score(images, prompts: HFFixtures.prompts)
        let expected = try HFFixtures.output("\(key).\(mode).scores")
        let scoreError = HFFixtures.relativeError(scores, expected)
        #expect(scoreError < 1e-4, "\(key) \(mode): scores \(scores.toArray(Double.self)) vs \(expected.toArray(Double.self))")
        scores.sum().backward()
        let gradError = HFFixtures.relativeError(try #require(images.grad), try HFFixtures.output("\(key).\(mode).grad"))
        #expect(gradError < 1e-3, "\(key) \(mode): gradient relative error \(gradError)")
    }
}
