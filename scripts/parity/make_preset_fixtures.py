#!/usr/bin/env python3
"""Fixtures for `textcraftor synth-model`: the real models' configs and every weight's name and shape.

Each preset's models (SD 1.5, SD 2.1, SDXL base 1.0, the reward models) are built by the reference libraries (diffusers, transformers, open_clip, image-reward) on the meta device,
from the configs the published checkpoints ship (written out below, as their config.json files hold them), so nothing
is downloaded and nothing is allocated. For each component the fixture holds the config and {key: shape} of its
state dict; the Swift test builds the same models from its presets on the meta device and compares both.

It also writes flops.json: torch.utils.flop_counter.FlopCounterMode's counts for SD 1.5's models on the meta
device (the UNet forward for a guided pair at 512x512, its backward to the latents and the text embeddings with the
weights frozen, the VAE decoder, the text encoder), which `FLOPCounter`'s analytic counts are checked against.

    python scripts/parity/make_preset_fixtures.py   # writes Tests/TextCraftorTests/Fixtures/presets/*.json
"""
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "Tests", "TextCraftorTests", "Fixtures", "presets")

# runwayml/stable-diffusion-v1-5 (and CompVis/stable-diffusion-v1-4): unet/config.json.
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# stabilityai/stable-diffusion-2-1: unet/config.json.
SD21_UNET = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, sample_size=96,
                 use_linear_projection=True, upcast_attention=True)
# Both: vae/config.json.
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
# openai/clip-vit-large-patch14's text tower (SD 1.5's text_encoder/config.json).
VIT_L14_TEXT = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "vocab_size": 49408, "projection_dim": 768,
    "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
# SD 2.1's text_encoder/config.json: OpenCLIP ViT-H/14's text tower without its last layer (23 of 24).
SD21_TEXT = dict(VIT_L14_TEXT, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                 num_hidden_layers=23, hidden_act="gelu", projection_dim=512)
VIT_L14_VISION = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
    "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
}
# yuvalkirstain/PickScore_v1 (= laion/CLIP-ViT-H-14-laion2B-s32B-b79K's layout).
VIT_H14_TEXT = dict(VIT_L14_TEXT, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                    num_hidden_layers=24, hidden_act="gelu", projection_dim=1024)
VIT_H14_VISION = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16, "num_hidden_layers": 32,
    "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-05,
}
# google/siglip-so400m-patch14-384: the vision_config of its config.json (the rest are SiglipVisionConfig's defaults,
# written out here: gelu_pytorch_tanh, layer_norm_eps 1e-6, 3 channels), which Aesthetic Predictor v2.5 reads.
SIGLIP_SO400M_VISION = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
    "image_size": 384, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06, "num_channels": 3,
}
# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json (2816 = text_encoder_2's 1280 + 6 x 256).
SDXL_UNET = dict(
    SD15_UNET, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], sample_size=128,
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
# Its vae/config.json (the SDXL VAE: same layout as SD's, another latent scale, decoded in float32 under fp16).
SDXL_VAE = dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# Its text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower as transformers' CLIPTextModelWithProjection.
SDXL_TEXT_2 = dict(VIT_L14_TEXT, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                   hidden_act="gelu", projection_dim=1280)
# SD 1.5 / 2.1: scheduler/scheduler_config.json.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False, "prediction_type": "epsilon",
}
SD21_SCHEDULER = dict(SD15_SCHEDULER, _class_name="DDIMScheduler", prediction_type="v_prediction")
# SDXL base: Euler with "leading" spacing (its file's sample_max_value 1.0 and trained_betas null are diffusers' defaults).
SDXL_SCHEDULER = dict(SD15_SCHEDULER, _class_name="EulerDiscreteScheduler", interpolation_type="linear",
                      timestep_spacing="leading", use_karras_sigmas=False)


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def diffusers_component(cls, config):
    with torch.device("meta"):
        model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    return {"config": config, "shapes": shapes(model)}


def text_encoder(config, with_projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(CLIPTextConfig(**config))
    return {"config": config, "shapes": shapes(model)}


def clip_model(text, vision, projection_dim):
    from transformers import CLIPConfig, CLIPModel
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    return {"config": {"projection_dim": projection_dim, "text_config": text, "vision_config": vision},
            "shapes": shapes(model)}


def pipeline(unet, text, scheduler, vae=VAE, text_2=None):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    components = {
        "unet": diffusers_component(UNet2DConditionModel, unet),
        "vae": diffusers_component(AutoencoderKL, vae),
        "text_encoder": text_encoder(text),
        "scheduler": {"config": scheduler, "shapes": {}},
    }
    if text_2:
        components["text_encoder_2"] = text_encoder(text_2, with_projection=True)
    return components


def aesthetic_head():
    # LAION's improved-aesthetic-predictor MLP (sac+logos+ava1-l14-linearMSE.pth): Linear layers 0, 2, 4, 6, 7
    # with dropout between them.
    layers = torch.nn.Sequential(
        torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    return {"config": {"input_width": 768}, "shapes": {"layers." + k: v for k, v in shapes(layers).items()}}


def siglip_vision(config):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    with torch.device("meta"):
        model = SiglipVisionModel(SiglipVisionConfig(**config))
    return {"config": config, "shapes": shapes(model)}


def aesthetic25_head():
    # aesthetic-predictor-v2-5's AestheticPredictorV2_5Head (the keys of aesthetic_predictor_v2_5.pth).
    from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Head
    from transformers import SiglipVisionConfig
    with torch.device("meta"):
        head = AestheticPredictorV2_5Head(SiglipVisionConfig(**SIGLIP_SO400M_VISION))
    return {"config": {"input_width": SIGLIP_SO400M_VISION["hidden_size"]}, "shapes": shapes(head)}


def hpsv2():
    import open_clip
    with torch.device("meta"):
        model = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    return {"config": {"model": "ViT-H-14"}, "shapes": shapes(model)}


# ImageReward's med_config.json (BLIP's configs/med_config.json).
IMAGEREWARD_MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
    "add_cross_attention": True,
}


def imagereward():
    """The image-reward package's ImageReward (ViT-L/16 at 224, BERT-base with cross-attention, MLP(768)), built by
    its own classes on the meta device; imported as make_imagereward_fixtures.py does, with BLIP's tokenizer (a
    download) left out."""
    import tempfile
    from make_imagereward_fixtures import load_package
    IR, blip_pretrain, vit = load_package()
    blip_pretrain.init_tokenizer = lambda: None

    class TorchOnCPUForLinspace:  # vit.py reads drop-path rates with .item(), which meta tensors refuse
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def linspace(*args, **kwargs):
            return torch.linspace(*args, **kwargs, device="cpu")
    vit.torch = TorchOnCPUForLinspace()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(IMAGEREWARD_MED_CONFIG, f)
    with torch.device("meta"):
        model = IR.ImageReward(med_config=f.name, device="meta")
    os.remove(f.name)
    return {"config": IMAGEREWARD_MED_CONFIG, "shapes": shapes(model)}


def flops():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    def count(body):
        with FlopCounterMode(display=False) as counter:
            body()
        return counter.get_total_flops()

    out = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET).requires_grad_(False)
        x = torch.randn(2, 4, 64, 64)
        t = torch.tensor([500.0, 500.0])
        c = torch.randn(2, 77, 768)
        out["unet_forward"] = count(lambda: unet(x, t, encoder_hidden_states=c))
        xg, cg = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        y = unet(xg, t, encoder_hidden_states=cg).sample
        out["unet_backward_frozen"] = count(lambda: y.backward(torch.ones_like(y)))
        vae = AutoencoderKL(**VAE)
        z = torch.randn(1, 4, 64, 64)
        out["vae_decode"] = count(lambda: vae.decode(z))
        text = CLIPTextModel(CLIPTextConfig(**VIT_L14_TEXT))
        out["text_encoder"] = count(lambda: text(torch.zeros(2, 77, dtype=torch.long)))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    presets = {
        "sd15": pipeline(SD15_UNET, VIT_L14_TEXT, SD15_SCHEDULER),
        "sd21": pipeline(SD21_UNET, SD21_TEXT, SD21_SCHEDULER),
        "sdxl": pipeline(SDXL_UNET, VIT_L14_TEXT, SDXL_SCHEDULER, vae=SDXL_VAE, text_2=SDXL_TEXT_2),
        "pickscore": {"clip": clip_model(VIT_H14_TEXT, VIT_H14_VISION, 1024)},
        "aesthetic": {"clip": clip_model(VIT_L14_TEXT, VIT_L14_VISION, 768), "head": aesthetic_head()},
        "hpsv2": {"open_clip": hpsv2()},
        "aesthetic25": {"siglip": siglip_vision(SIGLIP_SO400M_VISION), "head": aesthetic25_head()},
        "imagereward": {"imagereward": imagereward()},
    }
    for name, components in presets.items():
        path = os.path.join(OUT, name + ".json")
        with open(path, "w") as f:
            json.dump(components, f, sort_keys=True, separators=(",", ":"))
        count = sum(len(c["shapes"]) for c in components.values())
        params = sum(int(torch.tensor(s).prod()) if s else 1 for c in components.values() for s in c["shapes"].values())
        print(f"{path}: {count} tensors, {params / 1e6:.1f}M values, {os.path.getsize(path) / 1e3:.0f} kB")
    counts = flops()
    with open(os.path.join(OUT, "flops.json"), "w") as f:
        json.dump(counts, f, sort_keys=True, indent=1)
    print("flops:", {k: f"{v / 1e12:.4f} TFLOP" for k, v in counts.items()})


if __name__ == "__main__":
    main()
