#!/usr/bin/env python3
"""The Python side of `textcraftor bench generate`: the same UNet forward and pipeline in diffusers, printed as JSON.
An SDXL folder (model_index.json naming text_encoder_2) runs StableDiffusionXLPipeline, without the watermark, and
its UNet forward takes random pooled embeddings and the size conditioning of --size.

Each measure is the best of --repeats wall-clock timings after one warm-up run, under torch.no_grad(); on CUDA each
timing ends with torch.cuda.synchronize().
"""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

p = argparse.ArgumentParser()
p.add_argument("--model", default=os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures", "sd", "tiny-sd15"),
               help="a diffusers Stable Diffusion folder (default: the tiny test model, as textcraftor bench generate)")
p.add_argument("--size", type=int, default=64)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--batch", type=int, default=2, help="prompts per pipeline run")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
args = p.parse_args()
if args.threads > 0:
    torch.set_num_threads(args.threads)
dtype = getattr(torch, args.dtype)
device = torch.device(args.device)
cuda = device.type == "cuda"
if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

with open(os.path.join(args.model, "model_index.json")) as f:
    xl = (json.load(f).get("text_encoder_2") or [None])[0] is not None
if xl:
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=dtype, add_watermarker=False).to(device)
else:
    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, torch_dtype=dtype).to(device)
pipe.set_progress_bar_config(disable=True)
factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
g = torch.Generator().manual_seed(0)
pairs = 2 * args.batch
sample = torch.randn(pairs, pipe.unet.config.in_channels, args.size // factor, args.size // factor, generator=g)
context = torch.randn(pairs, 77, pipe.unet.config.cross_attention_dim, generator=g)
sample, context = sample.to(device, dtype), context.to(device, dtype)
t = torch.full((pairs,), 500.0, device=device)
added = None
if xl:
    pooled = torch.randn(pairs, pipe.text_encoder_2.config.projection_dim, generator=g).to(device, dtype)
    sizes = torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * pairs, dtype=dtype, device=device)
    added = {"text_embeds": pooled, "time_ids": sizes}
prompts = ["a red circle", "a blue square", "a green triangle", "two yellow stars"]
prompts = [prompts[i % len(prompts)] for i in range(args.batch)]


def best(body):
    body()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        body()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


with torch.no_grad():
    unet_s = best(lambda: pipe.unet(sample, t, encoder_hidden_states=context, added_cond_kwargs=added))
    pipe_s = best(lambda: pipe(prompts, num_inference_steps=args.steps, guidance_scale=7.5, height=args.size,
                               width=args.size, generator=torch.manual_seed(0), output_type="np"))
out = {"unet_ms": unet_s * 1e3, "pipeline_s": pipe_s, "images_per_s": args.batch / pipe_s}
if cuda:
    out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
