#!/usr/bin/env python3
"""Single-file checkpoints for Tests/StableDiffusionTests (`--text-encoder FILE`).

Run by hand:  /tmp/pyref/bin/python scripts/parity/make_single_file_fixtures.py   (after make_sd_fixtures.py)
Needs torch==2.11.0, transformers 4.x (4.57.6 used), safetensors. Nothing is downloaded.

Writes under Tests/StableDiffusionTests/Fixtures/single/:
  tc_text_tiny_sd15.pth   the authors' released-encoder layout (their tc_text_e_0_iter_10000.pth is
                          `torch.save(ddp_text_encoder.state_dict())`): tiny-sd15's text encoder with seeded noise
                          (0.05 x N(0, 1), seed 2024) added to every parameter, keys `module.text_model.*`, plus the
                          `module.text_model.embeddings.position_ids` buffer that transformers before 4.31 saved
  tc_text_tiny_sd15/      the same encoder as a transformers folder (config.json + model.safetensors, keys
                          `text_model.*`), which the Swift test generates with to compare latents exactly
  tc_text2_tiny_sdxl.safetensors   tiny-sdxl's text_encoder_2 (CLIPTextModelWithProjection) perturbed the same
                          way (seed 2025), keys `module.text_model.*` and `module.text_projection.weight`: its
                          text_projection puts it in SDXL's second place
  tc_text2_tiny_sdxl/     the same as a transformers folder
  tiny-sd15.safetensors   tiny-sd15 (every component, float32) as one original-LDM (CompVis) checkpoint: the UNet under
                          `model.diffusion_model.` (input_blocks/middle_block/output_blocks/time_embed/out), the VAE
                          under `first_stage_model.` (encoder.down.N.block.M, mid.attn_1 q/k/v/proj_out as 1x1
                          convolutions), the text encoder under `cond_stage_model.transformer.text_model.`; the key
                          maps are written below from the published layouts
  tiny-sd2.safetensors    tiny-sd2 the same way, its text encoder as SD 2's OpenCLIP ViT-H tower under
                          `cond_stage_model.model.` (token_embedding, positional_embedding, transformer.resblocks.N
                          with ln_1/ln_2, the fused attn.in_proj_weight/bias, attn.out_proj, mlp.c_fc/c_proj,
                          ln_final, text_projection, logit_scale) plus one more seeded block at the end, which SD 2's
                          penultimate-layer conditioning leaves out (diffusers' conversion makes a 23-layer model)
  tiny-sdxl.safetensors   tiny-sdxl: the UNet with label_emb (add_embedding), CLIP ViT-L under
                          `conditioner.embedders.0.transformer.`, OpenCLIP bigG under `conditioner.embedders.1.model.`
                          (text_projection stored as x @ P, the transpose of transformers' linear weight)
  runs-code.ckpt          a torch.save file whose pickle asks to call os.system (never called: the Swift reader
                          refuses the global; nothing here loads it)
Checked: diffusers' StableDiffusionPipeline.from_single_file(path, config=tiny-sd15) loads it offline (config= gives
the folder whose component configs, tokenizer and scheduler are used, so nothing is fetched from the Hub; with
local_files_only=True a missing piece is an error rather than a download) to the folder's weights bit for bit.
The script reloads the .pth (weights_only) into a CLIPTextModel after stripping `module.` and checks it equals the
folder's model bit for bit.
"""
import json
import os
import re
import shutil

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures")
SD15 = os.path.join(FIXTURES, "sd", "tiny-sd15")
SDXL = os.path.join(FIXTURES, "sdxl", "tiny-sdxl")
SD2 = os.path.join(FIXTURES, "sd", "tiny-sd2")
OUT = os.path.join(FIXTURES, "single")


def perturbed_encoder(seed, cls=CLIPTextModel, folder=os.path.join(SD15, "text_encoder")):
    model = cls.from_pretrained(folder, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def main():
    os.makedirs(OUT, exist_ok=True)
    model = perturbed_encoder(2024)
    folder = os.path.join(OUT, "tc_text_tiny_sd15")
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    state = {"module." + k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["module.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    path = os.path.join(OUT, "tc_text_tiny_sd15.pth")
    torch.save(state, path)

    loaded = torch.load(path, weights_only=True)
    check = CLIPTextModel.from_pretrained(folder)
    stripped = {k[len("module."):]: v for k, v in loaded.items() if not k.endswith("position_ids")}
    check.load_state_dict(stripped, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(check.state_dict()[k], v), k
    print("wrote", path, os.path.getsize(path), "bytes and", folder)

    model = perturbed_encoder(2025, CLIPTextModelWithProjection, os.path.join(SDXL, "text_encoder_2"))
    folder = os.path.join(OUT, "tc_text2_tiny_sdxl")
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    path = os.path.join(OUT, "tc_text2_tiny_sdxl.safetensors")
    save_file({"module." + k: v.clone().contiguous() for k, v in model.state_dict().items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes and", folder)

    path = os.path.join(OUT, "runs-code.ckpt")
    torch.save({"state_dict": {"model.diffusion_model.conv_in.weight": RunsCode()}}, path)
    print("wrote", path, os.path.getsize(path), "bytes")

    for name, folder, cls in (("tiny-sd15", SD15, StableDiffusionPipeline), ("tiny-sd2", SD2, StableDiffusionPipeline),
                              ("tiny-sdxl", SDXL, StableDiffusionXLPipeline)):
        path = os.path.join(OUT, name + ".safetensors")
        save_file(sd_single_file(folder, name), path)
        check_single_file(path, folder, cls)
        print("wrote", path, os.path.getsize(path), "bytes")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran code",))


RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_ldm_name(key, config):
    """diffusers' UNet2DConditionModel name -> the original LDM openaimodel name (under model.diffusion_model.)."""
    per = config["layers_per_block"] + 1
    up_attention = ["CrossAttn" in t for t in config["up_block_types"]]

    def resnet(rest):
        head, tail = rest.split(".", 1)
        return RESNET[head] + "." + tail

    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + i * per + j
        return f"input_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        return f"middle_block.{0 if m[1] == 'resnets' and m[2] == '0' else 2 if m[1] == 'resnets' else 1}." + (
            resnet(m[3]) if m[1] == "resnets" else m[3])
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = i * per + j
        return f"output_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)
    if m:
        i = int(m[1])
        return f"output_blocks.{i * per + per - 1}.{2 if up_attention[i] else 1}.conv.{m[2]}"
    raise KeyError(key)


def vae_ldm_name(key, config):
    """diffusers' AutoencoderKL name -> the original LDM name (under first_stage_model.)."""
    n = len(config["block_out_channels"])
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = key.replace("mid_block.attentions.0.group_norm", "mid.attn_1.norm")
    # (tiny-sd2's VAE keeps diffusers' pre-0.14 attention names: query, key, value, proj_attn)
    for old, new in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"), ("query", "q"), ("key", "k"),
                     ("value", "v"), ("proj_attn", "proj_out")):
        key = key.replace(f"mid_block.attentions.0.{old}.", f"mid.attn_1.{new}.")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", key)
    return key


def component(folder, name):
    for file in ("diffusion_pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name, file)
        if os.path.exists(path):
            tensors = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
            return {k: v.float() for k, v in tensors.items()}
    raise FileNotFoundError(os.path.join(folder, name))


def config(folder, name):
    with open(os.path.join(folder, name, "config.json")) as f:
        return json.load(f)


def open_clip(tensors, seed, extra_block, projection):
    """transformers' CLIPTextModel(WithProjection) names -> OpenCLIP's text tower (q/k/v fused into in_proj)."""
    out, layers = {}, {}
    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}
    for k, v in tensors.items():
        if k in fixed:
            out[fixed[k]] = v
            continue
        if k == "text_projection.weight":
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", k)
        i, part, kind = int(m[1]), m[2], m[3]
        if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            layers.setdefault((i, kind), {})[part[10]] = v
        else:
            out[f"transformer.resblocks.{i}.{parts[part]}.{kind}"] = v
    for (i, kind), qkv in layers.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    width = tensors["text_model.final_layer_norm.weight"].shape[0]
    g = torch.Generator().manual_seed(seed)
    if extra_block:
        n = len({i for i, _ in layers})
        for k in [k for k in out if k.startswith("transformer.resblocks.0.")]:
            out[k.replace("resblocks.0.", f"resblocks.{n}.")] = torch.randn(out[k].shape, generator=g)
    out["text_projection"] = projection if projection is not None else torch.randn(width, width, generator=g)
    out["logit_scale"] = torch.tensor(4.6052)
    return out


def sd_single_file(folder, kind):
    """A diffusers folder as one LDM checkpoint."""
    out = {}
    unet_config, vae_config = config(folder, "unet"), config(folder, "vae")
    for k, v in component(folder, "unet").items():
        out["model.diffusion_model." + unet_ldm_name(k, unet_config)] = v
    for k, v in component(folder, "vae").items():
        name = vae_ldm_name(k, vae_config)
        if ".mid.attn_1." in name and name.endswith("weight") and v.dim() == 2:
            v = v[:, :, None, None]  # the original VAE's attention projections are 1x1 convolutions
        out["first_stage_model." + name] = v
    text = component(folder, "text_encoder")
    if kind == "tiny-sd15":
        out.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    elif kind == "tiny-sd2":
        out.update({"cond_stage_model.model." + k: v for k, v in open_clip(text, 2, True, None).items()})
    else:
        out.update({"conditioner.embedders.0.transformer." + k: v for k, v in text.items()})
        text2 = component(folder, "text_encoder_2")
        bigg = open_clip(text2, 3, False, text2["text_projection.weight"].t())
        out.update({"conditioner.embedders.1.model." + k: v for k, v in bigg.items()})
    return {k: v.contiguous() for k, v in out.items()}


def check_single_file(path, folder, cls):
    single = cls.from_single_file(path, config=folder, local_files_only=True, torch_dtype=torch.float32)
    reference = cls.from_pretrained(folder, torch_dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if cls is StableDiffusionXLPipeline else ()):
        a, b = getattr(single, name).state_dict(), getattr(reference, name).state_dict()
        assert a.keys() == b.keys(), (name, set(a) ^ set(b))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


if __name__ == "__main__":
    main()
