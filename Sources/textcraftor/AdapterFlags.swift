import ArgumentParser
import StableDiffusion
import TextCraftor

/// `train --adapter` and the LoRA settings, each named after its `TrainingConfig` key; nil or empty: not given.
struct AdapterFlags: ParsableArguments {
    @Option(help: ArgumentHelp(
        "full (default: every weight of the trained encoders) or lora.",
        discussion: "lora trains low-rank adapters on each encoder block's linear layers (--lora-targets) of the encoders --train selects, and nothing else; the encoders stay frozen. The run folder gets OUT/lora.safetensors instead of OUT/text_encoder/: pass it to `generate --lora`, AUTOMATIC1111, ComfyUI or diffusers' load_lora_weights, or bake it with `textcraftor merge`. Checkpoints keep the adapters in float32, so --resume continues exactly."))
    var adapter: Adapter?
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

extension Adapter: ExpressibleByArgument {}
extension LoRAFormat: ExpressibleByArgument {}
