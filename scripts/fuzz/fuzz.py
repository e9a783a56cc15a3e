#!/usr/bin/env python3
"""A fuzzer of the textcraftor command line: mutated files and flags run through the real binary, one process each.

Every input is a seed from the repository (checkpoints, configs, prompt files, images, tokenizers, TOML files, flags)
changed by a seeded mutation, then run through the command that reads it (inspect, tokenize, generate, score, train,
eval). Each run is classified:

  error     exit 1 with one line "Error: ..." on stderr, short (<= 450 characters) and free of control characters
  accepted  exit 0
  messy     a non-zero exit whose stderr is not one clean line (a backtrace, a dump of the input, escape codes)
  crash     killed by a signal (SIGSEGV, SIGABRT from a trap or fatalError, SIGILL)
  hang      still running after --timeout seconds (then killed)
  memory    peak resident memory (the child's ru_maxrss) over --max-mb

Usage (from the repository root, after `make build` or `make release`):
  python3 scripts/fuzz/fuzz.py --count 10000 --jobs 2           # the full run; a summary table at the end
  python3 scripts/fuzz/fuzz.py --count 120 --seed 1 --quick      # the fast subset that `make test` runs
The same --seed gives the same inputs. Findings (other than error/accepted) are kept under --keep (default
.build/fuzz/findings) with the command line that reproduces them; --json writes the summary as JSON.
Only the Python standard library is used.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SD = os.path.join(ROOT, "Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15")
SDXL = os.path.join(ROOT, "Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl")
HF = os.path.join(ROOT, "Tests/RewardsTests/Fixtures/hf")
IMAGES = os.path.join(ROOT, "Tests/RewardsTests/Fixtures/images")
SERIALIZATION = os.path.join(ROOT, "Tests/TorchTests/Fixtures/serialization")
OPENCLIP = os.path.join(ROOT, "Tests/RewardsTests/Fixtures/openclip/tiny")
SIGLIP = os.path.join(ROOT, "Tests/RewardsTests/Fixtures/siglip")
CLEAN = re.compile(r"^Error: [^\x00-\x08\x0b-\x1f\x7f]{1,450}\n?$")

INTERESTING_NUMBERS = [0, -1, 1, 2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1,
                       10**12, 10**6, -10**9, 1e-30, 1e30, 0.5, -0.0, 1048576]
INTERESTING_STRINGS = ["", "x", "\u001b[31mred\u001b[0m", "a" * 5000, "é", "\u0000", "../../etc/passwd", "null", "1e999",
                       "nan", "inf", "-1", "\n\n", "🙂" * 50]


# ---------------------------------------------------------------- byte and value mutations

def mutate_bytes(rng, data, max_edits=8):
    data = bytearray(data)
    for _ in range(rng.randint(1, max_edits)):
        op = rng.randrange(7)
        if not data:
            data += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(len(data))
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x20, 0x0A])
        elif op == 2:
            del data[i:i + rng.randint(1, 64)]
        elif op == 3:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 4:
            data = data[:i]  # truncation
        elif op == 5:
            n = rng.choice(INTERESTING_NUMBERS)
            if isinstance(n, int):
                data[i:i + 8] = struct.pack("<q", max(-2**63, min(2**63 - 1, n)))
        else:
            j = rng.randrange(len(data))
            data[i:i] = data[j:j + rng.randint(1, 256)]  # duplicate a chunk
    return bytes(data)


def mutate_value(rng, value, depth=0):
    """A JSON value changed in one place: a number made extreme, a type swapped, a key dropped or added."""
    if isinstance(value, dict) and value and depth < 3 and rng.random() < 0.8:
        value = dict(value)
        key = rng.choice(list(value))
        op = rng.randrange(5)
        if op == 0:
            del value[key]
        elif op == 1:
            value["unknown_" + str(rng.randrange(100))] = rng.choice(INTERESTING_NUMBERS)
        else:
            value[key] = mutate_value(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        value = list(value)
        i = rng.randrange(len(value))
        op = rng.randrange(4)
        if op == 0:
            del value[i]
        elif op == 1:
            value.append(value[i])
        else:
            value[i] = mutate_value(rng, value[i], depth + 1)
        return value
    choice = rng.randrange(6)
    if choice < 3:
        return rng.choice(INTERESTING_NUMBERS)
    if choice == 3:
        return rng.choice(INTERESTING_STRINGS)
    if choice == 4:
        return rng.choice([None, [], {}, True, [1] * rng.randint(2, 1000)])
    return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def copy_model(folder, source=SD):
    """A copy of a tiny model folder whose files are links (they are only read), so a config can be changed cheaply."""
    os.makedirs(folder, exist_ok=True)
    for sub in os.listdir(source):
        src = os.path.join(source, sub)
        if os.path.isdir(src):
            os.makedirs(os.path.join(folder, sub))
            for name in os.listdir(src):
                os.symlink(os.path.join(src, name), os.path.join(folder, sub, name))
        else:
            os.symlink(src, os.path.join(folder, sub))
    return folder


# ---------------------------------------------------------------- input classes: (name, weight, builder)
# A builder gets (rng, folder) and returns the argument list of one run.

def safetensors_case(rng, folder):
    seed = rng.choice([os.path.join(SD, "unet/diffusion_pytorch_model.safetensors"),
                       os.path.join(SD, "text_encoder/model.safetensors"), os.path.join(SERIALIZATION, "dtypes.safetensors")])
    data = read(seed)
    if rng.random() < 0.5:  # edit the JSON header, where the interesting fields are
        (length,) = struct.unpack("<Q", data[:8])
        try:
            header = json.loads(data[8:8 + length])
            header = mutate_value(rng, header)
            blob = json.dumps(header).encode()
            data = struct.pack("<Q", len(blob) if rng.random() < 0.9 else rng.choice([0, 2**40, len(blob) + 7])) + blob + data[8 + length:]
        except Exception:
            data = mutate_bytes(rng, data)
    else:
        data = mutate_bytes(rng, data)
    path = os.path.join(folder, "weights.safetensors")
    write(path, data)
    return ["inspect", path]


def pickle_case(rng, folder):
    seed = rng.choice([os.path.join(SERIALIZATION, n) for n in os.listdir(SERIALIZATION) if n.endswith(".pt")]
                      + [os.path.join(OPENCLIP, "hps_tiny.pt"), os.path.join(HF, "aesthetic.pth")])
    path = os.path.join(folder, "checkpoint.pt")
    try:
        with zipfile.ZipFile(seed) as z:
            names = z.namelist()
            pkl = next(n for n in names if n.endswith("data.pkl"))
            with zipfile.ZipFile(path, "w") as out:
                for n in names:
                    content = z.read(n)
                    if n == pkl or (rng.random() < 0.1):
                        content = mutate_bytes(rng, content, 4)
                    out.writestr(n, content)
    except (zipfile.BadZipFile, StopIteration):
        write(path, mutate_bytes(rng, read(seed)))
    if rng.random() < 0.2:
        write(path, mutate_bytes(rng, read(path)))
    return ["inspect", path]


def deep_pickle_case(rng, folder):
    """Deeply nested or huge pickles: the stack and the allocator, not the parser's happy path."""
    depth = rng.choice([300, 10_000, 100_000])
    op = rng.choice([b"]", b"}", b"(", b")"])
    body = b"\x80\x02" + op * depth + b"."
    path = os.path.join(folder, "deep.pt")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", body)
        z.writestr("archive/version", "3\n")
    return ["inspect", path]


def config_case(rng, folder):
    model = copy_model(os.path.join(folder, "model"))
    component = rng.choice(["text_encoder/config.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
                            "model_index.json"])
    path = os.path.join(model, component)
    config = json.loads(read(os.path.join(SD, component)))
    for _ in range(rng.randint(1, 3)):
        config = mutate_value(rng, config)
    os.unlink(path)
    write(path, json.dumps(config))
    return ["generate", "--model", model, "--prompt", "a red circle", "--steps", "2", "--out", os.path.join(folder, "out")]


def sdxl_case(rng, folder):
    """SDXL folders: a mutated config of one of its six components, or a component missing or swapped."""
    model = copy_model(os.path.join(folder, "model"), SDXL)
    roll = rng.random()
    if roll < 0.15:  # a component missing (a refiner has no text_encoder; a broken download has no text_encoder_2)
        shutil.rmtree(os.path.join(model, rng.choice(["text_encoder", "text_encoder_2", "tokenizer_2", "unet", "vae"])))
    elif roll < 0.25:  # the second encoder in the first's place: widths no longer add up
        shutil.rmtree(os.path.join(model, "text_encoder"))
        copy_model(os.path.join(model, "text_encoder"), os.path.join(SDXL, "text_encoder_2"))
    else:
        component = rng.choice(["text_encoder/config.json", "text_encoder_2/config.json", "unet/config.json",
                                "vae/config.json", "scheduler/scheduler_config.json", "model_index.json",
                                "tokenizer_2/special_tokens_map.json", "tokenizer_2/tokenizer_config.json"])
        path = os.path.join(model, component)
        if os.path.exists(path):
            config = json.loads(read(os.path.join(SDXL, component)))
            for _ in range(rng.randint(1, 3)):
                config = mutate_value(rng, config)
            os.unlink(path)
            write(path, json.dumps(config))
    flags = rng.choice([[], ["--clip-skip", str(rng.choice([0, 1, 2, 50, -1]))], ["--crop", rng.choice(["0,0", "-1,5", "1e9,0", "x"])],
                        ["--negative-prompt", ""], ["--prompt-2", "a blue square"], ["--guidance", "1"]])
    return ["generate", "--model", model, "--prompt", "a red circle", "--steps", "2", "--out", os.path.join(folder, "out")] + flags


def tokenizer_case(rng, folder):
    model = copy_model(os.path.join(folder, "model"))
    name = rng.choice(["vocab.json", "merges.txt"])
    path = os.path.join(model, "tokenizer", name)
    data = read(os.path.join(SD, "tokenizer", name))
    os.unlink(path)
    write(path, mutate_bytes(rng, data, 16))
    return ["tokenize", "--model", model, rng.choice(["a photo of an astronaut", "x" * 2000, "a, b. c!"])]


def prompt_text_case(rng, folder):
    text = rng.choice(INTERESTING_STRINGS + ["a" * rng.choice([1000, 120_000]), "word " * 5000,
                                             "".join(chr(rng.randrange(32, 0x3000)) for _ in range(300))])
    flags = []
    if rng.random() < 0.4:
        flags = ["--max-length", str(rng.choice([0, 1, 2, 77, 1000, 2**31, -5, 10**12]))]
    if rng.random() < 0.3:
        flags.append("--pad")
    return ["tokenize"] + flags + [text]


def prompt_file_case(rng, folder):
    kind = rng.choice(["txt", "tsv", "csv", "json"])
    seeds = {
        "txt": "a red circle\na blue square\n",
        "tsv": "Prompt\tCategory\tChallenge\tNote\na red circle\tShapes\tBasic\t\n",
        "csv": "prompt,other\n\"a red circle\",1\n",
        "json": json.dumps(["a red circle", "a blue square"]),
    }
    data = seeds[kind].encode()
    if rng.random() < 0.2:
        data = (("H" * 120_000) + "\n").encode() + data  # a huge header line
    data = mutate_bytes(rng, data, 6)
    path = os.path.join(folder, "prompts." + kind)
    write(path, data)
    out = os.path.join(folder, "run")
    return ["train", "--model", SD, "--prompts", path, "--reward", "clip=" + os.path.join(HF, "clip"), "--out", out,
            "--max-steps", "1", "--sampling-steps", "2", "--grad-window", "1"]


def image_case(rng, folder):
    seed = rng.choice([os.path.join(IMAGES, n) for n in ["rgb.png", "rgb.jpg", "grey.png", "palette.png", "rgba.png"]])
    data = read(seed)
    if rng.random() < 0.3 and seed.endswith(".png"):  # claim a huge size in IHDR (its CRC then fails, or not)
        w, h = rng.choice([(12000, 12000), (40000, 40000), (1, 10**9), (0, 5)])
        data = data[:16] + struct.pack(">II", w, h) + data[24:]
    elif rng.random() < 0.3 and seed.endswith(".jpg"):
        i = data.find(b"\xff\xc0")
        if i > 0:
            w, h = rng.choice([(40000, 40000), (65535, 65535), (0, 0)])
            data = data[:i + 5] + struct.pack(">HH", h, w) + data[i + 9:]
    else:
        data = mutate_bytes(rng, data)
    path = os.path.join(folder, "image" + os.path.splitext(seed)[1])
    write(path, data)
    return ["score", "--images", path, "--prompt", "a red circle", "--reward", "clip=" + os.path.join(HF, "clip")]


def reward_flag_case(rng, folder):
    gamma = rng.choice(["inf", "-inf", "nan", "1e309", "0", "-1", "", "abc", "0.5"])
    spec = rng.choice(["clip=" + os.path.join(HF, "clip") + ":" + gamma, "clip=", "=x", "vibes=/tmp", "clip",
                       "hpsv2=" + os.path.join(HF, "aesthetic.pth"), "pickscore=" + os.path.join(OPENCLIP, "hps_tiny.pt"),
                       "aesthetic=" + os.path.join(HF, "clip")])
    return ["score", "--images", os.path.join(IMAGES, "rgb.png"), "--prompt", "x", "--reward", spec] + (["--json"] if rng.random() < 0.5 else [])


def toml_case(rng, folder):
    config = {"model": SD, "prompts": os.path.join(folder, "p.txt"), "out": os.path.join(folder, "run"), "max_steps": 1,
              "sampling_steps": 2, "grad_window": 1, "lr": 1e-3, "guidance": 7.5,
              "reward": [{"name": "clip", "paths": [os.path.join(HF, "clip")]}]}
    write(os.path.join(folder, "p.txt"), "a red circle\n")
    for _ in range(rng.randint(1, 3)):
        config = mutate_value(rng, config)
    if isinstance(config, dict) and not (isinstance(config.get("max_steps"), int) and config["max_steps"] <= 2):
        config["max_steps"] = 1  # a run of the default 1000 steps (or 10**12) is long, not hung: keep it short
    lines = []
    rewards = config.pop("reward", None) if isinstance(config, dict) else None
    for k, v in (config.items() if isinstance(config, dict) else []):
        lines.append(f"{k} = {toml_value(v)}")
    if isinstance(rewards, list):
        for r in rewards:
            lines.append("[[reward]]")
            for k, v in (r.items() if isinstance(r, dict) else []):
                lines.append(f"{k} = {toml_value(v)}")
    text = "\n".join(lines) + "\n"
    if rng.random() < 0.2:
        text = mutate_bytes(rng, text.encode(), 4).decode("utf-8", "replace")
    path = os.path.join(folder, "run.toml")
    write(path, text)
    return ["train", "--config", path]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return '""'
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v[:50]) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def train_flag_case(rng, folder):
    write(os.path.join(folder, "p.txt"), "a red circle\n")
    flag, values = rng.choice([("--guidance", ["0", "1", "-1", "nan", "1e9"]), ("--batch-size", ["0", "-1", "3", "1000000"]),
                               ("--lr", ["0", "-1", "nan", "inf", "1e9"]), ("--grad-window", ["0", "3", "100"]),
                               ("--resolution", ["0", "7", "1000000", "-8"]), ("--t-range", ["5", "600,100", "a,b"]),
                               ("--betas", ["0.9", "1,1", "x"]), ("--device", ["gpu", "cuda:99", "cpu:0"]),
                               ("--mixed-precision", ["fp8", "bf16"]), ("--max-grad-norm", ["0", "-1"]),
                               ("--seed", ["-1", "18446744073709551616"]), ("--dist-backend", ["mpi"])])
    if rng.random() < 0.3:  # the encoder choice, on SD (one encoder) or SDXL (two)
        flag, values = "--train", ["text-encoder", "text-encoder-2", "text-encoders", "unet", "vae", "", "text_encoder"]
    return ["train", "--model", rng.choice([SD, SDXL]), "--prompts", os.path.join(folder, "p.txt"),
            "--reward", "clip=" + os.path.join(HF, "clip"), "--out", os.path.join(folder, "run"), "--max-steps", "1",
            "--sampling-steps", "2", "--grad-window", "1", flag, rng.choice(values)]


def adapter_file_case(rng, folder):
    """LoRA, textual-inversion, single-file encoder and single-file checkpoint files (the committed fixtures), mutated in their safetensors
    header or bytes, given to the flag that reads them (generate --lora/--embedding/--text-encoder/--model) or to inspect."""
    fixtures = os.path.join(ROOT, "Tests/StableDiffusionTests/Fixtures")
    kind, model, name = rng.choice([
        ("--lora", SD, "lora/sd15_kohya.safetensors"), ("--lora", SD, "lora/sd15_peft.safetensors"),
        ("--lora", SD, "lora/sd15_old.safetensors"), ("--lora", SDXL, "lora/sdxl_kohya.safetensors"),
        ("--embedding", SD, "token/learned_embeds.safetensors"), ("--embedding", SD, "token/emb.safetensors"),
        ("--embedding", SD, "token/tiny.pt"), ("--embedding", SDXL, "token/xl.safetensors"),
        ("--text-encoder", SD, "single/tc_text_tiny_sd15.pth"),
        ("--text-encoder", SDXL, "single/tc_text2_tiny_sdxl.safetensors"),
        ("--model", SD, "single/tiny-sd15.safetensors"), ("--model", SDXL, "single/tiny-sdxl.safetensors")])
    data = read(os.path.join(fixtures, name))
    if name.endswith(".safetensors") and rng.random() < 0.5:
        (length,) = struct.unpack("<Q", data[:8])
        header = mutate_value(rng, json.loads(data[8:8 + length]))
        blob = json.dumps(header).encode()
        data = struct.pack("<Q", len(blob)) + blob + data[8 + length:]
    else:
        data = mutate_bytes(rng, data)
    path = os.path.join(folder, os.path.basename(name))
    write(path, data)
    if rng.random() < 0.3:
        return ["inspect", path]
    if kind == "--model":  # a whole single-file checkpoint, its configs from the folder it was made from
        return ["generate", "--model", path, "--model-config", model, "--prompt", "a red circle", "--steps", "2",
                "--out", os.path.join(folder, "out")]
    return ["generate", "--model", model, "--prompt", "a red circle", "--steps", "2", "--out", os.path.join(folder, "out"),
            kind, path + (rng.choice(["", ":0.5", ":nan", ":x"]) if kind == "--lora" else "")]

def siglip_reward_case(rng, folder):
    """aesthetic25's inputs: a SigLIP folder (vision or whole SiglipModel) with its config.json mutated, its
    model.safetensors header or bytes mutated, or the v2.5 head (.pth or .safetensors) mutated; scored by `score`."""
    model = copy_model(os.path.join(folder, "siglip"), os.path.join(SIGLIP, rng.choice(["vision", "full"])))
    head = os.path.join(SIGLIP, rng.choice(["aesthetic_predictor_v2_5.pth", "aesthetic_predictor_v2_5.safetensors"]))
    target = rng.choice(["config", "weights", "head"])
    if target == "config":
        path = os.path.join(model, "config.json")
        config = json.loads(read(path))
        for _ in range(rng.randint(1, 3)):
            config = mutate_value(rng, config)
        os.unlink(path)
        write(path, json.dumps(config))
    else:
        source = os.path.join(model, "model.safetensors") if target == "weights" else head
        data = read(source)
        if source.endswith(".safetensors") and rng.random() < 0.5:
            (length,) = struct.unpack("<Q", data[:8])
            blob = json.dumps(mutate_value(rng, json.loads(data[8:8 + length]))).encode()
            data = struct.pack("<Q", len(blob)) + blob + data[8 + length:]
        else:
            data = mutate_bytes(rng, data)
        path = os.path.join(folder, os.path.basename(source))
        if target == "weights":
            os.unlink(source)
            path = source
        write(path, data)
        if target == "head":
            head = path
    return ["score", "--images", os.path.join(IMAGES, "rgb.png"), "--prompt", "x", "--reward",
            f"aesthetic25={model},{head}" + rng.choice(["", ":0.5", ":nan"])] + (["--preprocessing", "training"] if rng.random() < 0.3 else [])


def generate_flag_case(rng, folder):
    """generate's sampler and SDXL flags, one to three at a time, on SD or SDXL."""
    choices = [("--scheduler", ["ddim", "euler", "euler-ancestral", "dpm", "dpm-sde", "pndm", "lms", "", "EULER"]),
               ("--karras", None), ("--clip-skip", ["0", "1", "2", "-1", "30", "x"]),
               ("--prompt-2", ["", "a blue square", "x" * 5000]), ("--negative-prompt-2", ["", "blurry"]),
               ("--crop", ["0,0", "8,8", "-1,0", "1000000,0", "a,b", "5"]), ("--steps", ["1", "0", "1001", "-2"]),
               ("--guidance", ["0", "1", "nan", "-5"]), ("--height", ["64", "63", "0", "-8"]), ("--width", ["32", "1000000"]),
               ("--eta", ["0", "1", "-1", "nan"])]
    arguments = []
    for flag, values in rng.sample(choices, rng.randint(1, 3)):
        arguments += [flag] if values is None else [flag, rng.choice(values)]
    return ["generate", "--model", rng.choice([SD, SDXL]), "--prompt", "a red circle", "--steps", "2",
            "--out", os.path.join(folder, "out")] + arguments


def single_file_io_case(rng, folder):
    """Single-file checkpoints through export and convert (both directions), generate without --model-config (the
    built-in published configs), tokenize and inspect: a committed fixture mutated in its header or bytes, or a sound
    one with odd export flags."""
    fixtures = os.path.join(ROOT, "Tests/StableDiffusionTests/Fixtures")
    model, name = rng.choice([(SD, "single/tiny-sd15.safetensors"), (SD, "single/tiny-sd2.safetensors"),
                              (SDXL, "single/tiny-sdxl.safetensors")])
    if "sd2" in name:
        model = os.path.join(os.path.dirname(SD), "tiny-sd2")
    data = read(os.path.join(fixtures, name))
    if rng.random() < 0.6:
        if rng.random() < 0.5:
            (length,) = struct.unpack("<Q", data[:8])
            header = mutate_value(rng, json.loads(data[8:8 + length]))
            blob = json.dumps(header).encode()
            data = struct.pack("<Q", len(blob)) + blob + data[8 + length:]
        else:
            data = mutate_bytes(rng, data)
    path = os.path.join(folder, os.path.basename(name))
    write(path, data)
    out = os.path.join(folder, rng.choice(["out.safetensors", "out", "out.ckpt", "sub/dir/out.safetensors"]))
    flags = []
    for flag, values in rng.sample([("--dtype", ["float16", "bfloat16", "float32", "int8", ""]),
                                    ("--format", ["single-file", "diffusers", "ckpt"]),
                                    ("--prediction-type", ["epsilon", "v_prediction", "sample", "v", ""]),
                                    ("--text-encoder", [os.path.join(fixtures, "single/tc_text_tiny_sd15.pth"),
                                                        os.path.join(fixtures, "single/tc_text2_tiny_sdxl"), folder]),
                                    ("--lora", [os.path.join(fixtures, "lora/sd15_kohya.safetensors") + ":0.5",
                                                os.path.join(fixtures, "lora/sdxl_kohya.safetensors")])], rng.randint(0, 2)):
        flags += [flag, rng.choice(values)]
    return rng.choice([
        ["export", "--model", path, "--model-config", model, "--out", out] + flags,
        ["export", "--model", model, "--out", out] + flags,
        ["convert", path, "--model-config", model, "--out", out],
        ["convert", model, "--out", out],
        ["generate", "--model", path, "--prompt", "a red circle", "--steps", "2", "--out", os.path.join(folder, "g")],
        ["tokenize", "--model", path, "a red circle"],
        ["inspect", path],
    ])


CLASSES = [
    ("safetensors", 3, safetensors_case),
    ("pickle", 3, pickle_case),
    ("deep-pickle", 1, deep_pickle_case),
    ("model-config", 3, config_case),
    ("sdxl-folder", 2, sdxl_case),
    ("tokenizer-files", 1, tokenizer_case),
    ("prompt-text", 2, prompt_text_case),
    ("prompt-file", 1, prompt_file_case),
    ("image", 2, image_case),
    ("reward-flag", 1, reward_flag_case),
    ("toml-config", 2, toml_case),
    ("train-flag", 1, train_flag_case),
    ("generate-flag", 1, generate_flag_case),
    ("adapter-file", 2, adapter_file_case),
    ("single-file-io", 2, single_file_io_case),
    ("siglip-reward", 1, siglip_reward_case),
]
# The fast subset: classes that fail or finish in well under a second each.
QUICK = {"safetensors", "pickle", "deep-pickle", "prompt-text", "reward-flag", "toml-config", "image"}


# ---------------------------------------------------------------- running and classifying

def run_one(binary, arguments, timeout, max_mb, cwd):
    start = time.time()
    arguments = [a.replace("\x00", "") for a in arguments]  # a process's arguments cannot hold NUL
    process = subprocess.Popen([binary] + arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    errors = []
    def drain():  # all of stderr is read (a child must never block on a full pipe), the first 20 kB kept
        kept = process.stderr.read(20_000)
        while process.stderr.read(65536):
            pass
        errors.append(kept)
    reader = threading.Thread(target=drain)
    reader.start()
    status, rusage, hung = None, None, False
    while True:
        pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.time() - start > timeout:
            hung = True
            process.kill()
            _, status, rusage = os.wait4(process.pid, 0)
            break
        time.sleep(0.01)
    reader.join()
    process.returncode = 0  # reaped by wait4 above
    err = (errors[0] if errors else b"").decode("utf-8", "replace")
    peak_mb = rusage.ru_maxrss / 1024
    if hung:
        kind = "hang"
    elif peak_mb > max_mb:
        kind = "memory"
    elif os.WIFSIGNALED(status):
        kind = "crash"
    elif os.WEXITSTATUS(status) == 0:
        kind = "accepted"
    elif CLEAN.match(err):
        kind = "error"
    else:
        kind = "messy"
    detail = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) and not hung else err.strip()[:300]
    return kind, peak_mb, time.time() - start, detail


KINDS = ["error", "accepted", "messy", "crash", "hang", "memory"]


def summarise(results):
    """Counts per input class and outcome, the peak memory per class, and the totals."""
    table = {}
    for name, kind, peak, _, _, _ in list(results):
        row = table.setdefault(name, dict.fromkeys(KINDS, 0) | {"peak_mb": 0.0})
        row[kind] += 1
        row["peak_mb"] = max(row["peak_mb"], peak)
    return {"count": len(results), "classes": table, "totals": {k: sum(r[k] for r in table.values()) for k in KINDS}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=None, help="the textcraftor binary (default: the newer of .build/release and .build/debug)")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a run counts as a hang")
    p.add_argument("--max-mb", type=float, default=2048.0, help="peak resident memory that counts as a blow-up")
    p.add_argument("--quick", action="store_true", help="only the fast input classes (the subset make test runs)")
    p.add_argument("--classes", help="only these input classes, comma-separated (e.g. model-config,image)")
    p.add_argument("--keep", default=os.path.join(ROOT, ".build/fuzz/findings"))
    p.add_argument("--json", help="write the summary here")
    args = p.parse_args()
    built = [b for b in [os.path.join(ROOT, ".build/release/textcraftor"), os.path.join(ROOT, ".build/debug/textcraftor")]
             if os.path.exists(b)]
    binary = args.binary or max(built, key=os.path.getmtime, default=None)  # the newest build
    if not binary:
        sys.exit("fuzz: no textcraftor binary: run `make build` (or give --binary)")
    # A private copy, so that a rebuild during a long run neither fails it (text file busy) nor changes what it tests.
    private = tempfile.mkdtemp(prefix="textcraftor-fuzz-bin-")
    binary = shutil.copy2(binary, os.path.join(private, "textcraftor"))
    classes = [c for c in CLASSES if not args.quick or c[0] in QUICK]
    if args.classes:
        wanted = args.classes.split(",")
        unknown = [w for w in wanted if w not in [c[0] for c in CLASSES]]
        if unknown:
            sys.exit(f"fuzz: --classes: no input class {unknown[0]!r} (there are {', '.join(c[0] for c in CLASSES)})")
        classes = [c for c in classes if c[0] in wanted]
    weights = [c[1] for c in classes]
    plan_rng = random.Random(args.seed)
    plan = [(i, plan_rng.choices(classes, weights)[0]) for i in range(args.count)]
    results = []
    lock = threading.Lock()
    started = time.time()

    def work(item):
        i, (name, _, build) = item
        rng = random.Random(f"{args.seed}-{i}")
        folder = tempfile.mkdtemp(prefix="textcraftor-fuzz-")
        try:
            arguments = build(rng, folder)
            try:
                kind, peak, seconds, detail = run_one(binary, arguments, args.timeout, args.max_mb, folder)
            except OSError as error:  # the harness could not start the run: say so, do not stop the whole run
                kind, peak, seconds, detail = "messy", 0.0, 0.0, f"harness: {error}"
            if kind not in ("error", "accepted"):
                keep = os.path.join(args.keep, f"{name}-{i}")
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(folder, keep, symlinks=True)
                write(os.path.join(keep, "command.txt"),
                      " ".join([binary] + [a.replace(folder, keep) for a in arguments]) + f"\n{kind}: {detail}\n")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        with lock:
            results.append((name, kind, peak, seconds, detail, i))
            if len(results) % 200 == 0:
                print(f"fuzz: {len(results)}/{args.count} in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
                if args.json:  # a partial summary, so a long run that is stopped still tells what it saw
                    write(args.json, json.dumps(summarise(results), indent=1))

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, plan))

    summary = summarise(results)
    table, totals = summary["classes"], summary["totals"]
    kinds = KINDS
    print(f"| input class | runs | {' | '.join(kinds)} | max peak MB |")
    print("|---|---|" + "---|" * len(kinds) + "---|")
    for name in [c[0] for c in classes]:
        row = table.get(name)
        if row:
            print(f"| {name} | {sum(row[k] for k in kinds)} | " + " | ".join(str(row[k]) for k in kinds) + f" | {row['peak_mb']:.0f} |")
    print(f"| all | {len(results)} | " + " | ".join(str(totals[k]) for k in kinds)
          + f" | {max((r['peak_mb'] for r in table.values()), default=0):.0f} |")
    print(f"{len(results)} inputs in {time.time() - started:.0f} s, seed {args.seed}, {args.jobs} jobs; "
          f"findings in {args.keep}" if any(totals[k] for k in kinds[2:]) else f"{len(results)} inputs, no findings")
    bad = [r for r in results if r[1] not in ("error", "accepted")]
    for name, kind, peak, seconds, detail, i in sorted(bad, key=lambda r: (r[1], r[0]))[:40]:
        print(f"  {kind:8} {name:15} #{i}: {detail.splitlines()[0] if detail else ''}"[:200])
    if args.json:
        write(args.json, json.dumps(summary | {"seed": args.seed, "seconds": round(time.time() - started)}, indent=1))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
