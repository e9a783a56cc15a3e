#!/usr/bin/env python3
"""Tiny random Stable Diffusion folders and what diffusers computes with them (Tests/StableDiffusionTests).

Run by hand:  python3 scripts/parity/make_sd_fixtures.py
Needs torch==2.11.0, diffusers (0.39 used), transformers 4.x, ftfy, safetensors. Nothing is downloaded: every model
is built from a config with seeded random weights, and the tokenizer from the shipped CLIP merges file, cut down to
a 1000-token vocabulary so that the embedding table stays small.

Writes under Tests/StableDiffusionTests/Fixtures/sd/:
  tiny-sd15/   SD1.5-like diffusers folder: quick_gelu text encoder (eos_token_id 2: pooled output at argmax),
               1x1-conv proj_in/out, attention_head_dim as one int, PNDM scheduler, epsilon, a text encoder fp16
               variant beside the float32 weights
  tiny-sd2/    SD2-like: gelu text encoder saved as pytorch_model.bin (eos_token_id set: pooled at the first eos),
               pad token "!", linear proj_in/out, per-block head dims, upcast_attention, DDIM with v_prediction,
               the VAE's attention under the old names (query/key/value/proj_attn)
  outputs_sd15.safetensors, outputs_sd2.safetensors   inputs and outputs of each component and of full pipelines
"""
import os
import shutil

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from clip_vocabulary import write_tokenizer
from tiny_weights import perturb
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures", "sd")
VOCAB_SIZE = 1000


def text_encoder(act, eos_token_id, seed):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
                         projection_dim=32, bos_token_id=VOCAB_SIZE - 2, eos_token_id=eos_token_id, pad_token_id=1)
    return perturb(CLIPTextModel(cfg).eval(), seed)


def unet(sd2, seed):
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, act_fn="silu",
        attention_head_dim=(2, 4, 4) if sd2 else 4, use_linear_projection=sd2, upcast_attention=sd2,
        flip_sin_to_cos=True, freq_shift=0)
    return perturb(model.eval(), seed, cross_attention_scale=0.3)


def vae(seed):
    torch.manual_seed(seed)
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16, 16),
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    return perturb(model.eval(), seed)


def rename_old_vae_attention(folder):
    """Rewrites the VAE's attention keys to the names of diffusers < 0.14 (query/key/value/proj_attn)."""
    path = os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")
    sd = load_file(path)
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for k, v in sd.items():
        for a, b in renames.items():
            k = k.replace(a, b)
        out[k] = v
    save_file(out, path, metadata={"format": "pt"})


PROMPTS = ["a red circle on a blue background", "two small squares, photo"]
NEGATIVE = ["blurry", ""]


def build(name, sd2):
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    seed = 2 if sd2 else 1
    te = text_encoder("gelu" if sd2 else "quick_gelu", VOCAB_SIZE - 1 if sd2 else 2, seed)
    un, va = unet(sd2, seed + 10), vae(seed + 20)
    if sd2:
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    else:
        sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1)
    tok = write_tokenizer(os.path.join(folder, "tokenizer"), VOCAB_SIZE, "!" if sd2 else "<|endoftext|>")
    pipe = StableDiffusionPipeline(vae=va, text_encoder=te, tokenizer=tok, unet=un, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    if sd2:  # the text encoder as a torch.save .bin instead of safetensors
        os.remove(os.path.join(folder, "text_encoder", "model.safetensors"))
        te.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=False)
    else:  # an fp16 variant beside the float32 weights
        te.to(torch.float16).save_pretrained(os.path.join(folder, "text_encoder"), variant="fp16")
        te.to(torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)  # what a user would load
    pipe.set_progress_bar_config(disable=True)
    t = {}

    # tokenizer and text encoder
    ids = pipe.tokenizer(PROMPTS + NEGATIVE, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    t["text.input_ids"] = ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
    t["text.last_hidden_state"] = out.last_hidden_state
    t["text.pooler_output"] = out.pooler_output
    for i, h in enumerate(out.hidden_states):
        t[f"text.hidden_states.{i}"] = h

    # one UNet forward, and the gradient of a scalar of its output with respect to the text embeddings
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([999, 321])
    context = out.last_hidden_state[:2].clone().requires_grad_(True)
    pred = pipe.unet(sample, timesteps, encoder_hidden_states=context).sample
    w = torch.randn(pred.shape, generator=g)
    (grad,) = torch.autograd.grad((pred * w).sum(), context)
    t.update({"unet.sample": sample, "unet.timesteps": timesteps, "unet.context": context.detach(), "unet.out": pred.detach(),
              "unet.w": w, "unet.grad_context": grad})

    # VAE encode and decode
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        dist = pipe.vae.encode(image).latent_dist
        decoded = pipe.vae.decode(dist.mean).sample
    t.update({"vae.image": image, "vae.mean": dist.mean, "vae.std": dist.std, "vae.decoded": decoded})

    # full pipelines: latents and 8-bit images for a seed, guidance 7.5, negative prompts, 2 images per prompt
    def run(scheduler_name, steps, prefix, images_per_prompt=1):
        if scheduler_name == "euler":
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        kwargs = dict(prompt=PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                      height=64, width=64, num_images_per_prompt=images_per_prompt)
        latents = pipe(**kwargs, generator=torch.manual_seed(42), output_type="latent").images
        images = pipe(**kwargs, generator=torch.manual_seed(42), output_type="np").images
        t[f"{prefix}.latents"] = latents
        t[f"{prefix}.images"] = torch.from_numpy((images * 255).round().astype(np.uint8))
        t[f"{prefix}.init_latents"] = torch.randn(latents.shape, generator=torch.manual_seed(42))

    run("default", 10, "pipeline")
    if not sd2:
        run("default", 4, "pipeline_2x", images_per_prompt=2)
        run("euler", 10, "pipeline_euler")
    if sd2:
        rename_old_vae_attention(folder)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, f"outputs_{name.split('-')[1]}.safetensors"))


os.makedirs(OUT, exist_ok=True)
build("tiny-sd15", sd2=False)
build("tiny-sd2", sd2=True)
for root, _, files in os.walk(OUT):
    for f in sorted(files):
        p = os.path.join(root, f)
        print(f"{os.path.relpath(p, OUT):70s} {os.path.getsize(p) / 1024:8.1f} KB")
