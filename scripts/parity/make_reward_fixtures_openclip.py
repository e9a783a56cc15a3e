#!/usr/bin/env python3
"""Tiny random open_clip CLIP models and what open_clip computes with them: embeddings, HPSv2-style cosine scores in
both preprocessing modes, and their gradients with respect to the images (Tests/RewardsTests/Fixtures/openclip).

Run by hand:  python3 scripts/parity/make_reward_fixtures_openclip.py
Needs torch==2.11.0, open_clip_torch (3.3.0 used), ftfy, safetensors, numpy, Pillow. Nothing is downloaded: the
models are built from configs with seeded random weights, and the tokenizer from the shipped CLIP merges file, cut
down to a 1000-token vocabulary so that the embedding table stays small.

Writes under Tests/RewardsTests/Fixtures/openclip/:
  tokenizer/                      vocab.json + merges.txt: the first 1000 tokens of CLIP's vocabulary (our tokenizer
                                  reads this folder; open_clip's SimpleTokenizer reads the same merges, see below)
  tiny/open_clip_config.json      {"model_cfg": ..., "preprocess_cfg": ...}, as open_clip writes it for the hub
  tiny/model_config.json          the same model config bare, as open_clip's model_configs/*.json
  tiny/open_clip_model.safetensors  model A (GELU, as ViT-H-14): the state dict as safetensors
  tiny/hps_tiny.pt                model A as HPSv2 saves it: torch.save({"state_dict": sd, "epoch": 1})
  tiny/hps_tiny_ddp.pt            the same with every key prefixed "module." (a model wrapped in DDP)
  tiny/bad_unknown_global.pt      a torch.save file whose pickle names a global outside the supported subset
  tiny/outputs.safetensors        images, preprocessed pixels, ids, embeddings, scores and gradients for both modes
  variant/model_config.json       model B: quick_gelu, LayerScale in both towers, no ln_pre, average pooling with
                                  ln_post after the pool, a non-integer mlp_ratio, a biased text projection, and a
                                  bidirectional text tower pooled at the last position (so padding ids matter)
  variant/open_clip_model.safetensors, variant/outputs.safetensors
  ids.json                        prompts, and open_clip's ids (padded with 0) from the 1000-token tokenizer and
                                  from its own full tokenizer (bundled merges), for the tokenizer checks
  presets/<name>.json             open_clip's own model_configs for ViT-H-14, ViT-g-14, ViT-L-14, ViT-bigG-14
  presets/shapes.json             every state-dict key and shape of those four models (built on the meta device)
"""
import gzip
import json
import os
import shutil
import tempfile

import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import image_transform
from PIL import Image
from clip_vocabulary import truncated_vocabulary
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "openclip")
BAD_PICKLE = os.path.join(ROOT, "Tests", "TorchTests", "Fixtures", "serialization", "bad_unknown_global.pt")
VOCAB_SIZE = 1000
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Model A: the ViT-H-14 recipe (GELU, CLS pooling, argmax text pooling, causal mask), tiny.
TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 32, "heads": 4, "layers": 2},
}
# Model B: every supported option that changes the computation.
VARIANT = {
    "embed_dim": 20,
    "quick_gelu": True,
    "vision_cfg": {"image_size": [24, 24], "layers": 2, "width": 24, "head_width": 6, "patch_size": 6,
                   "mlp_ratio": 2.6, "ls_init_value": 0.1, "no_ln_pre": True, "pool_type": "avg",
                   "final_ln_after_pool": True},
    "text_cfg": {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 16, "heads": 2, "layers": 2,
                 "mlp_ratio": 3.0, "ls_init_value": 0.1, "proj_bias": True, "no_causal_mask": True,
                 "pool_type": "last"},
}
PROMPTS = ["a photo of a red cat", "An astronaut riding a horse, 4k, trending on artstation!!"]
TOKENIZER_PROMPTS = PROMPTS + [
    "",
    "Rock &amp; roll   at the  CAFÉ",
    "it's a dog's life, isn't it? 12345",
    "a very long prompt " + " ".join(f"word{i} and more" for i in range(60)),
]


def write_tokenizer(folder):
    """Our tokenizer folder (vocab.json + merges.txt) and open_clip's SimpleTokenizer on the same first merges."""
    vocab, merges = truncated_vocabulary(VOCAB_SIZE)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # open_clip reads a gzip whose first line is a header; no trailing newline, or it would add an empty token.
    tmp = tempfile.mkdtemp()
    gz = os.path.join(tmp, "bpe.txt.gz")
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges))
    tok = SimpleTokenizer(bpe_path=gz, context_length=77)
    shutil.rmtree(tmp)
    assert tok.vocab_size == VOCAB_SIZE and tok.eot_token_id == VOCAB_SIZE - 1
    return tok


def perturb(model, seed):
    """Non-trivial biases and norm affines (the defaults 0/1 hide a dropped bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def build(cfg, seed):
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                 quick_gelu=cfg.get("quick_gelu", False))
    return perturb(model, seed + 1).eval()


def state_dict(model):
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert "attn_mask" not in sd  # a non-persistent buffer in open_clip 3.x
    return sd


def normalise(x):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(images, size, mode):
    """The two modes of Sources/Rewards/ImagePreprocessing.swift, in tensor ops."""
    if mode == "training":
        return normalise(F.adaptive_avg_pool2d(images, size))
    h, w = images.shape[-2:]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return normalise(x[:, :, top:top + size, left:left + size])


def scores(model, images, ids, size, mode):
    image = F.normalize(model.encode_image(preprocess(images, size, mode)), dim=-1)
    text = F.normalize(model.encode_text(ids), dim=-1)
    return (image * text).sum(-1)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    tok = write_tokenizer(os.path.join(OUT, "tokenizer"))
    ids_all = tok(TOKENIZER_PROMPTS)
    ids_full = open_clip.get_tokenizer("ViT-H-14")(TOKENIZER_PROMPTS)
    with open(os.path.join(OUT, "ids.json"), "w") as f:
        json.dump({"prompts": TOKENIZER_PROMPTS, "ids": ids_all.tolist(), "ids_full": ids_full.tolist(), "pad_id": 0},
                  f, ensure_ascii=False)
    write_presets(os.path.join(OUT, "presets"))
    ids = tok(PROMPTS)

    # Model A.
    folder = os.path.join(OUT, "tiny")
    os.makedirs(folder, exist_ok=True)
    model = build(TINY, 0)
    sd = state_dict(model)
    save_file(sd, os.path.join(folder, "open_clip_model.safetensors"))
    torch.save({"state_dict": sd, "epoch": 1}, os.path.join(folder, "hps_tiny.pt"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 1},
               os.path.join(folder, "hps_tiny_ddp.pt"))
    shutil.copyfile(BAD_PICKLE, os.path.join(folder, "bad_unknown_global.pt"))
    with open(os.path.join(folder, "model_config.json"), "w") as f:
        json.dump(TINY, f, indent=4)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": TINY, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}, f, indent=2)

    size = TINY["vision_cfg"]["image_size"]
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(7))
    out = {"images": images, "ids": ids, "text_embeds": model.encode_text(ids).detach(),
           "logit_scale": model.logit_scale.detach().clone()}
    for mode in ("training", "evaluation"):
        pixels = preprocess(images, size, mode)
        out[f"pixels_{mode}"] = pixels
        out[f"image_embeds_{mode}"] = model.encode_image(pixels).detach()
        x = images.clone().requires_grad_(True)
        s = scores(model, x, ids, size, mode)
        s.sum().backward()
        out[f"scores_{mode}"] = s.detach()
        out[f"grad_{mode}"] = x.grad.detach()
        # HPSv2's own scoring: model(image, text) gives normalised features; the score is the diagonal of their
        # product. Same numbers as the cosine above.
        with torch.no_grad():
            feats = model(pixels, ids)
            hps = torch.diagonal(feats["image_features"] @ feats["text_features"].T) if isinstance(feats, dict) \
                else torch.diagonal(feats[0] @ feats[1].T)
        assert torch.allclose(hps, s.detach(), atol=1e-6), (hps, s)
        print(f"model A {mode}: scores {s.detach().tolist()}, |grad| max {x.grad.abs().max().item():.3e}")

    # For information: open_clip's own PIL preprocessing of the same images quantised to uint8, against the tensor
    # path (torch's antialiased bicubic) on the same quantised images.
    transform = image_transform(size, is_train=False, mean=MEAN, std=STD)
    quantised = (images * 255).round().clamp(0, 255).to(torch.uint8)
    pil = torch.stack([transform(Image.fromarray(q.permute(1, 2, 0).numpy())) for q in quantised])
    ours = preprocess(quantised.float() / 255, size, "evaluation")
    with torch.no_grad():
        s_pil = scores_from_pixels(model, pil, ids)
        s_ours = scores_from_pixels(model, ours, ids)
    print(f"open_clip PIL preprocess vs tensor evaluation path: pixels max |diff| {(pil - ours).abs().max().item():.4f}"
          f" (normalised units), scores {s_pil.tolist()} vs {s_ours.tolist()}")
    out["pil_pixels_quantised"] = pil
    out["pil_scores_quantised"] = s_pil
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(folder, "outputs.safetensors"))

    # Model B.
    folder = os.path.join(OUT, "variant")
    os.makedirs(folder, exist_ok=True)
    model = build(VARIANT, 10)
    with torch.no_grad():  # LayerScale starts at a constant; make it vary per channel
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.5)
    save_file(state_dict(model), os.path.join(folder, "open_clip_model.safetensors"))
    with open(os.path.join(folder, "model_config.json"), "w") as f:
        json.dump(VARIANT, f, indent=4)
    pixels = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = {"pixels": pixels, "ids": ids, "image_embeds": model.encode_image(pixels),
               "text_embeds": model.encode_text(ids)}
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(folder, "outputs.safetensors"))
    print("model B text embeds", out["text_embeds"][:, :4].tolist())
    for root, _, files in os.walk(OUT):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def write_presets(folder):
    """open_clip's configs for the presets, and the key and shape of every tensor of the models they build."""
    os.makedirs(folder, exist_ok=True)
    configs = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")
    shapes = {}
    for name in ("ViT-H-14", "ViT-g-14", "ViT-L-14", "ViT-bigG-14"):
        shutil.copyfile(os.path.join(configs, name + ".json"), os.path.join(folder, name + ".json"))
        cfg = open_clip.get_model_config(name)
        with torch.device("meta"):
            model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
        shapes[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
        print(f"{name}: {len(shapes[name])} tensors, {sum(v.numel() for v in model.state_dict().values()):,} values")
    with open(os.path.join(folder, "shapes.json"), "w") as f:
        json.dump(shapes, f, separators=(",", ":"))


def scores_from_pixels(model, pixels, ids):
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(ids), dim=-1)
    return (image * text).sum(-1)


if __name__ == "__main__":
    main()
