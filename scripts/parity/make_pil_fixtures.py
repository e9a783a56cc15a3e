#!/usr/bin/env python3
"""Scores of image files as the reward models' published tools compute them (Tests/RewardsTests/Fixtures/pil).

`textcraftor score` and `eval` read PNG/JPEG files as 8-bit images and resize them as Pillow does, so that their
numbers equal the tools'. This script runs each tool's own PIL pipeline on the same files with the tiny reward models
already committed under Tests/RewardsTests/Fixtures (it loads them; it trains or changes nothing):

  aesthetic    OpenAI CLIP's / open_clip's `preprocess` (torchvision Resize(size, BICUBIC) + CenterCrop on PIL), on
               the tiny transformers CLIP (hf/clip, 64 px) and the tiny LAION head (hf/aesthetic.pth)
  pickscore    transformers' CLIPImageProcessor (slow, PIL), on hf/pickscore (32 px)
  clip         the same processor, on hf/clip (64 px)
  hpsv2        open_clip's `image_transform(size, is_train=False)` (HPSv2's preprocess_val), on openclip/tiny (32 px)
  aesthetic25  transformers' SiglipImageProcessor (PIL bicubic to size x size), on siglip/vision + the v2.5 head
  imagereward  the image-reward package's own `score(prompt, PIL image)` (its `_transform`), on imagereward/

Writes under Tests/RewardsTests/Fixtures/pil/:
  *.png, *.jpg            noise and smooth images of odd sizes (landscape, portrait, square, smaller than the
                          towers, much larger), one grey PNG, one JPEG
  expected.safetensors    `{reward}.scores` [N] (float64) in the order of `files`, and `{reward}.{file}` the uint8
                          pixels [size, size, 3] each tool feeds its ToTensor
                          `resample.{filter}.{W}x{H}` a 40x37 crop (`resample.source`) resized by Pillow alone
  expected.json           the files, and each reward's prompt

Run by hand:  python3 scripts/parity/make_pil_fixtures.py  (after the other reward fixture scripts; needs Pillow
13.0.0, torchvision 0.26.0, open_clip_torch 3.3.0, transformers 4.57.6, aesthetic-predictor-v2-5 and image-reward as
make_siglip_fixtures.py and make_imagereward_fixtures.py do).
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures")
OUT = os.path.join(FIXTURES, "pil")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
HF_PROMPT = "a photo of a cat on a red sofa"        # HFFixtures.prompts[0]
OPENCLIP_PROMPT = "a photo of a red cat"             # OpenCLIPFixtures.prompts[0]; its ids are in tiny/outputs
IMAGEREWARD_PROMPT = "a photo of a red cat"
SIGLIP_PROMPT = "a photo of a cat"


def write_images():
    """(file name, PIL image) pairs, written to OUT."""
    rng = np.random.default_rng(2026)
    files = []

    def save(name, array, **kwargs):
        image = Image.fromarray(array)
        image.save(os.path.join(OUT, name), **kwargs)
        files.append(name)

    def noise(w, h):
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    save("noise_77x48.png", noise(77, 48))     # the long side's crop offset is a half (rounded to even / floored)
    save("noise_48x77.png", noise(48, 77))     # portrait
    save("noise_301x203.png", noise(301, 203))  # much larger: wide antialiasing supports
    save("noise_20x27.png", noise(20, 27))     # smaller than every tower: upscaled
    save("noise_64x64.png", noise(64, 64))     # square; hf/clip's own size (a copy)
    save("noise_32x45.png", noise(32, 45))     # the 32-px towers' width: only the vertical pass runs
    y, x = np.mgrid[0:97, 0:131]
    smooth = np.stack([127.5 + 127.5 * np.sin(x / 7.0), 127.5 + 127.5 * np.cos(y / 5.0), (x + y) % 256], axis=-1)
    save("smooth_131x97.png", smooth.round().clip(0, 255).astype(np.uint8))
    save("grey_50x41.png", rng.integers(0, 256, size=(41, 50), dtype=np.uint8))
    save("photo_90x70.jpg", (smooth[:70, :90] * 0.8 + noise(90, 70) * 0.2).round().astype(np.uint8), quality=90)
    return files


def open_rgb(name):
    return Image.open(os.path.join(OUT, name)).convert("RGB")


def pil_to_uint8(image):
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy())


def hf_models():
    from transformers import CLIPModel, CLIPTokenizer
    pick = CLIPModel.from_pretrained(os.path.join(FIXTURES, "hf", "pickscore")).eval()
    pick_tok = CLIPTokenizer.from_pretrained(os.path.join(FIXTURES, "hf", "pickscore"))
    clip = CLIPModel.from_pretrained(os.path.join(FIXTURES, "hf", "clip")).eval()
    clip_tok = CLIPTokenizer.from_pretrained(os.path.join(FIXTURES, "hf", "clip", "tokenizer"))
    from make_reward_fixtures_hf import AestheticMLP
    head = AestheticMLP(clip.config.projection_dim).eval()
    head.load_state_dict(torch.load(os.path.join(FIXTURES, "hf", "aesthetic.pth"), weights_only=True))
    return pick, pick_tok, clip, clip_tok, head


def text_features(model, tok, prompt):
    ids = tok([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return F.normalize(model.get_text_features(ids), dim=-1)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    files = write_images()
    out = {}
    prompts = {}

    def record(reward, scores, pixels):
        out[f"{reward}.scores"] = torch.tensor(scores, dtype=torch.float64)
        for name, p in zip(files, pixels):
            out[f"{reward}.{name}"] = p.contiguous()
        print(f"{reward:11s} {['%.6f' % s for s in scores]}")

    with torch.no_grad():
        # transformers CLIP models: CLIPImageProcessor (PickScore, CLIP score); torchvision on PIL (aesthetic).
        import torchvision.transforms as T
        from transformers import CLIPImageProcessor
        pick, pick_tok, clip, clip_tok, head = hf_models()
        for reward, model, tok in [("pickscore", pick, pick_tok), ("clip", clip, clip_tok)]:
            size = model.config.vision_config.image_size
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
            assert processor.resample == Image.BICUBIC
            scores, pixels = [], []
            text = text_features(model, tok, HF_PROMPT)
            for name in files:
                x = processor(images=open_rgb(name), return_tensors="pt").pixel_values
                raw = processor(images=open_rgb(name), do_rescale=False, do_normalize=False, return_tensors="np")
                pixels.append(torch.from_numpy(raw.pixel_values[0].transpose(1, 2, 0).round().astype(np.uint8)))
                cos = (F.normalize(model.get_image_features(x), dim=-1) * text).sum(-1)
                scores.append((model.logit_scale.exp() * cos if reward == "pickscore" else cos).item())
            record(reward, scores, pixels)
            prompts[reward] = HF_PROMPT
        size = clip.config.vision_config.image_size
        openai = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                            lambda image: image.convert("RGB"), T.ToTensor(), T.Normalize(MEAN, STD)])
        scores, pixels = [], []
        for name in files:
            image = open_rgb(name)
            pixels.append(pil_to_uint8(T.Compose(openai.transforms[:3])(image)))
            embeds = clip.get_image_features(openai(image).unsqueeze(0))
            scores.append(head(F.normalize(embeds, dim=-1)).item())
        record("aesthetic", scores, pixels)
        prompts["aesthetic"] = HF_PROMPT

        # HPSv2: open_clip's model and preprocess_val.
        import open_clip
        from open_clip.transform import image_transform
        tiny = os.path.join(FIXTURES, "openclip", "tiny")
        with open(os.path.join(tiny, "model_config.json")) as f:
            cfg = json.load(f)
        model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"]).eval()
        model.load_state_dict(load_file(os.path.join(tiny, "open_clip_model.safetensors")), strict=True)
        ids = load_file(os.path.join(tiny, "outputs.safetensors"))["ids"][:1]
        size = cfg["vision_cfg"]["image_size"]
        transform = image_transform(size, is_train=False, mean=MEAN, std=STD)
        assert [type(t).__name__ for t in transform.transforms][:2] == ["Resize", "CenterCrop"], transform
        text = F.normalize(model.encode_text(ids), dim=-1)
        scores, pixels = [], []
        for name in files:
            image = open_rgb(name)
            pixels.append(pil_to_uint8(T.Compose(transform.transforms[:2])(image)))
            scores.append((F.normalize(model.encode_image(transform(image).unsqueeze(0)), dim=-1) * text).sum().item())
        record("hpsv2", scores, pixels)
        prompts["hpsv2"] = OPENCLIP_PROMPT

        # Aesthetic Predictor v2.5: the package's model and SigLIP's processor.
        from transformers import SiglipImageProcessor, SiglipVisionConfig
        from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Model
        vision = os.path.join(FIXTURES, "siglip", "vision")
        config = SiglipVisionConfig.from_pretrained(vision)
        model = AestheticPredictorV2_5Model(config).eval()
        state = load_file(os.path.join(vision, "model.safetensors"))
        state.update({"layers." + k: v for k, v in
                      torch.load(os.path.join(FIXTURES, "siglip", "aesthetic_predictor_v2_5.pth"), weights_only=True).items()})
        model.load_state_dict(state, strict=True)
        size = config.image_size
        processor = SiglipImageProcessor(size={"height": size, "width": size})
        assert processor.resample == Image.BICUBIC
        scores, pixels = [], []
        for name in files:
            x = processor(images=open_rgb(name), return_tensors="pt").pixel_values
            raw = processor(images=open_rgb(name), do_rescale=False, do_normalize=False, return_tensors="np")
            pixels.append(torch.from_numpy(raw.pixel_values[0].transpose(1, 2, 0).round().astype(np.uint8)))
            scores.append(model(pixel_values=x, return_dict=True).logits.squeeze().item())
        record("aesthetic25", scores, pixels)
        prompts["aesthetic25"] = SIGLIP_PROMPT

        # ImageReward: the package's own score() (its PIL _transform), on the committed tiny model.
        import make_imagereward_fixtures as irf
        IR, blip_pretrain, vit = irf.load_package()
        tok = irf.make_tokenizer(os.path.join(FIXTURES, "imagereward", "vocab.txt"))
        with open(os.path.join(FIXTURES, "imagereward", "med_config.json")) as f:
            med = json.load(f)
        blip_pretrain.create_vit = lambda *a, **k: (vit.VisionTransformer(
            img_size=irf.IMAGE_SIZE, patch_size=irf.PATCH, embed_dim=irf.VIT_WIDTH, depth=irf.VIT_DEPTH,
            num_heads=irf.VIT_HEADS), irf.VIT_WIDTH)
        blip_pretrain.init_tokenizer = lambda: tok
        package_mlp = IR.MLP
        IR.MLP = lambda input_size: package_mlp(med["hidden_size"])
        model = IR.ImageReward(med_config=os.path.join(FIXTURES, "imagereward", "med_config.json"), device="cpu")
        model.load_state_dict(torch.load(os.path.join(FIXTURES, "imagereward", "ImageReward.pt"), weights_only=True))
        model.preprocess = IR._transform(irf.IMAGE_SIZE)
        model.eval()
        scores, pixels = [], []
        for name in files:
            image = open_rgb(name)
            pixels.append(pil_to_uint8(T.Compose(model.preprocess.transforms[:2])(image)))
            scores.append(float(model.score(IMAGEREWARD_PROMPT, image)))
        record("imagereward", scores, pixels)
        prompts["imagereward"] = IMAGEREWARD_PROMPT

    # Pillow's resample on its own: one noise image to sizes on every side of Pillow 13's pass-order rule (vertical
    # first when the height loses more than twice as many pixels as the width; ties go horizontal first), with each
    # filter the processors may use.
    source = open_rgb("noise_48x77.png").crop((0, 0, 40, 37))
    cases = [(20, 5), (39, 10), (35, 27), (36, 26), (36, 27), (60, 20), (20, 60), (60, 50), (13, 36), (40, 20), (7, 37), (1, 1)]
    for w, h in cases:
        for name, f in [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR), ("box", Image.BOX)]:
            out[f"resample.{name}.{w}x{h}"] = pil_to_uint8(source.resize((w, h), f))
    out["resample.source"] = pil_to_uint8(source)

    save_file(out, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"files": files, "prompts": prompts}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{len(os.listdir(OUT))} files, {total} bytes")


if __name__ == "__main__":
    main()
