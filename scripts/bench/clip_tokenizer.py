#!/usr/bin/env python3
"""The Python side of `textcraftor bench tokenize`: transformers' CLIPTokenizer on the same folder and prompts, timed
the same way, printed as one JSON object of numbers.

Each repeat loads the folder, tokenizes every prompt with an empty word cache, then again with the words cached
(padding="max_length", truncation=True, as diffusers' pipelines call it); the best of --repeats of each is kept.
ids_checksum is the same sum as the Swift side's, so the two can say whether their ids agree. Needs transformers
(4.x with ftfy is what Stable Diffusion's pipelines tokenize with); nothing is downloaded. (Not named tokenize.py:
that would shadow the standard library's tokenize module, which transformers imports.)
"""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--tokenizer", required=True, help="a tokenizer folder (vocab.json, merges.txt)")
p.add_argument("--prompts-file", required=True, help="a JSON list of prompts")
p.add_argument("--max-length", type=int, default=77)
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()

with open(args.prompts_file, encoding="utf-8") as f:
    prompts = json.load(f)


def seconds(body):
    start = time.perf_counter()
    result = body()
    return time.perf_counter() - start, result


def tokenize(tokenizer):
    return tokenizer(prompts, padding="max_length", max_length=args.max_length, truncation=True)["input_ids"]


load = cold = warm = float("inf")
ids = None
for _ in range(args.repeats):
    t, tokenizer = seconds(lambda: CLIPTokenizer.from_pretrained(args.tokenizer))
    load = min(load, t)
    t, ids = seconds(lambda: tokenize(tokenizer))
    cold = min(cold, t)
    t, _ = seconds(lambda: tokenize(tokenizer))
    warm = min(warm, t)

try:
    import ftfy  # noqa: F401

    has_ftfy = 1
except ImportError:
    has_ftfy = 0
checksum = sum(i * ((row * args.max_length + column) % 1009 + 1)
               for row, row_ids in enumerate(ids) for column, i in enumerate(row_ids))
print(json.dumps({
    "load_ms": load * 1e3,
    "cold_prompts_per_s": len(prompts) / cold,
    "warm_prompts_per_s": len(prompts) / warm,
    "ids_checksum": checksum,
    "transformers_major": int(transformers.__version__.split(".")[0]),
    "ftfy": has_ftfy,
}))
