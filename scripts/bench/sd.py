#!/usr/bin/env python3
"""The Python side of `textcraftor bench sd`: the same UNet forward and pipeline in diffusers, printed as JSON.

Each measure is the best of --repeats wall-clock timings after one warm-up run, under torch.no_grad().
"""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from diffusers import StableDiffusionPipeline

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--size", type=int, default=64)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=0)
args = p.parse_args()
if args.threads > 0:
    torch.set_num_threads(args.threads)

pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None)
pipe.set_progress_bar_config(disable=True)
factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
g = torch.Generator().manual_seed(0)
sample = torch.randn(2, pipe.unet.config.in_channels, args.size // factor, args.size // factor, generator=g)
context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
t = torch.tensor([500.0, 500.0])


def best(body):
    body()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        body()
        times.append(time.perf_counter() - start)
    return min(times)


with torch.no_grad():
    unet_s = best(lambda: pipe.unet(sample, t, encoder_hidden_states=context))
    pipe_s = best(lambda: pipe(["a red circle", "a blue square"], num_inference_steps=args.steps, guidance_scale=7.5,
                               height=args.size, width=args.size, generator=torch.manual_seed(0), output_type="np"))
print(json.dumps({"unet_ms": unet_s * 1e3, "pipeline_s": pipe_s}))
