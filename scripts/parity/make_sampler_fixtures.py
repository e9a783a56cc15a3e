#!/usr/bin/env python3
"""diffusers' StableDiffusionPipeline on the tiny SD1.5 folder with the samplers `--scheduler` and `--karras` add
(Tests/StableDiffusionTests/StableDiffusionPipelineTests.swift).

Run by hand:  python3 scripts/parity/make_sampler_fixtures.py   (torch 2.11.0, diffusers 0.39.0, transformers 4.x)
Reads Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15/ (written by make_sd_fixtures.py; builds nothing) and writes
Tests/StableDiffusionTests/Fixtures/sd/outputs_samplers.safetensors: for each sampler, the initial noise, the final
latents and the 8-bit images of the prompts, negative prompts, seed and size of make_sd_fixtures.py's pipelines.

Each scheduler is made as a user switches one: `XScheduler.from_config(pipe.scheduler.config, **keys)` from the
folder's PNDM config, with the keys the `--scheduler` name and `--karras` set. Euler ancestral and DPM++ 2M SDE draw
noise at every step from the pipeline's generator, after the initial latents: the Swift pipeline must draw the same.
"""
import os

import numpy as np
import torch
from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionPipeline)
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SD = os.path.join(HERE, "..", "..", "Tests", "StableDiffusionTests", "Fixtures", "sd")
PROMPTS = ["a red circle on a blue background", "two small squares, photo"]
NEGATIVE = ["blurry", ""]

# prefix: (--scheduler name, --karras, steps, images per prompt)
RUNS = {
    "euler_karras": ("euler", True, 10, 1),
    "dpm_karras": ("dpm", True, 10, 1),
    "euler_ancestral": ("euler-ancestral", False, 10, 1),
    "euler_ancestral_2x": ("euler-ancestral", False, 4, 2),
    "dpm_sde": ("dpm-sde", False, 10, 1),
    "dpm_sde_karras": ("dpm-sde", True, 12, 1),
}
NAMES = {"euler": (EulerDiscreteScheduler, {}), "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
         "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
         "dpm-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"})}


def main():
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(SD, "tiny-sd15"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    folder_config = pipe.scheduler.config
    t = {}
    for prefix, (name, karras, steps, per_prompt) in RUNS.items():
        cls, keys = NAMES[name]
        if karras:
            keys = {**keys, "use_karras_sigmas": True}
        pipe.scheduler = cls.from_config(folder_config, **keys)
        kwargs = dict(prompt=PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, height=64,
                      width=64, num_images_per_prompt=per_prompt)
        latents = pipe(**kwargs, generator=torch.manual_seed(42), output_type="latent").images
        images = pipe(**kwargs, generator=torch.manual_seed(42), output_type="np").images
        t[f"{prefix}.latents"] = latents
        t[f"{prefix}.images"] = torch.from_numpy((images * 255).round().astype(np.uint8))
        t[f"{prefix}.init_latents"] = torch.randn(latents.shape, generator=torch.manual_seed(42))
        t[f"{prefix}.timesteps"] = pipe.scheduler.timesteps.to(torch.float64)
    path = os.path.join(SD, "outputs_samplers.safetensors")
    save_file({k: v.contiguous() for k, v in t.items()}, path)
    print(f"{os.path.relpath(path, SD)}: {os.path.getsize(path) / 1024:.1f} KB")


if __name__ == "__main__":
    main()
