import Foundation
import Testing
import Torch

@testable import Rewards

@Suite struct RewardRegistryTests {
    let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    @Test func loadsEachRewardByName() throws {
        let hf = fixtures.appendingPathComponent("hf").path
        #expect(try RewardRegistry.load(name: "pickscore", paths: [hf + "/pickscore"]) is PickScoreReward)
        #expect(try RewardRegistry.load(name: "clip", paths: [hf + "/clip"]) is CLIPScoreReward)
        #expect(try RewardRegistry.load(name: "aesthetic", paths: [hf + "/clip", hf + "/aesthetic.pth"]) is AestheticReward)
    }

    /// An open_clip checkpoint takes the config and tokenizer beside it; the CLIP reward scores like HPSv2.
    @Test func openCLIPCheckpointsUseWhatLiesBesideThem() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = fixtures.appendingPathComponent("openclip")
        for (from, to) in [("tiny/hps_tiny.pt", "hps.pt"), ("tiny/open_clip_config.json", "open_clip_config.json"), ("tokenizer", "tokenizer")] {
            try FileManager.default.copyItem(at: source.appendingPathComponent(from), to: folder.appendingPathComponent(to))
        }
        let hps = try RewardRegistry.load(name: "hpsv2", paths: [folder.appendingPathComponent("hps.pt").path])
        let clip = try RewardRegistry.load(name: "clip", paths: [folder.appendingPathComponent("hps.pt").path])
        let images = Tensor.rand([2, 3, 40, 40], generator: Generator(seed: 4))
        let a = try hps.score(images, prompts: ["a cat", "a dog"]), b = try clip.score(images, prompts: ["a cat", "a dog"])
        #expect((a - b).abs().max().item() == 0)
    }

    @Test func badSpecificationsAreNamed() throws {
        #expect(throws: RewardError.unknownReward("vibes", known: RewardRegistry.names)) {
            try RewardRegistry.load(name: "vibes", paths: ["/tmp"])
        }
        #expect(throws: RewardError.invalidArgument("--reward aesthetic takes a CLIP ViT-L/14 and the predictor head: aesthetic=CLIP,HEAD, got 1 path(s)")) {
            try RewardRegistry.load(name: "aesthetic", paths: ["/tmp"])
        }
        #expect(throws: RewardError.invalidModel(file: "/nonexistent/pick", message: "no such file or folder")) {
            try RewardRegistry.load(name: "pickscore", paths: ["/nonexistent/pick"])
        }
        let notOpenCLIP = fixtures.appendingPathComponent("hf/aesthetic.pth")
        #expect(throws: RewardError.invalidModel(file: notOpenCLIP.path, message: "not an open_clip checkpoint (no visual.proj or text_projection)")) {
            try RewardRegistry.load(name: "clip", paths: [notOpenCLIP.path])
        }
    }
}
