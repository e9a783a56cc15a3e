#!/usr/bin/env python3
"""LoRA files in the published layouts and what diffusers computes with them on the tiny SD 1.5 and SDXL folders
(Tests/StableDiffusionTests/LoRATests.swift).

Run by hand:  python3 scripts/parity/make_lora_fixtures.py   (after make_sd_fixtures.py and make_sdxl_fixtures.py,
whose tiny-sd15 and tiny-sdxl folders it reads)
Needs torch==2.11.0, diffusers 0.39, transformers 4.x, peft (0.21.2 used), safetensors. Nothing is downloaded.

Each LoRA's down and up weights are seeded random numbers (up is not zero, so every module changes the outputs).
For every file the script loads it with diffusers' `load_lora_weights` (PEFT layers, not fused) and computes the
prompt embeddings (`encode_prompt`) and, for files with UNet parts, one UNet noise prediction; it also merges the
same file by hand (W + alpha/rank * up @ down, conv as [out, in*k*k]) and checks that both agree (1e-5), so each
fixture is what diffusers computes and what the published formulas say. `fuse_lora(lora_scale=0.5)` gives the
scaled reference.

Writes under Tests/StableDiffusionTests/Fixtures/lora/:
  sd15_kohya.safetensors    kohya names: lora_te_ on all six linear kinds of every layer (rank 4, alpha 2), and
                            lora_unet_ on one transformer (attn1/attn2 to_q/to_k/to_v/to_out_0, ff_net_0_proj,
                            ff_net_2, proj_in/proj_out as 1x1 convs), a resnet's conv1 (3x3 conv LoRA) and
                            time_emb_proj; with kohya's ss_* metadata
  sd15_peft.safetensors     diffusers/PEFT names: text_encoder.<module>.lora_A/lora_B (rank 2) and unet.<module>
  sd15_old.safetensors      older diffusers names: text_encoder.<module>.lora_linear_layer.down/up (rank 3)
  sdxl_kohya.safetensors    lora_te1_ and lora_te2_ (rank 4, alpha 8)
  sdxl_peft.safetensors     text_encoder. and text_encoder_2. (rank 2)
  ours_{sd15,sdxl}_{kohya,peft}.safetensors   written by textcraftor's own writer, not by this script: one step of
                            `textcraftor train --adapter lora --lora-rank 4 --lora-alpha 2 --lora-format kohya|peft
                            --lora-dtype float32 --seed 5 --lr 1e-1 --max-steps 1 --sampling-steps 2 --grad-window 1`
                            on tiny-sd15 (tiny-sdxl with --train text-encoders), copied from OUT/lora.safetensors; the
                            script only reads them (diffusers' embeddings under each)
  outputs_lora.safetensors  per file: <name>.prompt_embeds (and SDXL <name>.pooled), <name>.unet for UNet parts,
                            <name>.fused_0.5.prompt_embeds; base.* without a LoRA; the UNet's inputs (unet.sample,
                            unet.timestep, unet.context)
"""
import os

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures")
OUT = os.path.join(FIXTURES, "lora")
PROMPTS = ["a red circle on a blue background", "two small squares, photo"]
TEXT_KINDS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
UNET_BLOCK = "down_blocks.1.attentions.0"
UNET_KINDS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
              "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
UNET_EXTRA = (f"{UNET_BLOCK}.proj_in", f"{UNET_BLOCK}.proj_out", "down_blocks.1.resnets.0.conv1",
              "down_blocks.1.resnets.0.time_emb_proj")


def targets(module, prefix, kinds):
    """(path, layer) of the Linear/Conv2d layers under `module` whose path ends in one of `kinds`."""
    return [(name, layer) for name, layer in module.named_modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and name.startswith(prefix)
            and any(name.endswith(k) for k in kinds)]


def pair(gen, layer, rank):
    """Random (down, up) for a layer: linear [r, in] / [out, r]; conv [r, in, k, k] / [out, r, 1, 1]."""
    w = layer.weight
    if w.dim() == 4:
        down = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3], generator=gen) * 0.2
        up = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * 0.2
    else:
        down = torch.randn(rank, w.shape[1], generator=gen) * 0.2
        up = torch.randn(w.shape[0], rank, generator=gen) * 0.2
    return down, up


def build(parts, fmt, rank, alpha, seed):
    """parts: [(place, kohya_prefix, [(path, layer)])]. Returns (state dict, [(layer, delta)])."""
    gen = torch.Generator().manual_seed(seed)
    state, deltas = {}, []
    for place, kohya, layers in parts:
        for path, layer in layers:
            down, up = pair(gen, layer, rank)
            scale = (alpha if alpha is not None else rank) / rank
            if fmt == "kohya":
                name = kohya + path.replace(".", "_")
                state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
                state[f"{name}.alpha"] = torch.tensor(float(alpha))
            elif fmt == "peft":
                state[f"{place}.{path}.lora_A.weight"], state[f"{place}.{path}.lora_B.weight"] = down, up
            else:
                state[f"{place}.{path}.lora_linear_layer.down.weight"] = down
                state[f"{place}.{path}.lora_linear_layer.up.weight"] = up
            delta = (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape) * scale
            deltas.append((layer, delta))
    return state, deltas


def embeddings(pipe, sdxl):
    with torch.no_grad():
        if sdxl:
            pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
            return {"prompt_embeds": pe, "pooled": pooled}
        pe, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        return {"prompt_embeds": pe}


def unet_out(pipe, inputs):
    with torch.no_grad():
        return pipe.unet(inputs["unet.sample"], inputs["unet.timestep"], encoder_hidden_states=inputs["unet.context"]).sample


def check(a, b, what):
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err < 1e-5, f"{what}: diffusers and the hand merge differ by {err:.2e}"


def run(cls, folder, name, state, deltas, sdxl, inputs, out, metadata=None):
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.load_lora_weights(path)
    got = embeddings(pipe, sdxl)
    has_unet = any(k.startswith(("lora_unet_", "unet.")) for k in state)
    if has_unet:
        got["unet"] = unet_out(pipe, inputs)
    pipe.fuse_lora(lora_scale=0.5)
    pipe.unload_lora_weights()
    fused = embeddings(pipe, sdxl)
    # The same by hand.
    manual = cls.from_pretrained(folder, torch_dtype=torch.float32)
    with torch.no_grad():
        for layer, delta in deltas:
            owner, path = layer_owner[id(layer)]
            getattr(manual, owner).get_submodule(path).weight += delta
    expected = embeddings(manual, sdxl)
    for key, value in expected.items():
        check(got[key], value, f"{name} {key}")
    if has_unet:
        check(got["unet"], unet_out(manual, inputs), f"{name} unet")
    with torch.no_grad():
        for layer, delta in deltas:
            owner, path = layer_owner[id(layer)]
            getattr(manual, owner).get_submodule(path).weight -= 0.5 * delta
    for key, value in embeddings(manual, sdxl).items():
        check(fused[key], value, f"{name} fused {key}")
    for key, value in got.items():
        out[f"{name}.{key}"] = value
    for key, value in fused.items():
        out[f"{name}.fused_0.5.{key}"] = value


layer_owner = {}


def parts_of(pipe, text, unet):
    """Layers of the reference pipeline (only used for shapes and paths; the deltas are applied by path)."""
    parts = []
    for place, kohya in text:
        module = getattr(pipe, place)
        found = targets(module, "text_model.encoder.layers.", TEXT_KINDS)
        for path, layer in found:
            layer_owner[id(layer)] = (place, path)
        parts.append((place, kohya, found))
    if unet:
        found = targets(pipe.unet, UNET_BLOCK + ".transformer_blocks.", UNET_KINDS)
        found += [(p, pipe.unet.get_submodule(p)) for p in UNET_EXTRA]
        for path, layer in found:
            layer_owner[id(layer)] = ("unet", path)
        parts.append(("unet", "lora_unet_", found))
    return parts


def main():
    os.makedirs(OUT, exist_ok=True)
    sd15 = os.path.join(FIXTURES, "sd", "tiny-sd15")
    sdxl = os.path.join(FIXTURES, "sdxl", "tiny-sdxl")
    out = {}
    gen = torch.Generator().manual_seed(7)
    inputs = {"unet.sample": torch.randn(1, 4, 8, 8, generator=gen), "unet.timestep": torch.tensor([500]),
              "unet.context": torch.randn(1, 77, 32, generator=gen)}
    out.update(inputs)

    ref = StableDiffusionPipeline.from_pretrained(sd15, torch_dtype=torch.float32)
    for key, value in embeddings(ref, False).items():
        out[f"base.{key}"] = value
    out["base.unet"] = unet_out(ref, inputs)
    kohya_meta = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
                  "ss_base_model_version": "sd_v1", "modelspec.architecture": "stable-diffusion-v1/lora"}
    state, deltas = build(parts_of(ref, [("text_encoder", "lora_te_")], True), "kohya", 4, 2.0, 1)
    run(StableDiffusionPipeline, sd15, "sd15_kohya", state, deltas, False, inputs, out, kohya_meta)
    state, deltas = build(parts_of(ref, [("text_encoder", "lora_te_")], True), "peft", 2, None, 2)
    run(StableDiffusionPipeline, sd15, "sd15_peft", state, deltas, False, inputs, out)
    state, deltas = build(parts_of(ref, [("text_encoder", "lora_te_")], False), "old", 3, None, 3)
    run(StableDiffusionPipeline, sd15, "sd15_old", state, deltas, False, inputs, out)

    ref = StableDiffusionXLPipeline.from_pretrained(sdxl, torch_dtype=torch.float32)
    for key, value in embeddings(ref, True).items():
        out[f"base_xl.{key}"] = value
    encoders = [("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")]
    state, deltas = build(parts_of(ref, encoders, False), "kohya", 4, 8.0, 4)
    run(StableDiffusionXLPipeline, sdxl, "sdxl_kohya", state, deltas, True, inputs, out,
        {"ss_base_model_version": "sdxl_base_v1-0"})
    state, deltas = build(parts_of(ref, encoders, False), "peft", 2, None, 5)
    run(StableDiffusionXLPipeline, sdxl, "sdxl_peft", state, deltas, True, inputs, out)

    # textcraftor's own files: what diffusers makes of them.
    for arch, fmt in [("sd15", "kohya"), ("sd15", "peft"), ("sdxl", "kohya"), ("sdxl", "peft")]:
        name = f"ours_{arch}_{fmt}"
        xl = arch == "sdxl"
        pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_pretrained(
            sdxl if xl else sd15, torch_dtype=torch.float32)
        pipe.load_lora_weights(os.path.join(OUT, f"{name}.safetensors"))
        for key, value in embeddings(pipe, xl).items():
            out[f"{name}.{key}"] = value

    save_file({k: v.contiguous().float() for k, v in out.items() if k != "unet.timestep"} | {"unet.timestep": inputs["unet.timestep"]},
              os.path.join(OUT, "outputs_lora.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
