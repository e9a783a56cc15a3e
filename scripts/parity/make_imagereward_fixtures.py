#!/usr/bin/env python3
"""A tiny random ImageReward built with the image-reward package's own model code, and what it computes: scores and
their gradients with respect to the images in both preprocessing modes, and the BERT tokenizer's ids on hard cases
(Tests/RewardsTests/Fixtures/imagereward).

Run by hand:  python3 scripts/parity/make_imagereward_fixtures.py
Needs torch==2.11.0, torchvision, transformers (4.57.6 used), timm (1.0.31 used), Pillow, safetensors, and
image-reward==1.5 installed with `pip install --no-deps image-reward==1.5`. Nothing is downloaded.

How the package is imported (its code is used unchanged; only its imports are helped):
- `ImageReward/__init__.py` and `ImageReward/models/__init__.py` import the whole package (ReFL needs diffusers, the
  other scores need CLIP); empty package modules stand in for them so that only `ImageReward.ImageReward` and
  `models/BLIP/*` are loaded.
- `blip/vit.py` imports fairscale's `checkpoint_wrapper`, used only with gradient checkpointing (off here): a stub
  module provides the name.
- `blip/med.py` imports `apply_chunking_to_forward`, `find_pruneable_heads_and_indices` and `prune_linear_layer` from
  `transformers.modeling_utils`, where transformers 4.x kept them until they moved to `transformers.pytorch_utils`;
  they are aliased back.
- `BLIP_Pretrain` builds `BertTokenizer.from_pretrained('bert-base-uncased')` (a download) and a ViT-L; its
  `init_tokenizer` and `create_vit` are replaced by the same calls on a small WordPiece vocabulary (with BLIP's
  `[DEC]` and `[ENC]` added as the package adds them) and a tiny `VisionTransformer`. `ImageReward` builds `MLP(768)`;
  the MLP is built with the tiny text width instead. Everything else (forward passes, score_gard, the package's
  `score` with its PIL `_transform`) is the package's.

Writes under Tests/RewardsTests/Fixtures/imagereward/:
  vocab.txt                 a 220-token WordPiece vocabulary ([PAD] 0, [UNK] 5, [CLS] 6, [SEP] 7, [MASK] 8)
  med_config.json           the tiny BertConfig (+ "vision_num_attention_heads", read by our loader only)
  ImageReward.pt            torch.save(model.state_dict()), as the published ImageReward.pt
  outputs.safetensors       images, ids, masks, pixels, image embeddings, [CLS] states, scores and image gradients
  tokens.json               prompts and transformers' BertTokenizer ids and masks (max_length 35)

`--check-synth DIR IMAGE PROMPT` instead checks a real-sized `textcraftor synth-model --preset imagereward` folder
against the package (see check_synth); it writes nothing.
"""
import json
import os
import sys
import types

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "imagereward")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE, PATCH, VIT_WIDTH, VIT_DEPTH, VIT_HEADS = 32, 16, 48, 2, 3
PROMPTS = ["a photo of a red cat", "An astronaut riding a horse, 4k, trending on artstation!!"]
TOKENIZER_PROMPTS = PROMPTS + [
    "",
    "Café crème brûlée, naïve e\u0301 CAFÉ",
    "北京 is a 大city",
    "[CLS] hello [SEP] [DEC] x[ENC]y [cls] [MASK]",
    "unaffable don't $5.00 & 100% (cat)",
    "ΣΑΣ σας",
    "tab\tand\nnewline\u00a0nbsp\u2028line\u3000ideographic",
    "ctrl\x00\x07\u200bzero\ufffdwidth",
    "İstanbul ＡＢＣ 🙂 ﬁsh",
    "a" * 100 + " " + "b" * 101,
    "a very long prompt " + " ".join(f"cat{i % 10} and red" for i in range(20)),
]


def package_root():
    import importlib.util
    spec = importlib.util.find_spec("ImageReward")
    return os.path.dirname(spec.origin)


def load_package():
    if "ImageReward.ImageReward" in sys.modules:  # loaded before (by this function)
        return (sys.modules["ImageReward.ImageReward"], sys.modules["ImageReward.models.BLIP.blip_pretrain"],
                sys.modules["ImageReward.models.BLIP.vit"])
    root = package_root()
    for name, path in (("ImageReward", root), ("ImageReward.models", os.path.join(root, "models"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint", "fairscale.nn.checkpoint.checkpoint_activations"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["fairscale.nn.checkpoint.checkpoint_activations"].checkpoint_wrapper = None
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    import ImageReward.ImageReward as IR
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
    import ImageReward.models.BLIP.vit as vit
    return IR, blip_pretrain, vit


def vocabulary():
    tokens = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + [chr(c) for c in range(33, 127) if not chr(c).isalnum()]
    tokens += chars + ["北", "京", "大", "σ", "ς", "é"]
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##σ", "##ς", "##α"]
    tokens += ["photo", "of", "red", "cat", "an", "astronaut", "riding", "horse", "trending", "on", "art",
               "##station", "cafe", "creme", "brulee", "naive", "is", "city", "hello", "un", "##aff", "##able", "don",
               "istanbul", "and", "very", "long", "prompt", "tab", "new", "##line", "nb", "##sp", "line", "ideographic",
               "ctrl", "zero", "width", "sh", "##ing", "##er"]
    assert len(tokens) == len(set(tokens))
    return tokens


def make_tokenizer(vocab_file):
    from transformers import BertTokenizer
    tok = BertTokenizer(vocab_file)  # do_lower_case=True, as bert-base-uncased
    # BLIP's init_tokenizer, on this vocabulary.
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.additional_special_tokens_ids[0]
    return tok


def use_classes(IR, blip_pretrain, vit, tok, hidden_size, image_size=IMAGE_SIZE, patch=PATCH, width=VIT_WIDTH,
                depth=VIT_DEPTH, heads=VIT_HEADS):
    """Makes the package's classes build a model of these sizes (the tiny one by default): `ImageReward(med_config=...)`
    then constructs this ViT (BLIP's VisionTransformer, mlp_ratio 4 as create_vit's), the given tokenizer instead of
    bert-base-uncased's download, and its MLP on the text width `hidden_size` instead of 768."""
    def sized_vit(vit_name, *args, **kwargs):
        return vit.VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=width, depth=depth,
                                     num_heads=heads), width
    blip_pretrain.create_vit = sized_vit
    blip_pretrain.init_tokenizer = lambda: tok
    package_mlp = getattr(IR, "_package_MLP", IR.MLP)
    IR._package_MLP = package_mlp
    IR.MLP = lambda input_size: package_mlp(hidden_size)


def load_checkpoint(checkpoint=os.path.join(OUT, "ImageReward.pt"), vocab_file=None, dtype=torch.float32):
    """An ImageReward checkpoint (ImageReward.pt, or a .safetensors copy such as `textcraftor synth-model --preset
    imagereward` writes) with med_config.json beside it, in the package's own classes, in eval mode, and its tokenizer
    (transformers' BertTokenizer on `vocab_file`, default vocab.txt beside the checkpoint, with BLIP's added tokens).
    The ViT's sizes are read from the weights (as our loader does; heads from med_config's
    "vision_num_attention_heads", else width / 64: ViT-L's 16), and load_state_dict is strict. Default: the tiny
    fixture model. Used by make_trainer_fixtures.py and scripts/bench/train_step.py."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if checkpoint.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(checkpoint)
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    med_file = os.path.join(folder, "med_config.json")
    with open(med_file) as f:
        med = json.load(f)
    proj = state["blip.visual_encoder.patch_embed.proj.weight"]
    width, patch = proj.shape[0], proj.shape[2]
    side = int(round((state["blip.visual_encoder.pos_embed"].shape[1] - 1) ** 0.5)) * patch
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("blip.visual_encoder.blocks."))
    heads = med.get("vision_num_attention_heads") or width // 64
    IR, blip_pretrain, vit = load_package()
    tok = make_tokenizer(vocab_file or os.path.join(folder, "vocab.txt"))
    use_classes(IR, blip_pretrain, vit, tok, med["hidden_size"], side, patch, width, depth, heads)
    model = IR.ImageReward(med_config=med_file, device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval(), tok


def normalise(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def preprocess(images, size, mode):
    """The two modes of Sources/Rewards/ImagePreprocessing.swift, in tensor ops (as make_reward_fixtures_openclip)."""
    if mode == "training":
        return normalise(F.adaptive_avg_pool2d(images, size))
    h, w = images.shape[-2:]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return normalise(x[:, :, top:top + size, left:left + size])


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    IR, blip_pretrain, vit = load_package()

    tokens = vocabulary()
    vocab_file = os.path.join(OUT, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    tok = make_tokenizer(vocab_file)
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(tokens), len(tokens) + 1]

    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
           "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(tokens) + 2,
           "encoder_width": VIT_WIDTH, "add_cross_attention": True, "vision_num_attention_heads": VIT_HEADS}
    med_file = os.path.join(OUT, "med_config.json")
    with open(med_file, "w") as f:
        json.dump(med, f, indent=2)

    use_classes(IR, blip_pretrain, vit, tok, med["hidden_size"])
    torch.manual_seed(0)
    model = IR.ImageReward(med_config=med_file, device="cpu")
    model.preprocess = IR._transform(IMAGE_SIZE)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("mlp.") and name.endswith("weight"):  # the package's init (std 1/33) fades to ~0
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:  # non-trivial biases and norm affines
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert any(k.startswith("blip.vision_proj") for k in sd) and "blip.text_encoder.embeddings.position_ids" in sd
    torch.save(sd, os.path.join(OUT, "ImageReward.pt"))

    # Tokens: transformers' BertTokenizer (the package's call: max_length 35, truncation, padding to max_length).
    encoded = [tok(p, padding="max_length", truncation=True, max_length=35) for p in TOKENIZER_PROMPTS]
    with open(os.path.join(OUT, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"prompts": TOKENIZER_PROMPTS,
                   "tokens": [tok.tokenize(p) for p in TOKENIZER_PROMPTS],
                   "ids": [e["input_ids"] for e in encoded],
                   "mask": [e["attention_mask"] for e in encoded]}, f, ensure_ascii=False, indent=1)
    for p, e in zip(TOKENIZER_PROMPTS, encoded):
        print(repr(p[:40]), tok.convert_ids_to_tokens(e["input_ids"])[:12])

    text = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    ids, mask = text.input_ids, text.attention_mask
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(7))
    out = {"images": images, "ids": ids, "mask": mask}
    for mode in ("training", "evaluation"):
        x = images.clone().requires_grad_(True)
        pixels = preprocess(x, IMAGE_SIZE, mode)
        scores = model.score_gard(ids, mask, pixels).squeeze(1)  # the package's differentiable path
        scores.sum().backward()
        with torch.no_grad():
            embeds = model.blip.visual_encoder(pixels)
            states = model.blip.text_encoder(ids, attention_mask=mask, encoder_hidden_states=embeds,
                                             encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long),
                                             return_dict=True).last_hidden_state[:, 0]
        out[f"pixels_{mode}"] = pixels.detach()
        out[f"image_embeds_{mode}"] = embeds
        out[f"cls_{mode}"] = states
        out[f"scores_{mode}"] = scores.detach()
        out[f"grad_{mode}"] = x.grad.detach()
        print(f"{mode}: scores {scores.tolist()}, |grad| max {x.grad.abs().max().item():.3e}")

    # The package's own `score(prompt, PIL image)` (PIL bicubic resize, centre crop) on the images quantised to uint8,
    # against the tensor evaluation path on the same quantised images: for information (PIL's bicubic differs a little).
    quantised = (images * 255).round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        pil_scores = torch.tensor([model.score(p, Image.fromarray(q.permute(1, 2, 0).numpy()))
                                   for p, q in zip(PROMPTS, quantised)])
        ours = model.score_gard(ids, mask, preprocess(quantised.float() / 255, IMAGE_SIZE, "evaluation")).squeeze(1)
    print(f"package score() with PIL {pil_scores.tolist()} vs tensor evaluation path {ours.tolist()}")
    out["pil_scores_quantised"] = pil_scores.float()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "outputs.safetensors"))
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


def check_synth(folder, image_path, prompt):
    """`--check-synth DIR IMAGE PROMPT`: loads `textcraftor synth-model --preset imagereward`'s folder into the
    package's real-sized ImageReward (ViT-L/16, BERT-base; the tokenizer from the folder's vocab.txt plus BLIP's added
    tokens) with load_state_dict(strict=True), and prints the package's own score() of IMAGE for PROMPT, to compare
    with `textcraftor score --preprocessing evaluation` on the same folder (about 1.8 GB of memory)."""
    model, _ = load_checkpoint(os.path.join(folder, "ImageReward.safetensors"))
    with torch.no_grad():
        print(f"package score: {model.score(prompt, Image.open(image_path)):.6f}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--check-synth":
        check_synth(*sys.argv[2:])
    else:
        main()
