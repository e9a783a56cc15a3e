#!/usr/bin/env python3
"""Checks files written by `textcraftor export`/`convert` with diffusers' own single-file loader.

Run by hand after building textcraftor:
    /tmp/pyref/bin/python scripts/parity/check_exported_single_files.py [path/to/textcraftor]
Needs torch==2.11.0, diffusers==0.39.0, transformers 4.x (4.57.6 used), safetensors. Nothing is downloaded.

For each tiny fixture model (SD 1.5, SD 2, SDXL) it runs
  textcraftor convert FOLDER --out X.safetensors                       (folder -> original layout)
  textcraftor export --model FILE --model-config FOLDER --text-encoder FINE --out Y.safetensors   (a fine-tune swapped in)
  textcraftor export ... --dtype float16                                (half precision)
and loads each with `from_single_file(path, config=FOLDER, local_files_only=True)`: every component must equal the
folder's (or, for the text encoder of an export, the fine-tuned encoder's) bit for bit, or as float16 rounding.
"""
import os
import subprocess
import sys
import tempfile

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures")
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "release", "textcraftor")

CASES = [  # name, folder, pipeline class, fine-tuned encoder (file given to --text-encoder, its folder, place)
    ("tiny-sd15", os.path.join(FIXTURES, "sd", "tiny-sd15"), StableDiffusionPipeline,
     ("single/tc_text_tiny_sd15.pth", "single/tc_text_tiny_sd15", "text_encoder", CLIPTextModel)),
    ("tiny-sd2", os.path.join(FIXTURES, "sd", "tiny-sd2"), StableDiffusionPipeline, None),
    ("tiny-sdxl", os.path.join(FIXTURES, "sdxl", "tiny-sdxl"), StableDiffusionXLPipeline,
     ("single/tc_text2_tiny_sdxl.safetensors", "single/tc_text2_tiny_sdxl", "text_encoder_2", CLIPTextModelWithProjection)),
]


def run(*args):
    subprocess.run([BIN, *args], check=True, stdout=subprocess.DEVNULL)


def compare(path, folder, cls, replaced=None, dtype=None):
    single = cls.from_single_file(path, config=folder, local_files_only=True, torch_dtype=torch.float32)
    reference = cls.from_pretrained(folder, torch_dtype=torch.float32)
    names = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if cls is StableDiffusionXLPipeline else ())
    checked = 0
    for name in names:
        a = getattr(single, name).state_dict()
        b = (replaced[1] if replaced and replaced[0] == name else getattr(reference, name)).state_dict()
        keys = [k for k in b if not k.endswith("position_ids")]
        assert set(keys) <= set(a), (name, set(keys) - set(a))
        for k in keys:
            expected = b[k].to(dtype).float() if dtype is not None and b[k].is_floating_point() else b[k]
            assert torch.equal(a[k], expected), (path, name, k)
            checked += 1
    return checked


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder, cls, fine in CASES:
            converted = os.path.join(tmp, name + ".safetensors")
            run("convert", folder, "--out", converted)
            print(f"{name}: convert FOLDER -> file: {compare(converted, folder, cls)} tensors equal the folder's")
            half = os.path.join(tmp, name + "-fp16.safetensors")
            run("export", "--model", converted, "--model-config", folder, "--dtype", "float16", "--out", half)
            print(f"{name}: export --dtype float16: {compare(half, folder, cls, dtype=torch.float16)} tensors are the folder's rounded")
            if fine:
                file, encoder_folder, place, encoder_cls = fine
                exported = os.path.join(tmp, name + "-tc.safetensors")
                run("export", "--model", converted, "--model-config", folder, "--text-encoder", os.path.join(FIXTURES, file),
                    "--out", exported)
                encoder = encoder_cls.from_pretrained(os.path.join(FIXTURES, encoder_folder), torch_dtype=torch.float32)
                n = compare(exported, folder, cls, replaced=(place, encoder))
                print(f"{name}: export --text-encoder {os.path.basename(file)}: {n} tensors equal ({place} the fine-tuned one)")
    print("ok: diffusers' from_single_file reads every exported file as written")


if __name__ == "__main__":
    main()
