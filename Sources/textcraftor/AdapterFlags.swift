import ArgumentParser
import StableDiffusion
import TextCraftor

/// `train --adapter`, the LoRA settings and the reward token's, each named after its `TrainingConfig` key; nil or empty: not given.
struct AdapterFlags: ParsableArguments {
    @Option(help: ArgumentHelp(
        "full (default: every weight of the trained encoders), lora or token.",
        discussion: "lora trains low-rank adapters on each encoder block's linear layers (--lora-targets) of the encoders --train selects, and nothing else; the encoders stay frozen. The run folder gets OUT/lora.safetensors instead of OUT/text_encoder/: pass it to `generate --lora`, AUTOMATIC1111, ComfyUI or diffusers' load_lora_weights, or bake it with `textcraftor merge`. Checkpoints keep the adapters in float32, so --resume continues exactly. token (textual inversion against the rewards) adds --token to the tokenizer(s) with --vectors vectors (TOKEN, TOKEN_1, ...), starting from --init-word's row, and trains only those rows: every other weight, the rest of the token embedding included, stays frozen. Each prompt gets \", TOKEN\" appended unless it names the token; the rewards score the prompts as written. On SDXL the token is in both encoders; --train text-encoder trains its clip_l rows, text-encoder-2 its clip_g rows, text-encoders both. Writes OUT/token/: STEM.safetensors (A1111/ComfyUI; SDXL: clip_l and clip_g), learned_embeds.safetensors (diffusers; SDXL also learned_embeds_2.safetensors) and on SD 1.x/2.x STEM.pt (A1111), STEM being the token's letters, digits, ., _ and -. Load them with `generate --embedding`."))
    var adapter: Adapter?
    @Option(help: "--adapter token: the new token, e.g. \"<aesthetic>\" (must not be in the vocabulary).") var token: String?
    @Option(help: "--adapter token: the word (one token) whose embedding the new token starts from.") var initWord: String?
    @Option(help: "--adapter token: vectors of the new token (default 1).") var vectors: Int?
    @Option(help: "LoRA rank (default 8).") var loraRank: Int?
    @Option(help: "LoRA alpha: the update is alpha/rank x up x down (default: the rank).") var loraAlpha: Double?
    @Option(help: "Dropout on the adapters' input while training (default 0).") var loraDropout: Double?
    @Option(help: ArgumentHelp(
        "The layers given adapters, comma-separated: q_proj, k_proj, v_proj, out_proj, fc1, fc2 (default: all six).",
        valueName: "NAMES"))
    var loraTargets: [String] = []
    @Option(help: ArgumentHelp(
        "kohya (default) or peft: the names in OUT/lora.safetensors.",
        discussion: "kohya: lora_te_... (SDXL lora_te1_/lora_te2_) with lora_down, lora_up and alpha, and kohya's ss_* and modelspec.* metadata: AUTOMATIC1111, ComfyUI and diffusers read it. peft: text_encoder.<module>.lora_A/lora_B (SDXL also text_encoder_2.), for diffusers and PEFT; alpha/rank is folded into lora_B, as PEFT files hold no alpha."))
    var loraFormat: LoRAFormat?
    @Option(help: "float16 (default), bfloat16 or float32: the type of OUT/lora.safetensors.") var loraDtype: FloatType?
}

extension LoRAFormat: ExpressibleByArgument {}
