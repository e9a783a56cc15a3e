#!/usr/bin/env python3
"""Image files for Tests/RewardsTests/ImageIOTests.swift: one small picture as PNG (RGB, grey, palette, RGBA) and
JPEG, the pixels Pillow decodes from each, and broken files (truncated PNG and JPEG, text named .png).

Run by hand:  python3 scripts/parity/make_image_fixtures.py   (numpy, Pillow)
"""
import json
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RewardsTests", "Fixtures", "images")
os.makedirs(OUT, exist_ok=True)
rgb = np.random.default_rng(0).integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
Image.fromarray(rgb).save(f"{OUT}/rgb.png")
Image.fromarray(rgb).convert("L").save(f"{OUT}/grey.png")
Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(f"{OUT}/palette.png")
Image.fromarray(np.dstack([rgb, np.full((6, 10), 128, np.uint8)])).save(f"{OUT}/rgba.png")
Image.fromarray(rgb).save(f"{OUT}/rgb.jpg", quality=95)
png = open(f"{OUT}/rgb.png", "rb").read()
open(f"{OUT}/truncated.png", "wb").write(png[: len(png) // 2])
jpg = open(f"{OUT}/rgb.jpg", "rb").read()
open(f"{OUT}/truncated.jpg", "wb").write(jpg[: len(jpg) // 2])
open(f"{OUT}/not-an-image.png", "wb").write(b"hello, this is text\n")
expected = {name: np.asarray(Image.open(f"{OUT}/{file}").convert("RGB")).tolist()
            for name, file in [("rgb", "rgb.png"), ("grey", "grey.png"), ("palette", "palette.png"), ("jpg", "rgb.jpg")]}
json.dump(expected, open(f"{OUT}/expected.json", "w"))
print(sorted(os.listdir(OUT)))
