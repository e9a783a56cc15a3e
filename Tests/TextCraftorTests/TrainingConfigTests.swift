import Foundation
import Testing

@testable import TextCraftor

@Suite final class TrainingConfigFileTests: TemporaryFolderSuite {
    func parse(_ toml: String) throws -> TrainingOptions {
        try TrainingConfigFile.load(try write(toml, to: "train.toml", in: folder))
    }

    /// The error a config gives, without the file name in front.
    func problem(_ toml: String) -> String? {
        let file = folder.appendingPathComponent("train.toml").path
        guard let text = message({ try parse(toml) }) else { return nil }
        return text.hasPrefix(file + ": ") ? String(text.dropFirst(file.count + 2)) : text
    }

    func path(_ relative: String) -> String { folder.appendingPathComponent(relative).standardizedFileURL.path }

    @Test func everyKey() throws {
        let options = try parse("""
            # TextCraftor on Parti, aesthetic + CLIP
            mode = "prompt"
            train = "text"
            model = "models/sd15"
            prompts = "../prompts/parti.tsv"
            data = "/data/pairs"
            out = "runs/a"
            lr = 1e-6
            betas = [0.9, 0.99]
            weight_decay = 0
            eps = 1e-8
            warmup_steps = 100
            grad_accumulation = 2
            max_grad_norm = 1.0
            sampling_steps = 25
            grad_window = 5
            guidance = 7.5
            batch_size = 4
            max_steps = 10_000
            save_every = 500
            seed = 42
            shuffle = true
            device = "cuda:1"
            mixed_precision = "bf16"

            [[reward]]
            name = "aesthetic"
            paths = ["clip-vit-large-patch14", "sac+logos+ava1-l14-linearMSE.pth"]
            gamma = 1.0
            scale = 3.0

            [[reward]]
            name = "clip"
            paths = "/weights/open_clip_vit_g14.bin"
            gamma = 0.5
            """)
        #expect(options == TrainingOptions(
            learningRate: 1e-6, betas: AdamBetas(0.9, 0.99), weightDecay: 0, eps: 1e-8, warmupSteps: 100,
            gradientAccumulation: 2, maxGradNorm: 1, samplingSteps: 25, gradientWindow: 5, guidanceScale: 7.5,
            mode: .prompt, train: .text, batchSize: 4, maxSteps: 10_000, saveEvery: 500, seed: 42, shuffle: true,
            device: "cuda:1", mixedPrecision: .bf16, model: path("models/sd15"), prompts: path("../prompts/parti.tsv"), data: "/data/pairs", out: path("runs/a"),
            rewards: [
                RewardOption(name: "aesthetic", paths: [path("clip-vit-large-patch14"), path("sac+logos+ava1-l14-linearMSE.pth")],
                             gamma: 1, scale: 3),
                RewardOption(name: "clip", paths: ["/weights/open_clip_vit_g14.bin"], gamma: 0.5, scale: nil),
            ]))
        #expect(options.prompts == folder.deletingLastPathComponent().appendingPathComponent("prompts/parti.tsv").path)
    }

    @Test func anEmptyFileGivesNothing() throws {
        #expect(try parse("# nothing yet\n") == TrainingOptions())
        #expect(try parse("guidance = 1\n").guidanceScale == 1.0)
        #expect(try parse("reward = [{ name = \"hpsv2\", paths = \"hps.pt\" }]").rewards
            == [RewardOption(name: "hpsv2", paths: [path("hps.pt")])])
        #expect(try parse("[reward]\nname = \"pickscore\"\npaths = [\"PickScore_v1\"]\n").rewards
            == [RewardOption(name: "pickscore", paths: [path("PickScore_v1")])])
    }

    @Test func unknownKeysAreErrors() {
        #expect(problem("batchsize = 2") == "unknown key \"batchsize\" (did you mean \"batch_size\"?)")
        #expect(problem("learning_rate = 1e-5") == "unknown key \"learning_rate\" (did you mean \"lr\"?)")
        #expect(problem("colour = \"red\"") == "unknown key \"colour\"")
        #expect(problem("[[reward]]\nname = \"clip\"\npaths = \"c\"\ngama = 2") == "unknown key \"reward[0].gama\" (did you mean \"gamma\"?)")
        #expect(problem("[optimizer]\nlr = 1e-6") == "unknown key \"optimizer\"")
    }

    @Test func wrongTypesNameTheKeyAndTheType() {
        #expect(problem("lr = \"1e-6\"") == "key \"lr\": expected a number > 0, found a string")
        #expect(problem("lr = -1e-6") == "key \"lr\": expected a number > 0, found -1e-06")
        #expect(problem("lr = nan") == "key \"lr\": expected a number > 0, found nan")
        #expect(problem("batch_size = 2.0") == "key \"batch_size\": expected an integer >= 1, found a float")
        #expect(problem("batch_size = 0") == "key \"batch_size\": expected an integer >= 1, found 0")
        #expect(problem("warmup_steps = -5") == "key \"warmup_steps\": expected an integer >= 0, found -5")
        #expect(problem("seed = true") == "key \"seed\": expected an integer >= 0, found a boolean")
        #expect(problem("shuffle = 1") == "key \"shuffle\": expected true or false, found an integer")
        #expect(problem("mode = \"promt\"") == "key \"mode\": expected \"prompt\" or \"direct\", found \"promt\"")
        #expect(problem("train = [\"text\"]") == "key \"train\": expected \"text\" or \"unet\", found a list")
        #expect(problem("mixed_precision = \"fp8\"") == "key \"mixed_precision\": expected \"no\", \"bf16\" or \"fp16\", found \"fp8\"")
        #expect(problem("device = 0") == "key \"device\": expected a string, found an integer")
        #expect(problem("out = 3") == "key \"out\": expected a string, found an integer")
        #expect(problem("betas = [0.9]") == "key \"betas\": expected a list of 2 numbers in [0, 1), found a list of 1")
        #expect(problem("betas = [0.9, 1.0]") == "key \"betas\": expected a number in [0, 1), found 1.0")
        #expect(problem("betas = 0.9") == "key \"betas\": expected a list of 2 numbers in [0, 1), found a float")
        #expect(problem("max_steps = 2024-01-01") == "key \"max_steps\": expected an integer >= 1, found a date")
        #expect(problem("reward = \"aesthetic\"") == "key \"reward\": expected a list of tables ([[reward]]), found a string")
        #expect(problem("reward = [1]") == "key \"reward[0]\": expected a table, found an integer")
        #expect(problem("[[reward]]\nname = \"aesthetics\"\npaths = \"a\"")
            == "key \"reward[0].name\": expected \"aesthetic\", \"pickscore\", \"hpsv2\" or \"clip\", found \"aesthetics\"")
        #expect(problem("[[reward]]\nname = \"clip\"\npaths = [\"a\", 2]") == "key \"reward[0].paths\": expected a string, found an integer")
        #expect(problem("[[reward]]\nname = \"clip\"\npaths = 2") == "key \"reward[0].paths\": expected a string or a list of strings, found an integer")
        #expect(problem("[[reward]]\nname = \"clip\"\npaths = \"c\"\ngamma = \"1\"") == "key \"reward[0].gamma\": expected a number, found a string")
        #expect(problem("[[reward]]\nname = \"clip\"\npaths = \"c\"\n[[reward]]\npaths = \"d\"") == "reward[1]: no \"name\" key")
        #expect(problem("[[reward]]\nname = \"clip\"") == "reward[0]: no \"paths\" key")
    }

    @Test func syntaxAndFileErrors() throws {
        let broken = try #require(problem("lr = 1e-6\nbatch_size = \n"))
        // toml++'s words (TOMLKit 0.6.0 is pinned exactly), on one line.
        #expect(broken == "line 2, column 14: Error while parsing key-value pair: expected value, saw '\\n'")
        let twice = try #require(problem("lr = 1\nlr = 2\n"))
        #expect(twice == "line 2, column 6: Error while parsing key-value pair: cannot redefine existing integer 'lr'")
        let missing = folder.appendingPathComponent("none.toml")
        #expect(message { try TrainingConfigFile.load(missing) } == "\(missing.path): no such file")
    }

    @Test func resolvedGivesTheMethodDefaults() throws {
        let resolved = try TrainingOptions().resolved()
        #expect(resolved == TrainingOptions.Resolved(
            learningRate: 1e-6, betas: AdamBetas(0.9, 0.999), weightDecay: 1e-2, eps: 1e-8, warmupSteps: 0,
            gradientAccumulation: 1, maxGradNorm: nil, samplingSteps: 25, gradientWindow: 5, guidanceScale: 7.5,
            mode: .prompt, train: .text, batchSize: 1, maxSteps: nil, saveEvery: 500, seed: 0, shuffle: false,
            model: nil, prompts: nil, data: nil, out: nil, rewards: []))
        #expect(resolved.betas.pair == (0.9, 0.999))
        #expect(try TrainingOptions(batchSize: 8, maxSteps: 100).resolved().batchSize == 8)
    }

    @Test func resolvedChecksWhatFlagsGive() {
        #expect(message { try TrainingOptions(learningRate: -1).resolved() } == "lr: expected a number > 0, found -1.0")
        #expect(message { try TrainingOptions(gradientWindow: 0).resolved() } == "grad_window: expected an integer >= 1, found 0")
        #expect(message { try TrainingOptions(samplingSteps: 10, gradientWindow: 15).resolved() }
            == "grad_window (15) is more than sampling_steps (10)")
        #expect(message { try TrainingOptions(betas: AdamBetas(0.9, 1)).resolved() } == "betas: expected a number in [0, 1), found 1.0")
        #expect(message { try TrainingOptions(rewards: [RewardOption(name: "clip", paths: [], gamma: .infinity)]).resolved() }
            == "reward[0].gamma: expected a number, found inf")
    }

    @Test func flagsOverrideTheFile() throws {
        let file = try parse("""
            lr = 1e-5
            batch_size = 4
            seed = 7
            shuffle = true
            out = "runs/from-file"
            [[reward]]
            name = "aesthetic"
            paths = ["clip", "head.pth"]
            """)
        let flags = TrainingOptions(batchSize: 2, shuffle: false, out: "runs/from-flag")
        let merged = try file.overlaid(with: flags).resolved()
        #expect(merged.learningRate == 1e-5)
        #expect(merged.batchSize == 2)
        #expect(merged.seed == 7)
        #expect(merged.shuffle == false)
        #expect(merged.out == "runs/from-flag")
        #expect(merged.rewards == [RewardOption(name: "aesthetic", paths: [path("clip"), path("head.pth")])])
        #expect(merged.samplingSteps == 25)

        // Rewards from the flags replace the file's whole list.
        let rewardFlags = TrainingOptions(rewards: [RewardOption(name: "hpsv2", paths: ["hps.pt"], gamma: 2)])
        #expect(try file.overlaid(with: rewardFlags).resolved().rewards == rewardFlags.rewards)
    }

    @Test func overlayCoversEveryField() {
        // Two option sets that differ in every field: an overlay field that was forgotten shows up here.
        let a = TrainingOptions(
            learningRate: 1, betas: AdamBetas(0.1, 0.2), weightDecay: 1, eps: 1, warmupSteps: 1, gradientAccumulation: 1,
            maxGradNorm: 1, samplingSteps: 1, gradientWindow: 1, guidanceScale: 1, mode: .prompt, train: .text,
            batchSize: 1, maxSteps: 1, saveEvery: 1, seed: 1, shuffle: false, model: "a", prompts: "a", data: "a",
            out: "a", rewards: [RewardOption(name: "clip", paths: ["a"])])
        let b = TrainingOptions(
            learningRate: 2, betas: AdamBetas(0.3, 0.4), weightDecay: 2, eps: 2, warmupSteps: 2, gradientAccumulation: 2,
            maxGradNorm: 2, samplingSteps: 2, gradientWindow: 2, guidanceScale: 2, mode: .direct, train: .unet,
            batchSize: 2, maxSteps: 2, saveEvery: 2, seed: 2, shuffle: true, model: "b", prompts: "b", data: "b",
            out: "b", rewards: [])
        #expect(a.overlaid(with: b) == b)
        #expect(b.overlaid(with: a) == a)
        #expect(a.overlaid(with: TrainingOptions()) == a)
        #expect(TrainingOptions().overlaid(with: a) == a)
    }
}
