import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// Config values that used to trap, allocate without bound or be accepted silently are errors naming the file and
/// the key, checked when the config is decoded and again when a model is built (issue 17).
@Suite struct ConfigRangeTests {
    func write(_ text: String, name: String = "config.json") throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ranges-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let url = folder.appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url
    }

    /// The message of the error decoding `json` as `T` throws, which must be `invalidConfig` for the file.
    func message<T: Decodable>(_ type: T.Type, _ json: String) throws -> String? {
        let url = try write(json)
        do {
            _ = try decodeConfig(T.self, from: url)
            return nil
        } catch StableDiffusionError.invalidConfig(let file, let message) {
            #expect(file == url.path)
            return message
        }
    }

    /// The message `validate(file:)` gives for a UNet config that decodes: what holds between keys is checked there,
    /// once the per-block lists agree in length (a decoded config may still disagree, see absentKeysTakeDiffusersDefaults).
    func unetMessage(_ json: String) throws -> String? {
        let url = try write(json)
        let config = try decodeConfig(UNet2DConditionConfig.self, from: url)
        do {
            try config.validate(file: url.path)
            return nil
        } catch StableDiffusionError.invalidConfig(let file, let message) {
            #expect(file == url.path)
            return message
        }
    }

    @Test func textEncoderHeadsMustDivideTheWidth() throws {
        // Trapped in MultiHeadAttention's precondition with a backtrace naming neither file nor key.
        #expect(try message(CLIPTextConfig.self, #"{"hidden_size": 512, "num_attention_heads": 7}"#)
            == "key \"num_attention_heads\" (7) must divide hidden_size (512)")
        #expect(try message(CLIPTextConfig.self, #"{"num_attention_heads": 0}"#)
            == "key \"num_attention_heads\" must be between 1 and 65536, got 0")
        // Built from a config made in code, the model throws too instead of trapping.
        var config = CLIPTextConfig()
        config.num_attention_heads = 7
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "te.json", message: "key \"num_attention_heads\" (7) must divide hidden_size (512)")) {
            try CLIPTextModel(VarBuilder(initializingWith: Generator(seed: 0)), config: config, configFile: "te.json")
        }
    }

    @Test func textEncoderSizesAreBounded() throws {
        #expect(try message(CLIPTextConfig.self, #"{"intermediate_size": 1000000000000}"#)
            == "key \"intermediate_size\" must be between 1 and 65536, got 1000000000000")
        #expect(try message(CLIPTextConfig.self, #"{"vocab_size": 2000000}"#)
            == "key \"vocab_size\" must be between 1 and 1000000, got 2000000")
        #expect(try message(CLIPTextConfig.self, #"{"num_hidden_layers": 1048576}"#)
            == "key \"num_hidden_layers\" must be between 1 and 1024, got 1048576")
        #expect(try message(CLIPTextConfig.self, #"{"hidden_size": -512}"#)
            == "key \"hidden_size\" must be between 1 and 65536, got -512")
        #expect(try message(CLIPTextConfig.self, #"{"layer_norm_eps": 0}"#)
            == "key \"layer_norm_eps\" must be greater than 0.0 and at most 1.0, got 0.0")
        // Each size in bounds, together far too many parameters: refused before anything is allocated.
        #expect(try message(CLIPTextConfig.self, #"{"hidden_size": 65536, "num_attention_heads": 8, "num_hidden_layers": 1024}"#)
            == "key \"num_hidden_layers\" makes a model of about 1.79e+13 parameters, more than the 2e+10 allowed")
        // A CLIPModel's towers are named by where they sit.
        #expect(try message(CLIPConfig.self, #"{"text_config": {"hidden_size": 768, "num_attention_heads": 10}}"#)
            == "key \"text_config.num_attention_heads\" (10) must divide text_config.hidden_size (768)")
        #expect(try message(CLIPConfig.self, #"{"vision_config": {"patch_size": 0}}"#)
            == "key \"vision_config.patch_size\" must be between 1 and 224, got 0")
        // SD 1.5's and SD 2.1's text encoders are fine.
        _ = try decodeConfig(CLIPTextConfig.self, from: try write(
            #"{"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "vocab_size": 49408}"#))
        _ = try decodeConfig(CLIPTextConfig.self, from: try write(
            #"{"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512}"#))
    }

    @Test func unetValuesAreChecked() throws {
        #expect(try message(UNet2DConditionConfig.self, #"{"layers_per_block": 1048576}"#)
            == "key \"layers_per_block\" must be between 1 and 1024, got 1048576")
        #expect(try message(UNet2DConditionConfig.self, #"{"layers_per_block": [2, 2, -1, 2]}"#)
            == "key \"layers_per_block.2\" must be between 1 and 1024, got -1")
        #expect(try message(UNet2DConditionConfig.self, #"{"norm_eps": 1000000}"#)
            == "key \"norm_eps\" must be greater than 0.0 and at most 1.0, got 1000000.0")
        #expect(try message(UNet2DConditionConfig.self, #"{"norm_eps": -1e-5}"#)
            == "key \"norm_eps\" must be greater than 0.0 and at most 1.0, got -1e-05")
        #expect(try unetMessage(#"{"attention_head_dim": 7}"#)
            == "key \"attention_head_dim\" (7) must divide block_out_channels.0 (320)")
        #expect(try unetMessage(#"{"attention_head_dim": [5, 10, 20, 30]}"#)
            == "key \"attention_head_dim.3\" (30) must divide block_out_channels.3 (1280)")
        #expect(try unetMessage(#"{"norm_num_groups": 48}"#)
            == "key \"norm_num_groups\" (48) must divide block_out_channels.0 (320)")
        #expect(try message(UNet2DConditionConfig.self, #"{"block_out_channels": [320, 640, 1280, 100000]}"#)
            == "key \"block_out_channels.3\" must be between 1 and 65536, got 100000")
        #expect(try message(UNet2DConditionConfig.self, #"{"down_block_types": [], "up_block_types": [], "block_out_channels": []}"#)
            == "key \"down_block_types\" must be between 1 and 16, got 0")
        #expect(try message(UNet2DConditionConfig.self,
            #"{"block_out_channels": [65536, 65536, 65536, 65536], "attention_head_dim": 8, "layers_per_block": 1024}"#)?
            .hasPrefix("key \"layers_per_block\" makes a model of about ") == true)
        // SD 1.5's, SD 2.1's and SDXL's UNets are fine, and so is the tiny fixture.
        for json in [
            #"{"attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "norm_eps": 1e-05, "norm_num_groups": 32, "layers_per_block": 2}"#,
            #"{"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": true, "sample_size": 96}"#,
            #"{"attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "transformer_layers_per_block": [1, 2, 10], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "sample_size": 128}"#,
        ] {
            #expect(try unetMessage(json) == nil)
        }
        let tiny = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("sd/tiny-sd15/unet/config.json")
        try decodeConfig(UNet2DConditionConfig.self, from: tiny).validate(file: tiny.path)
        // A config made in code is checked when the model is built.
        var config = UNet2DConditionConfig()
        config.layers_per_block = .same(1_048_576)
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "unet.json", message: "key \"layers_per_block\" must be between 1 and 1024, got 1048576")) {
            try UNet2DConditionModel(VarBuilder(initializingWith: Generator(seed: 0)), config: config, configFile: "unet.json")
        }
    }

    /// SDXL's keys: per-layer transformer depths, the up path's own depths, the added embedding's widths.
    @Test func sdxlUNetValuesAreChecked() throws {
        #expect(try message(UNet2DConditionConfig.self, #"{"transformer_layers_per_block": [1, [2, 0], 1, 1]}"#)
            == "key \"transformer_layers_per_block.1.1\" must be between 1 and 1024, got 0")
        #expect(try message(UNet2DConditionConfig.self, #"{"reverse_transformer_layers_per_block": [1, 1, 2000, 1]}"#)
            == "key \"reverse_transformer_layers_per_block.2\" must be between 1 and 1024, got 2000")
        #expect(try message(UNet2DConditionConfig.self, #"{"addition_time_embed_dim": 0}"#)
            == "key \"addition_time_embed_dim\" must be between 1 and 65536, got 0")
        #expect(try unetMessage(#"{"reverse_transformer_layers_per_block": [[1, 1, 1], [1, 1], 1, 1]}"#)
            == "key \"reverse_transformer_layers_per_block.1\" has 2 entries, the block has 3 layers")
        #expect(try unetMessage(#"{"addition_embed_type": "text_time", "addition_time_embed_dim": 256}"#)
            == "key \"projection_class_embeddings_input_dim\" is needed with addition_embed_type \"text_time\"")
        #expect(try unetMessage(#"{"transformer_layers_per_block": [1, [2, 2], [3, 3], [4, 4]], "reverse_transformer_layers_per_block": [[4, 4, 4], [3, 3, 3], [2, 2, 2], [1, 1, 1]]}"#) == nil)
    }

    @Test func vaeValuesAreChecked() throws {
        #expect(try message(AutoencoderKLConfig.self, #"{"layers_per_block": 1048576}"#)
            == "key \"layers_per_block\" must be between 1 and 1024, got 1048576")
        #expect(try message(AutoencoderKLConfig.self, #"{"block_out_channels": [128, 250]}"#)
            == "key \"norm_num_groups\" (32) must divide block_out_channels.1 (250)")
        #expect(try message(AutoencoderKLConfig.self, #"{"latent_channels": 0}"#)
            == "key \"latent_channels\" must be between 1 and 65536, got 0")
        #expect(try message(AutoencoderKLConfig.self, #"{"scaling_factor": -0.18215}"#)
            == "key \"scaling_factor\" must be greater than 0.0 and at most 1000000.0, got -0.18215")
        _ = try decodeConfig(AutoencoderKLConfig.self, from: try write(
            #"{"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 2, "sample_size": 1024, "scaling_factor": 0.13025}"#))
    }

    @Test func schedulerValuesAreChecked() throws {
        let ddim = #""_class_name": "DDIMScheduler""#
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"beta_start\": 100000}")
            == "key \"beta_start\" must be at least 0.0 and at most 0.999, got 100000.0")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"beta_start\": 0.02, \"beta_end\": 0.0001}")
            == "key \"beta_end\" (0.0001) must be at least beta_start (0.02)")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"beta_end\": -0.5}")
            == "key \"beta_end\" must be at least 0.0 and at most 0.999, got -0.5")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"num_train_timesteps\": 0}")
            == "key \"num_train_timesteps\" must be between 1 and 1000000, got 0")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"num_train_timesteps\": 1000000000000}")
            == "key \"num_train_timesteps\" must be between 1 and 1000000, got 1000000000000")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"steps_offset\": -1}")
            == "key \"steps_offset\" must be between 0 and 1000, got -1")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"trained_betas\": [0.1, 2]}")
            == "key \"trained_betas.1\" must be at least 0.0 and at most 0.999, got 2.0")
        #expect(try message(SchedulerConfig.self, "{\(ddim), \"clip_sample_range\": 0}")
            == "key \"clip_sample_range\" must be greater than 0.0 and at most 1000000.0, got 0.0")
        // A config made in code is checked when the schedule is computed.
        var config = SchedulerConfig(className: "DDIMScheduler", file: "s.json")
        config.betaStart = 100_000
        #expect(throws: StableDiffusionError.invalidConfig(
            file: "s.json", message: "key \"beta_start\" must be at least 0.0 and at most 0.999, got 100000.0")) {
            try makeScheduler(config: config)
        }
        // SD 1.5's, SD 2.1's and SDXL's schedulers are fine (DPM-Solver's -Infinity too).
        for json in [
            #"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#,
            #"{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": false, "steps_offset": 1}"#,
            #"{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading"}"#,
            #"{"_class_name": "DPMSolverMultistepScheduler", "beta_start": 0.0001, "beta_end": 0.02, "lambda_min_clipped": -Infinity}"#,
        ] {
            _ = try makeScheduler(config: try SchedulerConfig.load(from: try write(json, name: "scheduler_config.json")))
        }
    }

    @Test func openCLIPValuesAreChecked() throws {
        func message(_ json: String) throws -> String? {
            let url = try write(json, name: "open_clip_config.json")
            do {
                _ = try OpenCLIPConfig.load(from: url)
                return nil
            } catch StableDiffusionError.invalidConfig(let file, let message) {
                #expect(file == url.path)
                return message
            }
        }
        // head_width 0 divided by zero (heads = width / head_width); an infinite mlp_ratio trapped converting to Int.
        #expect(try message(#"{"embed_dim": 512, "vision_cfg": {"head_width": 0}, "text_cfg": {}}"#)
            == "key \"vision_cfg.head_width\" must be between 1 and 65536, got 0")
        #expect(try message(#"{"embed_dim": 512, "vision_cfg": {"head_width": 100}, "text_cfg": {}}"#)
            == "key \"vision_cfg.head_width\" (100) must divide vision_cfg.width (768)")
        #expect(try message(#"{"embed_dim": 512, "vision_cfg": {}, "text_cfg": {"mlp_ratio": Infinity}}"#)
            == "key \"text_cfg.mlp_ratio\" must be greater than 0.0 and at most 64.0, got inf")
        #expect(try message(#"{"embed_dim": 512, "vision_cfg": {}, "text_cfg": {"heads": 7}}"#)
            == "key \"text_cfg.heads\" (7) must divide text_cfg.width (512)")
        #expect(try message(#"{"embed_dim": 512, "vision_cfg": {}, "text_cfg": {"layers": 100000}}"#)
            == "key \"text_cfg.layers\" must be between 1 and 1024, got 100000")
        #expect(try message(#"{"embed_dim": 512, "vision_cfg": {}, "text_cfg": {"vocab_size": 1000000, "width": 65536, "heads": 64, "mlp_ratio": 1}}"#)?
            .hasPrefix("key \"text_cfg.layers\" makes a model of about ") == true)
        #expect(try message(#"{"embed_dim": 1024, "vision_cfg": {"width": 1280, "head_width": 80, "layers": 32, "patch_size": 14}, "text_cfg": {"width": 1024, "heads": 16, "layers": 24}}"#) == nil)
        for name in OpenCLIPConfig.presets.keys { try OpenCLIPConfig.preset(named: name).validate(file: name) }
    }
}
