#!/usr/bin/env python3
"""A tiny random Stable Diffusion XL folder and what diffusers' StableDiffusionXLPipeline computes with it
(Tests/StableDiffusionTests), plus SD 1.5's clip_skip on the existing tiny-sd15 folder.

Run by hand:  python3 scripts/parity/make_sdxl_fixtures.py   (after make_sd_fixtures.py, whose tiny-sd15 it reads)
Needs torch==2.11.0, diffusers (0.39 used), transformers 4.x, ftfy, safetensors. Nothing is downloaded: every model
is built from a config with seeded random weights, the tokenizers from the shipped CLIP merges file cut down to a
1000-token vocabulary.

Writes under Tests/StableDiffusionTests/Fixtures/sdxl/:
  tiny-sdxl/   SDXL-like diffusers folder: text_encoder (CLIPTextModel, 32 wide, quick_gelu, eos_token_id 2) and
               text_encoder_2 (CLIPTextModelWithProjection, 48 wide, gelu, projection 40, no bias), tokenizer padding
               with <|endoftext|> and tokenizer_2 with "!", a text_time UNet (one layer per block, DownBlock2D first, linear proj_in/out,
               transformer_layers_per_block [1, 1, 2], cross_attention_dim 80 = 32 + 48, add_embedding from
               40 + 6 x 8 = 88), a VAE with scaling_factor 0.13025 and force_upcast, SDXL's Euler scheduler
               (leading spacing, steps_offset 1), force_zeros_for_empty_prompt
  outputs_sdxl.safetensors   component outputs (both text encoders, the UNet with its added conditioning and its
               gradients, a UNet with reverse_transformer_layers_per_block) and generation latents of several
               settings (sizes, negative prompts, guidance 1, empty negative, clip_skip, crop coordinates, prompt_2)
  outputs_sd15_clip_skip.safetensors   tiny-sd15's StableDiffusionPipeline with clip_skip 1 and 2
"""
import os
import shutil

import numpy as np
import torch
from clip_vocabulary import write_tokenizer
from tiny_weights import perturb
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures")
OUT = os.path.join(FIXTURES, "sdxl")
VOCAB_SIZE = 1000


def text_config(hidden, intermediate, heads, act, projection):
    # eos_token_id 2 as the published SDXL encoders: the pooled output is taken at the largest id (the end token).
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=intermediate,
                          num_hidden_layers=3, num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                          layer_norm_eps=1e-5, projection_dim=projection, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1)


def unet(seed, **overrides):
    torch.manual_seed(seed)
    config = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 1, 2], cross_attention_dim=80, norm_num_groups=8, act_fn="silu",
        attention_head_dim=(2, 4, 4), use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=40 + 6 * 8)
    config.update(overrides)
    return perturb(UNet2DConditionModel(**config).eval(), seed, cross_attention_scale=0.3)


def vae(seed):
    torch.manual_seed(seed)
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          layers_per_block=1, norm_num_groups=4, sample_size=64, scaling_factor=0.13025,
                          force_upcast=True)
    return perturb(model.eval(), seed)


PROMPTS = ["a red circle on a blue background", "two small squares, photo!"]
PROMPTS_2 = ["a painting of a circle", "squares!! in the rain"]
NEGATIVE = ["blurry", ""]


def build():
    folder = os.path.join(OUT, "tiny-sdxl")
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(31)
    te = perturb(CLIPTextModel(text_config(32, 37, 4, "quick_gelu", 32)).eval(), 31)
    torch.manual_seed(32)
    te2 = perturb(CLIPTextModelWithProjection(text_config(48, 53, 4, "gelu", 40)).eval(), 32)
    un, va = unet(33), vae(34)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
                                   use_karras_sigmas=False, prediction_type="epsilon")
    tok = write_tokenizer(os.path.join(folder, "tokenizer"), VOCAB_SIZE, "<|endoftext|>")
    tok2 = write_tokenizer(os.path.join(folder, "tokenizer_2"), VOCAB_SIZE, "!")
    pipe = StableDiffusionXLPipeline(vae=va, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=un, scheduler=sched, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)  # what a user would load
    pipe.set_progress_bar_config(disable=True)
    t = {}

    # Both tokenizers and text encoders: the second pads with "!" (id 0); hidden states, pooled and projected output.
    ids = pipe.tokenizer(PROMPTS + NEGATIVE, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    ids2 = pipe.tokenizer_2(PROMPTS + NEGATIVE, padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt").input_ids
    assert ids2[0, -1].item() == 0 and ids[0, -1].item() == VOCAB_SIZE - 1
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        out2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    t.update({"text.input_ids": ids, "text.penultimate": out.hidden_states[-2], "text_2.input_ids": ids2,
              "text_2.penultimate": out2.hidden_states[-2], "text_2.text_embeds": out2.text_embeds})

    # encode_prompt as the pipeline calls it: prompt_2, negative prompts, clip_skip.
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, prompt_2=PROMPTS_2, negative_prompt=NEGATIVE,
                                                      negative_prompt_2=["dark", "noisy"], clip_skip=1)
    t.update({"encode.prompt_embeds": pe, "encode.negative_prompt_embeds": npe, "encode.pooled": pooled,
              "encode.negative_pooled": npooled})

    # One UNet forward with the added conditioning at a non-square size, and the gradients of a scalar of its
    # output with respect to the text embeddings and the pooled embeddings (what training differentiates).
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 6, generator=g)
    timesteps = torch.tensor([999.0, 321.5])
    context = torch.cat([out.hidden_states[-2][:2], out2.hidden_states[-2][:2]], dim=-1).clone().requires_grad_(True)
    text_embeds = out2.text_embeds[:2].clone().requires_grad_(True)
    time_ids = torch.tensor([[64.0, 48.0, 0.0, 0.0, 64.0, 48.0], [96.0, 80.0, 16.0, 8.0, 64.0, 48.0]])
    pred = pipe.unet(sample, timesteps, encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
    w = torch.randn(pred.shape, generator=g)
    grad_context, grad_pooled = torch.autograd.grad((pred * w).sum(), [context, text_embeds])
    t.update({"unet.sample": sample, "unet.timesteps": timesteps, "unet.context": context.detach(),
              "unet.text_embeds": text_embeds.detach(), "unet.time_ids": time_ids, "unet.out": pred.detach(),
              "unet.w": w, "unet.grad_context": grad_context, "unet.grad_text_embeds": grad_pooled})

    # A UNet whose up path's transformer depths are given per layer (reverse_transformer_layers_per_block), the
    # down path's per block and per layer: weights and config in the outputs file, not a folder.
    asym = unet(35, block_out_channels=(8, 8), down_block_types=("CrossAttnDownBlock2D",) * 2,
                up_block_types=("CrossAttnUpBlock2D",) * 2, layers_per_block=1, attention_head_dim=2, cross_attention_dim=16,
                transformer_layers_per_block=[1, [2]], reverse_transformer_layers_per_block=[[2, 1], [1, 3]],
                addition_embed_type=None, projection_class_embeddings_input_dim=None, addition_time_embed_dim=None)
    asym.save_config(os.path.join(OUT, "unet_reverse_depths"))
    save_file({k: v.contiguous() for k, v in asym.state_dict().items()},
              os.path.join(OUT, "unet_reverse_depths", "diffusion_pytorch_model.safetensors"))
    with torch.no_grad():
        t["unet_reverse.out"] = asym(sample, timesteps, encoder_hidden_states=context.detach()[..., :16]).sample

    # Generations: latents (and for two, 8-bit images) for a seed, Euler (the folder's), 8 steps.
    def run(prefix, images=False, **kwargs):
        kwargs = dict(dict(prompt=PROMPTS, num_inference_steps=8, guidance_scale=5.0, height=64, width=64), **kwargs)
        latents = pipe(**kwargs, generator=torch.manual_seed(42), output_type="latent").images
        t[f"{prefix}.latents"] = latents
        t[f"{prefix}.init_latents"] = torch.randn(latents.shape, generator=torch.manual_seed(42))
        if images:
            pixels = pipe(**kwargs, generator=torch.manual_seed(42), output_type="np").images
            t[f"{prefix}.images"] = torch.from_numpy((pixels * 255).round().astype(np.uint8))

    run("square", images=True, negative_prompt=NEGATIVE)
    run("nonsquare", images=True, negative_prompt="blurry, dark", height=48, width=64, prompt_2=PROMPTS_2,
        negative_prompt_2="noisy")
    run("guidance1", guidance_scale=1.0, height=64, width=48)
    run("zeros", num_images_per_prompt=2)  # no negative prompt: zeros (force_zeros_for_empty_prompt)
    run("clip_skip", negative_prompt=NEGATIVE, clip_skip=1)
    run("crop", negative_prompt=NEGATIVE, crops_coords_top_left=(16, 8), original_size=(96, 80),
        target_size=(64, 48))
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "outputs_sdxl.safetensors"))


def sd15_clip_skip():
    """clip_skip on SD 1.5: hidden_states[-(clip_skip + 1)] through final_layer_norm, for the prompts only."""
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "sd", "tiny-sd15"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    t = {}
    for skip in (1, 2):
        kwargs = dict(prompt=["a red circle on a blue background", "two small squares, photo"],
                      negative_prompt=["blurry", ""], num_inference_steps=6, guidance_scale=7.5, height=64, width=64,
                      clip_skip=skip)
        t[f"clip_skip_{skip}.latents"] = pipe(**kwargs, generator=torch.manual_seed(42), output_type="latent").images
        with torch.no_grad():
            t[f"clip_skip_{skip}.prompt_embeds"] = pipe.encode_prompt(kwargs["prompt"], "cpu", 1, True,
                                                                      kwargs["negative_prompt"], clip_skip=skip)[0]
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "outputs_sd15_clip_skip.safetensors"))


os.makedirs(OUT, exist_ok=True)
build()
sd15_clip_skip()
total = 0
for root, _, files in os.walk(OUT):
    for f in sorted(files):
        p = os.path.join(root, f)
        total += os.path.getsize(p)
        print(f"{os.path.relpath(p, OUT):70s} {os.path.getsize(p) / 1024:8.1f} KB")
print(f"total {total / 1024:.1f} KB")
