import Foundation
import Testing

@testable import TextCraftor

@Suite final class TrainingConfigTests: TemporaryFolderSuite {
    func parse(_ toml: String) throws -> TrainingConfig {
        try ConfigFile.load(try write(toml, to: "train.toml", in: folder))
    }

    /// The error a config gives, without the file name in front.
    func problem(_ toml: String) -> String? {
        let file = folder.appendingPathComponent("train.toml").path
        guard let text = message({ try parse(toml) }) else { return nil }
        return text.hasPrefix(file + ": ") ? String(text.dropFirst(file.count + 2)) : text
    }

    func path(_ relative: String) -> String { folder.appendingPathComponent(relative).standardizedFileURL.path }

    /// A configuration that differs from the defaults in every key.
    func everyKeyChanged() -> TrainingConfig {
        var c = TrainingConfig()
        c.mode = .direct
        c.train = .textEncoders  // not unet: LoRA and tokens train text encoders; lora_* keys set, adapter token below
        c.lora.rank = 16
        c.lora.alpha = 8
        c.lora.dropout = 0.1
        c.lora.targets = ["q_proj", "v_proj"]
        c.lora.format = .peft
        c.lora.dtype = .bfloat16
        c.model = path("models/sd15.safetensors")
        c.modelConfig = path("models/sd15")
        c.noEma = true
        c.predictionType = "v_prediction"
        c.prompts = path("../prompts/parti.tsv")
        c.promptColumn = "caption"
        c.normalizeRewards = .running
        c.data = "/data/pairs"
        c.textEncoder = path("runs/a/text_encoder")
        c.rewards = [
            RewardOption(name: "aesthetic", paths: [path("clip-vit-large-patch14"), path("sac+logos+ava1-l14-linearMSE.pth")],
                         gamma: 1, scale: 3),
            RewardOption(name: "clip", paths: ["/weights/open_clip_vit_g14.bin"], gamma: 0.5, scale: nil),
        ]
        c.out = path("runs/b")
        c.adapter = .token
        c.token = "<aesthetic>"
        c.initWord = "beautiful"
        c.vectors = 3
        c.samplingSteps = 20
        c.gradientWindow = 4
        c.guidanceScale = 6
        c.resolution = 256
        c.vaeCheckpoint = false
        c.timestepRange = TimestepRange(low: 100, high: 600)
        c.learningRate = 2e-6
        c.betas = AdamBetas(0.9, 0.99)
        c.weightDecay = 0
        c.eps = 1e-7
        c.warmupSteps = 100
        c.gradientAccumulation = 2
        c.maxGradNorm = 1
        c.batchSize = 4
        c.maxSteps = 10_000
        c.saveEvery = 250
        c.keepCheckpoints = 5
        c.seed = 42
        c.shuffle = true
        c.device = "cuda:1"
        c.mixedPrecision = .bf16
        c.distTimeout = 60
        c.syncCheckEvery = 10
        c.distBackend = .gloo
        c.tensorBoard.enabled = false
        c.tensorBoard.imagesEvery = 25
        c.proximityWeight = 0.5
        c.randomWindow = true
        c.earlyStop = "pickscore=" + path("pickscore") + "," + path("clip-vit-h")
        c.earlyStopEvery = 20
        c.earlyStopPatience = 5
        c.heldOutPrompts = path("held-out.txt")
        return c
    }

    @Test func everyKey() throws {
        let config = try parse("""
            # TextCraftor on Parti, aesthetic + CLIP
            mode = "direct"
            train = "text-encoders"
            lora_rank = 16
            lora_alpha = 8
            lora_dropout = 0.1
            lora_targets = ["q_proj", "v_proj"]
            lora_format = "peft"
            lora_dtype = "bfloat16"
            model = "models/sd15.safetensors"
            model_config = "models/sd15"
            no_ema = true
            prediction_type = "v_prediction"
            prompts = "../prompts/parti.tsv"
            prompt_column = "caption"
            data = "/data/pairs"
            text_encoder = "runs/a/text_encoder"
            out = "runs/b"
            normalize_rewards = "running"
            adapter = "token"
            token = "<aesthetic>"
            init_word = "beautiful"
            vectors = 3
            sampling_steps = 20
            grad_window = 4
            guidance = 6
            resolution = 256
            vae_checkpoint = false
            t_range = [100, 600]
            lr = 2e-6
            betas = [0.9, 0.99]
            weight_decay = 0
            eps = 1e-7
            warmup_steps = 100
            grad_accumulation = 2
            max_grad_norm = 1.0
            batch_size = 4
            max_steps = 10_000
            save_every = 250
            keep_checkpoints = 5
            seed = 42
            shuffle = true
            device = "cuda:1"
            mixed_precision = "bf16"
            dist_timeout = 60
            sync_check_every = 10
            dist_backend = "gloo"
            tensorboard = false
            tensorboard_images_every = 25
            proximity_weight = 0.5
            random_window = true
            early_stop = "pickscore=pickscore,clip-vit-h"
            early_stop_every = 20
            early_stop_patience = 5
            held_out_prompts = "held-out.txt"

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
        #expect(config == everyKeyChanged())
        #expect(config.prompts == folder.deletingLastPathComponent().appendingPathComponent("prompts/parti.tsv").path)
        // Every key of the type is a key of the file: the test above gives them all.
        #expect(TrainingConfig.keys.count == 55)
    }

    @Test func anEmptyFileGivesTheDefaults() throws {
        #expect(try parse("# nothing yet\n") == TrainingConfig())
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
        #expect(problem("train = [\"text\"]") == "key \"train\": expected \"text-encoder\", \"text-encoder-2\", \"text-encoders\" or \"unet\", found a list")
        #expect(problem("train = \"text_encoder\"") == "key \"train\": expected \"text-encoder\", \"text-encoder-2\", \"text-encoders\" or \"unet\", found \"text_encoder\"")
        #expect(problem("mixed_precision = \"fp8\"") == "key \"mixed_precision\": expected \"no\", \"bf16\" or \"fp16\", found \"fp8\"")
        #expect(problem("t_range = [5]") == "key \"t_range\": expected a list of 2 integers [LOW, HIGH], found a list of 1")
        #expect(problem("dist_backend = \"mpi\"") == "key \"dist_backend\": expected \"auto\", \"gloo\" or \"nccl\", found \"mpi\"")
        #expect(problem("device = 0") == "key \"device\": expected a string, found an integer")
        #expect(problem("out = 3") == "key \"out\": expected a string, found an integer")
        #expect(problem("betas = [0.9]") == "key \"betas\": expected a list of 2 numbers in [0, 1), found a list of 1")
        #expect(problem("betas = [0.9, 1.0]") == "key \"betas\": expected a number in [0, 1), found 1.0")
        #expect(problem("betas = 0.9") == "key \"betas\": expected a list of 2 numbers in [0, 1), found a float")
        #expect(problem("max_steps = 2024-01-01") == "key \"max_steps\": expected an integer >= 1, found a date")
        #expect(problem("reward = \"aesthetic\"") == "key \"reward\": expected a list of tables ([[reward]]), found a string")
        #expect(problem("reward = [1]") == "key \"reward[0]\": expected a table, found an integer")
        #expect(problem("[[reward]]\nname = \"aesthetics\"\npaths = \"a\"")
            == "key \"reward[0].name\": expected \"aesthetic\", \"pickscore\", \"hpsv2\", \"clip\", \"hpsv2.1\", \"aesthetic25\" or \"imagereward\", found \"aesthetics\"")
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
        #expect(message { try ConfigFile.load(missing, as: TrainingConfig.self) } == "\(missing.path): no such file")
    }

    @Test func theDefaultsAreTheMethods() throws {
        let c = TrainingConfig()
        try c.validate()
        #expect(c.learningRate == 1e-6 && c.betas == AdamBetas(0.9, 0.999) && c.weightDecay == 1e-2 && c.eps == 1e-8)
        #expect(c.warmupSteps == 0 && c.gradientAccumulation == 1 && c.maxGradNorm == nil)
        #expect(c.samplingSteps == 25 && c.gradientWindow == 5 && c.guidanceScale == 7.5)
        #expect(c.mode == .prompt && c.train == .textEncoder && c.batchSize == 1 && c.maxSteps == 1000 && c.saveEvery == 500)
        #expect(c.keepCheckpoints == 3 && c.seed == 0 && !c.shuffle && c.rewards.isEmpty && c.model == nil)
        #expect(c.timestepRange == TimestepRange(low: 0, high: 999) && c.device == "cpu" && c.mixedPrecision == .no)
        #expect(c.vaeCheckpoint && c.sampling.checkpointsVAE)
        #expect(c.betas.pair == (0.9, 0.999))
    }

    @Test func validateNamesTheKey() {
        func problem(_ change: (inout TrainingConfig) -> Void) -> String? {
            var c = TrainingConfig()
            change(&c)
            return message { try c.validate() }
        }
        #expect(problem { $0.learningRate = -1 } == "lr: expected a number > 0, found -1.0")
        #expect(problem { $0.gradientWindow = 0 } == "grad_window: expected an integer >= 1, found 0")
        #expect(problem { $0.samplingSteps = 10; $0.gradientWindow = 15 } == "grad_window: 15 is more than sampling_steps (10)")
        #expect(problem { $0.betas = AdamBetas(0.9, 1) } == "betas: expected a number in [0, 1), found 1.0")
        #expect(problem { $0.rewards = [RewardOption(name: "clip", paths: [], gamma: .infinity)] }
            == "reward[0].gamma: expected a number, found inf")
        #expect(problem { $0.timestepRange = TimestepRange(low: 600, high: 100) }
            == "t_range: expected two timesteps LOW,HIGH with 0 <= LOW <= HIGH <= 999, found 600,100")
        #expect(problem { $0.device = "gpu" } == "device: expected cpu, cuda or cuda:N, found \"gpu\"")
        #expect(problem { $0.keepCheckpoints = 0 } == "keep_checkpoints: expected an integer >= 1, found 0")
        // Sizes that would allocate without limit are bounded.
        #expect(problem { $0.batchSize = 1_000_000 } == "batch_size: expected an integer <= 4096, found 1000000")
        #expect(problem { $0.resolution = 1_000_000 } == "resolution: expected an integer <= 8192, found 1000000")
        #expect(problem { $0.samplingSteps = 5000 } == "sampling_steps: expected an integer <= 1000, found 5000")
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
        let merged = try file.overlaying([("batch_size", 2), ("shuffle", false), ("out", "runs/from-flag")])
        #expect(merged.learningRate == 1e-5)
        #expect(merged.batchSize == 2)
        #expect(merged.seed == 7)
        #expect(merged.shuffle == false)
        #expect(merged.out == "runs/from-flag")
        #expect(merged.rewards == [RewardOption(name: "aesthetic", paths: [path("clip"), path("head.pth")])])
        #expect(merged.samplingSteps == 25)

        // Rewards from the flags replace the file's whole list.
        let rewards = [RewardOption(name: "hpsv2", paths: ["hps.pt"], gamma: 2)]
        #expect(try file.overlaying([("reward", rewards)]).rewards == rewards)
        // An optional key takes the flag's plain value.
        #expect(try file.overlaying([("max_grad_norm", 0.5)]).maxGradNorm == 0.5)
        #expect(message { try file.overlaying([("batch_size", "2")]) } == "TrainingConfig key \"batch_size\" takes no String")
        #expect(message { try file.overlaying([("learning_rate", 1.0)]) } == "TrainingConfig has no key \"learning_rate\"")
    }

    /// run.json: the record decodes to the configuration it was written from, every key included.
    @Test func theRecordRoundTrips() throws {
        let config = everyKeyChanged()
        let decoded = try JSONDecoder().decode(TrainingConfig.self, from: try JSONEncoder().encode(config))
        #expect(decoded == config)
        #expect(try JSONDecoder().decode(TrainingConfig.self, from: try JSONEncoder().encode(TrainingConfig())) == TrainingConfig())
    }

    /// `train` before SDXL was "text" or "unet": an older run.json (or TOML file) still reads, as text-encoder, and a
    /// new record writes the new name.
    @Test func theOldTrainValueStillReads() throws {
        var record = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(TrainingConfig())) as! [String: Any]
        #expect(record["train"] as? String == "text-encoder")
        record["train"] = "text"
        let old = try JSONDecoder().decode(TrainingConfig.self, from: try JSONSerialization.data(withJSONObject: record))
        #expect(old.train == .textEncoder)
        #expect(try parse("train = \"text\"").train == .textEncoder)
        for choice in TrainedNetwork.allCases { #expect(try parse("train = \"\(choice.rawValue)\"").train == choice) }
        #expect(TrainedNetwork.allCases.map(\.rawValue) == ["text-encoder", "text-encoder-2", "text-encoders", "unet"])
    }

    /// A run.json written before TensorBoard logging existed resumes with its defaults (on, images every 100 steps).
    @Test func aRecordWithoutTensorBoardSettingsReads() throws {
        var record = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(everyKeyChanged())) as! [String: Any]
        record["tensorBoard"] = nil
        let old = try JSONDecoder().decode(TrainingConfig.self, from: try JSONSerialization.data(withJSONObject: record))
        #expect(old.tensorBoard == TensorBoardSettings())
        #expect((old.tensorBoard.enabled, old.tensorBoard.imagesEvery) == (true, 100))
        #expect(message { try parse("tensorboard_images_every = -3") }?.hasSuffix("key \"tensorboard_images_every\": expected an integer >= 0, found -3") == true)
    }
}

/// The other jobs' configurations read files and check values the same way.
@Suite final class JobConfigTests: TemporaryFolderSuite {
    func parse<C: Configuration>(_ toml: String, as type: C.Type) throws -> C {
        try ConfigFile.load(try write(toml, to: "job.toml", in: folder), as: type)
    }

    @Test func evalConfigReadsAFileAndChecksItsKeys() throws {
        let config = try parse("""
            model = "sd"
            prompts = ["anime.json", "photo.json"]
            text_encoder = "hps=runs/hps"
            blend = ["0.5"]
            scheduler = ["ddim", "euler"]
            images_per_prompt = 2
            reward = "hpsv2=HPS_v2.pt"
            out = "eval"
            """, as: EvalConfig.self)
        #expect(config.prompts == ["anime.json", "photo.json"])
        #expect(config.textEncoder == ["hps=runs/hps"] && config.blend == ["0.5"] && config.scheduler == ["ddim", "euler"])
        #expect(config.model == folder.appendingPathComponent("sd").standardizedFileURL.path)
        #expect(config.imagesPerPrompt == 2 && config.sampling.steps == 25 && config.sampling.guidance == 7.5)
        try config.validate()

        var c = config
        c.limit = 3
        c.sample = 2
        #expect(message { try c.validate() } == "limit: cannot be used with sample")
        c = config
        c.textEncoder = []
        #expect(message { try c.validate() } == "blend: needs text_encoder")
        c = EvalConfig()
        c.demo = true
        #expect(message { try c.validate() } == "out: no output folder given")
        c.out = "x"
        try c.validate()
        #expect(c.sampling == EvalSampling(steps: 10, guidance: 5, imagesPerPrompt: 1, seed: 0))
        #expect(message { try self.parse("images_per_prompt = 0", as: EvalConfig.self) }?.hasSuffix(
            "key \"images_per_prompt\": expected an integer >= 1, found 0") == true)
    }

    @Test func generationConfigChecksTheEncoderRecipe() throws {
        var c = try parse("model = \"sd\"\nout = \"o\"\nprompt = \"a red circle\"\nsteps = 3\n", as: GenerationConfig.self)
        #expect(c.prompt == ["a red circle"] && c.steps == 3 && c.seed == nil)
        try c.validate()
        c.blend = "0.5"
        #expect(message { try c.validate() } == "blend: needs text_encoder")
        c.textEncoder = "ft"
        c.blend = "-1"
        #expect(message { try c.validate() } == "blend: expected a number >= 0, found -1.0")
        c.blend = nil
        c.mix = ["original=1"]
        #expect(message { try c.validate() } == "mix: cannot be used with text_encoder or blend")
    }

    @Test func keysAreUniqueInEveryConfiguration() {
        for keys in [TrainingConfig.keys, EvalConfig.keys, GenerationConfig.keys, DemoConfig.keys] {
            #expect(Set(keys).count == keys.count)
        }
    }

    @Test(arguments: [("clip=/w/clip:inf", "inf"), ("clip=/w/clip:-inf", "-inf"), ("clip=/w/clip:nan", "nan"),
                      ("hpsv2=/w/hps.pt:1e999", "1e999")])
    func rewardSpecWeightsMustBeFinite(spec: String, weight: String) {
        // An inf or nan gamma makes every total inf or nan, and `score --json` crashed writing it.
        #expect(throws: TextCraftorError.invalidArgument("\(spec): the weight \(weight) is not a finite number")) {
            try RewardOption(spec: spec)
        }
        #expect((try? RewardOption(spec: "clip=/w/clip:0.5")) == RewardOption(name: "clip", paths: ["/w/clip"], gamma: 0.5))
    }

    @Test func scoreJSONWritesNullForScoresJSONCannotHold() throws {
        #expect(try scoreJSONLine(image: "a/0.png", names: ["clip", "hpsv2"], scores: [.nan, 0.25], total: .infinity)
            == #"{"clip":null,"hpsv2":0.25,"image":"a/0.png","total":null}"#)
        #expect(try scoreJSONLine(image: "mean", names: ["clip"], scores: [-.infinity], total: 1.5)
            == #"{"clip":null,"image":"mean","total":1.5}"#)
    }
}
