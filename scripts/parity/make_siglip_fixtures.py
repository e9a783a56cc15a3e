#!/usr/bin/env python3
"""Aesthetic Predictor v2.5 (a SigLIP vision tower and an MLP head) and HPSv2.1, tiny and random, and what PyTorch
computes with them (Tests/RewardsTests/Fixtures/siglip and Fixtures/openclip/tiny).

Run by hand:  python3 scripts/parity/make_siglip_fixtures.py   (after make_reward_fixtures_openclip.py)
Needs torch==2.11.0, transformers 4.57.6, aesthetic-predictor-v2-5 2024.12.18.1 (pip install --no-deps: it only
adds its model classes over transformers), open_clip_torch 3.3.0, safetensors, numpy, Pillow. Nothing is
downloaded: every model is built from a config with seeded random weights.

The reference for v2.5 is the package's own `AestheticPredictorV2_5Model` (a transformers `SiglipVisionModel` with
`AestheticPredictorV2_5Head` as `.layers`): score = head(pooler_output / |pooler_output|), the pooled output being
SigLIP's attention-pooling head (`vision_model.head`). Its head file is `model.layers.state_dict()`: keys
`scoring_head.{0,2,4,6,8}.{weight,bias}` (dropout in between, no activation).

Writes under Tests/RewardsTests/Fixtures/siglip/:
  vision/                         config.json + model.safetensors of a tiny SiglipVisionModel (save_pretrained): hidden
                                  32, 2 layers, 2 heads, patch 4, image 32, intermediate 48, gelu_pytorch_tanh
  full/                           the same vision tower inside a tiny SiglipModel (text tower too; model_type siglip)
  aesthetic_predictor_v2_5.pth    the head as the package loads it: torch.save(OrderedDict state dict)
  aesthetic_predictor_v2_5.safetensors  the same tensors as safetensors
  outputs.safetensors             images, pixels, pooled embeddings, scores and image gradients in both modes
and under Tests/RewardsTests/Fixtures/openclip/tiny/:
  hps_v2.1_tiny.pt                model A of make_reward_fixtures_openclip.py as HPS_v2.1_compressed.pt is read by the
                                  hpsv2 package (`model.load_state_dict(checkpoint['state_dict'])`, the same strict
                                  load and model as v2.0), with the weights in float16 and no other entry
  outputs_v2.1.safetensors        HPSv2 scores and image gradients of that model (weights loaded as the package does:
                                  float16 copied into the float32 model) in both preprocessing modes
"""
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file, load_file
from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipVisionConfig

from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "siglip")
OPENCLIP = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "openclip")

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_channels=3,
              image_size=32, patch_size=4, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
TEXT = dict(vocab_size=100, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16)


def perturb(module, seed, scale=0.05):
    """Non-trivial biases and norm affines (the defaults 0/1 hide a dropped bias or a swapped norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def preprocess(images, size, mode):
    """Sources/Rewards/ImagePreprocessing.swift with SigLIP's processor: no crop (the image is squashed to size x
    size), mean = std = 0.5. training: adaptive average pooling; evaluation: antialiased bicubic resize."""
    if mode == "training":
        x = F.adaptive_avg_pool2d(images, size)
    else:
        x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return (x - 0.5) / 0.5


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)

    # The package's model: SiglipVisionModel + the v2.5 head, random, then perturbed.
    config = SiglipVisionConfig(**VISION)
    model = AestheticPredictorV2_5Model(config).eval()
    perturb(model, 1)
    with torch.no_grad():  # the head's default init gives scores near a constant; widen it so gradients are sizeable
        for layer in model.layers.scoring_head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(1.6)

    vision_sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k.startswith("vision_model.")}
    head_sd = OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.layers.state_dict().items())
    assert list(head_sd) == [f"scoring_head.{i}.{p}" for i in (0, 2, 4, 6, 8) for p in ("weight", "bias")], list(head_sd)

    # vision/: a plain SiglipVisionModel folder as save_pretrained writes it.
    from transformers import SiglipVisionModel
    plain = SiglipVisionModel(config).eval()
    missing, unexpected = plain.load_state_dict(vision_sd, strict=True)
    plain.save_pretrained(os.path.join(OUT, "vision"), safe_serialization=True)
    torch.save(head_sd, os.path.join(OUT, "aesthetic_predictor_v2_5.pth"))
    save_file(dict(head_sd), os.path.join(OUT, "aesthetic_predictor_v2_5.safetensors"))

    # full/: a SiglipModel (google/siglip-so400m-patch14-384's layout) around the same vision tower.
    full = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    perturb(full.text_model, 2)
    full_sd = full.state_dict()
    for k, v in vision_sd.items():
        full_sd[k] = v
    full.load_state_dict(full_sd, strict=True)
    full.save_pretrained(os.path.join(OUT, "full"), safe_serialization=True)

    size = VISION["image_size"]
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(7))
    out = {"images": images}
    for mode in ("training", "evaluation"):
        pixels = preprocess(images, size, mode)
        out[f"pixels_{mode}"] = pixels
        with torch.no_grad():
            out[f"pooled_{mode}"] = plain(pixel_values=pixels).pooler_output
            full_pooled = full.vision_model(pixel_values=pixels).pooler_output
            assert torch.equal(full_pooled, out[f"pooled_{mode}"])
        x = images.clone().requires_grad_(True)
        logits = model(pixel_values=preprocess(x, size, mode), return_dict=True).logits
        assert logits.shape == (2, 1)
        s = logits.squeeze(1)
        s.sum().backward()
        # The same score by hand from the plain tower: head(pooled / |pooled|).
        with torch.no_grad():
            pooled = out[f"pooled_{mode}"]
            by_hand = model.layers(pooled / pooled.norm(dim=-1, keepdim=True)).squeeze(1)
        assert torch.allclose(by_hand, s.detach(), atol=1e-6), (by_hand, s)
        out[f"scores_{mode}"] = s.detach()
        out[f"grad_{mode}"] = x.grad.detach()
        print(f"v2.5 {mode}: scores {s.detach().tolist()}, |grad| max {x.grad.abs().max().item():.3e}")

    # For information: SigLIP's own processor (PIL bicubic, no crop) on the images quantised to uint8, against the
    # evaluation tensor path on the same quantised images.
    processor = SiglipImageProcessor(size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    quantised = (images * 255).round().clamp(0, 255).to(torch.uint8)
    pil = processor(images=[Image.fromarray(q.permute(1, 2, 0).numpy()) for q in quantised],
                    return_tensors="pt")["pixel_values"]
    ours = preprocess(quantised.float() / 255, size, "evaluation")
    with torch.no_grad():
        s_pil = model(pixel_values=pil, return_dict=True).logits.squeeze(1)
        s_ours = model(pixel_values=ours, return_dict=True).logits.squeeze(1)
    print(f"SigLIP processor (PIL) vs tensor evaluation path: pixels max |diff| {(pil - ours).abs().max().item():.4f}"
          f" (normalised units), scores {s_pil.tolist()} vs {s_ours.tolist()}")
    out["pil_pixels_quantised"] = pil
    out["pil_scores_quantised"] = s_pil
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "outputs.safetensors"))

    hps_v21()
    for folder in (OUT, os.path.join(OPENCLIP, "tiny")):
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                path = os.path.join(root, name)
                if "v2.1" in name or root.startswith(OUT):
                    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def hps_v21():
    """HPSv2.1 in its published layout: {'state_dict': weights}, here in float16, for model A of the open_clip
    fixtures; scored as the hpsv2 package scores (load_state_dict into the float32 model)."""
    sys.path.insert(0, HERE)
    import make_reward_fixtures_openclip as oc
    folder = os.path.join(OPENCLIP, "tiny")
    checkpoint = torch.load(os.path.join(folder, "hps_tiny.pt"), map_location="cpu", weights_only=True)
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    torch.save({"state_dict": half}, os.path.join(folder, "hps_v2.1_tiny.pt"))

    model = oc.open_clip.model.CLIP(oc.TINY["embed_dim"], oc.TINY["vision_cfg"], oc.TINY["text_cfg"]).eval()
    model.load_state_dict(torch.load(os.path.join(folder, "hps_v2.1_tiny.pt"), weights_only=True)["state_dict"])
    assert model.visual.conv1.weight.dtype == torch.float32
    reference = load_file(os.path.join(folder, "outputs.safetensors"))
    images, ids = reference["images"], reference["ids"]
    size = oc.TINY["vision_cfg"]["image_size"]
    out = {}
    for mode in ("training", "evaluation"):
        x = images.clone().requires_grad_(True)
        s = oc.scores(model, x, ids, size, mode)
        s.sum().backward()
        out[f"scores_{mode}"] = s.detach()
        out[f"grad_{mode}"] = x.grad.detach()
        print(f"HPSv2.1 tiny {mode}: scores {s.detach().tolist()} (float32 model A: {reference[f'scores_{mode}'].tolist()})")
    save_file(out, os.path.join(folder, "outputs_v2.1.safetensors"))


if __name__ == "__main__":
    main()
