#!/usr/bin/env python3
"""Textual-inversion embeddings for the tiny SD 1.5 and SDXL folders, and the prompt embeddings diffusers'
`load_textual_inversion` gives with them (Tests/StableDiffusionTests/TokenEmbeddingTests.swift).

Run by hand:  python3 scripts/parity/make_token_fixtures.py   (reads tiny-sd15 and tiny-sdxl, builds no model)
Needs torch==2.11.0, diffusers (0.39 used), transformers 4.x, ftfy, safetensors.

Writes under Tests/StableDiffusionTests/Fixtures/token/ (seeded rows, 0.02 x randn as the models' embeddings):
  learned_embeds.safetensors   diffusers' format, {"<shape>": [2, 32]} (a token of two vectors)
  one.safetensors              diffusers' format, {"<one>": [32]} (one vector as a bare [D] row)
  tiny.pt                      AUTOMATIC1111's .pt, torch.save of {string_to_token, string_to_param {'*': [2, 32]},
                               name "tiny", step, sd_checkpoint, sd_checkpoint_name} (token: the stem, "tiny")
  emb.safetensors              A1111's safetensors, emb_params [2, 32] (token: the stem, "emb")
  xl.safetensors               SDXL's, clip_l [2, 32] and clip_g [2, 48] (token: the stem, "xl")
  expected.safetensors         what diffusers computes: `encode_prompt` of PROMPTS_SD on tiny-sd15 with each SD file
                               loaded (sd_<name>: [3, 77, 32]) and of PROMPTS_XL on tiny-sdxl with xl.safetensors loaded
                               as diffusers documents it (clip_l into text_encoder, clip_g into text_encoder_2:
                               xl_prompt_embeds [2, 77, 80], xl_pooled [2, 40])

With --check-ours DIR: DIR holds the files our writers made of the same rows (the Swift test
`TokenEmbeddingTests.writersGiveDiffusersTheSameEmbeddings` writes them to $TMPDIR/textcraftor-token-ours: diffusers
learned_embeds, A1111 .pt and .safetensors, SDXL clip_l/clip_g); each is read with torch.load(weights_only=True) or
safetensors, loaded into diffusers, and its prompt embeddings compared with expected.safetensors (max abs difference
printed; 0 expected).
"""
import argparse
import os
import shutil
import tempfile

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures")
SD = os.path.join(FIXTURES, "sd", "tiny-sd15")
XL = os.path.join(FIXTURES, "sdxl", "tiny-sdxl")
OUT = os.path.join(FIXTURES, "token")

# Each SD file's token, and prompts naming it (appended, first, in the middle, twice, absent).
SD_FILES = {"learned_embeds.safetensors": "<shape>", "one.safetensors": "<one>", "tiny.pt": "tiny",
            "emb.safetensors": "emb"}
PROMPTS_SD = ["a red circle, {t}", "{t} a blue square on {t}", "a photo"]
PROMPTS_XL = ["a red circle, xl", "xl a blue square"]


def rows(seed, n, width):
    return (torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.02).contiguous()


def sd_embeds(pipe, prompts):
    embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    return embeds


def xl_embeds(pipe, prompts):
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    return embeds, pooled


def load_sd(path, token):
    pipe = StableDiffusionPipeline.from_pretrained(SD, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(path, token=token)
    return pipe


def load_xl(path):
    pipe = StableDiffusionXLPipeline.from_pretrained(XL)
    state = load_file(path)
    pipe.load_textual_inversion(state["clip_l"], token="xl", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="xl", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    return pipe


def expected_outputs(directory):
    out = {}
    for name, token in SD_FILES.items():
        pipe = load_sd(os.path.join(directory, name), token)
        out["sd_" + name.split(".")[0]] = sd_embeds(pipe, [p.format(t=token) for p in PROMPTS_SD])
    pipe = load_xl(os.path.join(directory, "xl.safetensors"))
    out["xl_prompt_embeds"], out["xl_pooled"] = xl_embeds(pipe, PROMPTS_XL)
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_fixtures():
    os.makedirs(OUT, exist_ok=True)
    shape, one = rows(0, 2, 32), rows(1, 1, 32)[0]
    a1111, emb = rows(2, 2, 32), rows(3, 2, 32)
    clip_l, clip_g = rows(4, 2, 32), rows(5, 2, 48)
    save_file({"<shape>": shape}, os.path.join(OUT, "learned_embeds.safetensors"))
    save_file({"<one>": one}, os.path.join(OUT, "one.safetensors"))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(a1111)}, "name": "tiny",
                "step": 7, "sd_checkpoint": None, "sd_checkpoint_name": "tiny-sd15"}, os.path.join(OUT, "tiny.pt"))
    save_file({"emb_params": emb}, os.path.join(OUT, "emb.safetensors"))
    save_file({"clip_l": clip_l, "clip_g": clip_g}, os.path.join(OUT, "xl.safetensors"))
    expected = expected_outputs(OUT)
    save_file(expected, os.path.join(OUT, "expected.safetensors"))
    for key, value in sorted(expected.items()):
        print(f"{key}: {list(value.shape)}")


def check_ours(directory):
    """Our writers' files (named as the fixtures) give diffusers the fixtures' embeddings."""
    for name in ["tiny.pt"]:
        state = torch.load(os.path.join(directory, name), weights_only=True)
        print(f"{name}: torch.load(weights_only=True) keys {sorted(state)}, name {state['name']!r}, "
              f"string_to_param['*'] {list(state['string_to_param']['*'].shape)}")
    reference = load_file(os.path.join(OUT, "expected.safetensors"))
    ours = expected_outputs(directory)
    for key in sorted(reference):
        difference = (ours[key] - reference[key]).abs().max().item()
        print(f"{key}: max |ours - fixture files| = {difference:.3g}")
        assert difference == 0, key


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-ours", metavar="DIR")
    args = parser.parse_args()
    if args.check_ours:
        check_ours(args.check_ours)
    else:
        write_fixtures()
