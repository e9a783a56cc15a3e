#!/usr/bin/env python3
"""Tiny random transformers CLIPModels, a tiny LAION aesthetic MLP, and the rewards computed with them
(Tests/RewardsTests).

Run by hand:  python3 scripts/parity/make_reward_fixtures_hf.py
Needs torch==2.11.0, transformers 4.x (4.57.6 used), torchvision (only for a cross-check), ftfy, safetensors, Pillow.
Nothing is downloaded: every model is built from a config with seeded random weights, and the tokenizers from the
shipped CLIP merges file cut down to a 1000-token vocabulary.

Writes under Tests/RewardsTests/Fixtures/hf/:
  pickscore/   PickScore_v1-like CLIPModel folder: gelu towers, text hidden 24 != vision hidden 32, image 32, patch 8,
               logit_scale ~ log(100), text eos_token_id 2 (pooled at argmax), saved as pytorch_model.bin with the
               old position_ids buffers of both towers, config.json carrying a `text_config_dict` that overrides
               `text_config` (as older transformers wrote), tokenizer files beside config.json, "!" padding
  clip/        OpenAI ViT-L/14-like CLIPModel folder: quick_gelu, image 64 (images are upsampled), text eos_token_id
               999 (pooled at the first eos), model.safetensors, tokenizer in tokenizer/
  aesthetic.pth          the LAION improved-aesthetic-predictor MLP (1024-128-64-16-1) on 16-wide embeddings,
                         torch.save(state_dict) as the original `sac+logos+ava1-l14-linearMSE.pth`
  bad_aesthetic.pth      a torch.save whose pickle names posix.system (an object with a malicious __reduce__);
                         it must be refused, never run. This script never loads it.
  outputs.safetensors    images, token ids, embeddings, scores and image gradients for both preprocessing modes

Preprocessing, in tensor ops (what the Swift side does):
  training    F.adaptive_avg_pool2d(img, size), then CLIP mean/std
  evaluation  F.interpolate(bicubic, antialias=True) of the short side to `size` (long side int(size*long/short)),
              centre crop at int(round((h - size) / 2)), then CLIP mean/std
The score through transformers' own CLIPImageProcessor (PIL, on the images quantised to uint8) is printed for
information: it is not what the tests compare against.
"""
import json
import math
import os
import shutil
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from clip_vocabulary import write_tokenizer
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "hf")
VOCAB_SIZE = 1000
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a photo of a cat on a red sofa", "an astronaut riding a horse, oil painting"]


def perturb(model, seed):
    """Non-trivial biases and norm affines (the defaults 0/1 hide a dropped bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


TEXT_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_dim", "bos_token_id",
             "eos_token_id", "pad_token_id"]


def clip_model(seed, act, text_hidden, vision_hidden, image_size, eos_token_id, logit_scale):
    torch.manual_seed(seed)
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=text_hidden, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
                projection_dim=16, bos_token_id=VOCAB_SIZE - 2, eos_token_id=eos_token_id, pad_token_id=1)
    vision = dict(hidden_size=vision_hidden, intermediate_size=52, num_hidden_layers=2, num_attention_heads=4,
                  num_channels=3, image_size=image_size, patch_size=8, hidden_act=act, layer_norm_eps=1e-5,
                  projection_dim=16)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=logit_scale)
    return perturb(CLIPModel(cfg).eval(), seed)


def build_pickscore():
    folder = os.path.join(OUT, "pickscore")
    shutil.rmtree(folder, ignore_errors=True)
    model = clip_model(1, "gelu", 24, 32, 32, 2, math.log(100.0))
    model.save_pretrained(folder, safe_serialization=False)
    # The buffers older transformers saved (PickScore_v1 has them): both towers' position_ids.
    path = os.path.join(folder, "pytorch_model.bin")
    sd = torch.load(path, weights_only=True)
    sd["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    sd["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    torch.save(OrderedDict(sd), path)
    # An older config.json: a `text_config_dict` beside `text_config`. transformers then builds the text config from
    # `text_config_dict` alone (its defaults for absent keys) and overwrites every `text_config` value with it.
    cfg_path = os.path.join(folder, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["text_config"]["hidden_act"] = "quick_gelu"
    cfg["text_config"]["intermediate_size"] = 99
    cfg["text_config_dict"] = {k: cfg["text_config"][k] for k in TEXT_KEYS if k in cfg["text_config"]}
    cfg["text_config_dict"].update(hidden_act="gelu", intermediate_size=37)
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    write_tokenizer(folder, VOCAB_SIZE, "!")
    loaded = CLIPModel.from_pretrained(folder).eval()
    assert loaded.config.text_config.hidden_act == "gelu"
    check_same(model, loaded)
    return loaded, CLIPTokenizer.from_pretrained(folder)


def build_clip():
    folder = os.path.join(OUT, "clip")
    shutil.rmtree(folder, ignore_errors=True)
    model = clip_model(2, "quick_gelu", 32, 40, 64, VOCAB_SIZE - 1, 2.6592)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(os.path.join(folder, "tokenizer"), VOCAB_SIZE, "<|endoftext|>")
    loaded = CLIPModel.from_pretrained(folder).eval()
    check_same(model, loaded)
    return loaded, CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))


def check_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class AestheticMLP(torch.nn.Module):
    """The LAION improved aesthetic predictor v2 head: no activations, dropout only in training."""

    def __init__(self, width):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


class Payload:
    """Pickles as a call to os.system (posix.system on Linux). Never unpickled here."""

    def __reduce__(self):
        return (os.system, ("echo this checkpoint ran code > /tmp/textcraftor-pwned",))


def preprocess(images, size, mode):
    if mode == "training":
        x = F.adaptive_avg_pool2d(images, (size, size))
    else:
        h, w = images.shape[-2:]
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        x = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
        x = x[:, :, top:top + size, left:left + size]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def torchvision_eval(images, size):
    """torchvision's Resize + CenterCrop on tensors: must equal the evaluation path above."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    x = TF.resize(images, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    return TF.normalize(x, MEAN, STD)


def main():
    os.makedirs(OUT, exist_ok=True)
    pick, pick_tok = build_pickscore()
    clip, clip_tok = build_clip()

    torch.manual_seed(7)
    aesthetic = perturb(AestheticMLP(16).eval(), 7)
    torch.save(aesthetic.state_dict(), os.path.join(OUT, "aesthetic.pth"))
    bad = OrderedDict([("layers.0.weight", torch.zeros(2, 2)), ("layers.0.bias", Payload())])
    torch.save(bad, os.path.join(OUT, "bad_aesthetic.pth"))

    g = torch.Generator().manual_seed(11)
    images = torch.rand(2, 3, 48, 64, generator=g)
    t = {"images": images}

    def ids(tok):
        return tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    # Embeddings of both models on fixed inputs of the tower's size.
    for name, model, tok in [("pickscore", pick, pick_tok), ("clip", clip, clip_tok)]:
        size = model.config.vision_config.image_size
        pixels = torch.randn(2, 3, size, size, generator=g)
        input_ids = ids(tok)
        with torch.no_grad():
            vision = model.vision_model(pixels)
            text = model.text_model(input_ids)
            t[f"{name}.pixels"] = pixels
            t[f"{name}.input_ids"] = input_ids
            t[f"{name}.vision.last_hidden_state"] = vision.last_hidden_state
            t[f"{name}.vision.pooler_output"] = vision.pooler_output
            t[f"{name}.text.pooler_output"] = text.pooler_output
            t[f"{name}.image_embeds"] = model.get_image_features(pixels)
            t[f"{name}.text_embeds"] = model.get_text_features(input_ids)
            # PickScore's own call pads to the longest prompt with an attention mask: same pooled features.
            short = tok(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
            assert torch.allclose(model.get_text_features(**short), t[f"{name}.text_embeds"], atol=1e-5)

    def score(reward, x, mode):
        if reward == "pickscore":
            model, tok = pick, pick_tok
        else:
            model, tok = clip, clip_tok
        size = model.config.vision_config.image_size
        image = model.get_image_features(preprocess(x, size, mode))
        if reward == "aesthetic":
            return aesthetic(F.normalize(image, dim=-1)).squeeze(1)
        text = F.normalize(model.get_text_features(ids(tok)), dim=-1)
        cos = (F.normalize(image, dim=-1) * text).sum(-1)
        return model.logit_scale.exp() * cos if reward == "pickscore" else cos

    for mode in ["training", "evaluation"]:
        for reward in ["pickscore", "clip", "aesthetic"]:
            x = images.clone().requires_grad_(True)
            s = score(reward, x, mode)
            (grad,) = torch.autograd.grad(s.sum(), x)
            t[f"{reward}.{mode}.scores"] = s.detach()
            t[f"{reward}.{mode}.grad"] = grad
            print(f"{reward:9s} {mode:10s} scores {s.detach().numpy()}  |grad|max {grad.abs().max():.3e}")

    for size in [32, 64]:
        diff = (preprocess(images, size, "evaluation") - torchvision_eval(images, size)).abs().max()
        print(f"evaluation preprocessing vs torchvision at {size}: max abs difference {diff:.2e}")
        assert diff < 1e-5

    # For information: the same scores through transformers' CLIPImageProcessor (PIL bicubic on uint8 images).
    quantised = (images * 255).round() / 255
    pil = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images]
    for reward, model in [("pickscore", pick), ("clip", clip), ("aesthetic", clip)]:
        size = model.config.vision_config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        pixels = processor(images=pil, return_tensors="pt").pixel_values
        with torch.no_grad():
            ours = score(reward, quantised, "evaluation")
            pixels_ours = preprocess(quantised, size, "evaluation")
            image = model.get_image_features(pixels)
            if reward == "aesthetic":
                theirs = aesthetic(F.normalize(image, dim=-1)).squeeze(1)
            else:
                tok = pick_tok if reward == "pickscore" else clip_tok
                text = F.normalize(model.get_text_features(ids(tok)), dim=-1)
                theirs = (F.normalize(image, dim=-1) * text).sum(-1)
                if reward == "pickscore":
                    theirs = model.logit_scale.exp() * theirs
        print(f"{reward:9s} CLIPImageProcessor (PIL) vs tensor path: pixels max abs diff "
              f"{(pixels - pixels_ours).abs().max():.3e}, scores {theirs.numpy()} vs {ours.numpy()}, "
              f"max abs diff {(theirs - ours).abs().max():.3e}")

    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "outputs.safetensors"))


if __name__ == "__main__":
    main()
