"""Loads the ShapesWorld bundle with diffusers and transformers, exactly as a real Stable Diffusion folder, and
compares a sample with `textcraftor generate`'s.

    python scripts/shapes/check_bundle_with_diffusers.py [BUNDLE] [--textcraftor .build/release/textcraftor]

Needs torch, diffusers, transformers and numpy (not CI: the Swift tests load the bundle with the project's own
loaders). Prints what it loaded, the largest pixel difference against our pipeline, and CLIP scores by transformers'
CLIPModel for the reward folder.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "..", "..", "Sources", "ShapesWorld", "Resources", "ShapesWorld")


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", nargs="?", default=DEFAULT)
    parser.add_argument("--textcraftor", default=os.path.join(HERE, "..", "..", ".build", "release", "textcraftor"))
    parser.add_argument("--prompt", default="a large red circle on the left, on a blue background")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(args.bundle, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    print("diffusers loaded:", type(pipe).__name__, "unet", sum(p.numel() for p in pipe.unet.parameters()),
          "vae", sum(p.numel() for p in pipe.vae.parameters()), "text encoder",
          sum(p.numel() for p in pipe.text_encoder.parameters()), "parameters")
    generator = torch.Generator().manual_seed(args.seed)
    ours_dir = tempfile.mkdtemp()
    image = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generator,
                 output_type="np").images[0]
    theirs = np.round(image * 255).astype(np.uint8)
    subprocess.run([args.textcraftor, "generate", "--model", args.bundle, "--prompt", args.prompt, "--steps",
                    str(args.steps), "--guidance", str(args.guidance), "--seed", str(args.seed), "--out", ours_dir],
                   check=True, stdout=subprocess.DEVNULL)
    pngs = sorted(f for f in os.listdir(ours_dir) if f.endswith(".png"))
    ours = read_png(os.path.join(ours_dir, pngs[0]))
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    print(f"sample {theirs.shape}: max |ours - diffusers| = {diff.max()} (mean {diff.mean():.4f}) over {diff.size} values")

    clip_dir = os.path.join(args.bundle, "rewards", "clip")
    clip = CLIPModel.from_pretrained(clip_dir, torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(args.bundle, "tokenizer"))
    pixels = torch.from_numpy(theirs).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        ids = tokenizer([args.prompt, "a small green square at the top"], padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt").input_ids
        image_embeds = torch.nn.functional.normalize(clip.get_image_features((pixels - mean) / std), dim=-1)
        text_embeds = torch.nn.functional.normalize(clip.get_text_features(ids), dim=-1)
    print("transformers CLIPModel loaded; CLIP scores of the sample (its prompt, another):",
          [round(x, 4) for x in (image_embeds @ text_embeds.T)[0].tolist()])
    return 0 if diff.max() <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
