#!/usr/bin/env python3
"""The Python side of `textcraftor bench train`: one prompt-based TextCraftor training step in PyTorch, printed as
one JSON line {"train_step_s": ..., "peak_rss_kb": ..., "loss": ...} (numbers only).

The step is the one of scripts/parity/make_trainer_fixtures.py (imported from there, so both stay the same):
trailing DDIM with --steps steps, eta 0, guidance 7.5; the first steps - window steps without grad on the frozen
original encoder's embeddings, the last --window steps with grad on the trainable encoder's (uncond + cond), the latent
chain kept; VAE decode; aesthetic and CLIP rewards with the training preprocessing;
loss = -(3 * 1 * aesthetic + 100 * 0.5 * clip + 1 * pickscore + 100 * hpsv2 + 100 * hpsv2.1 + 1 * imagereward
+ 3 * aesthetic25).mean(), the last five with --pickscore, --hpsv2, --hpsv2.1 (HPSv2's loader: open_clip ViT-H-14,
a {'state_dict': ...} float16 checkpoint copied into the float32 model), --imagereward (the image-reward package's
own classes, imported as scripts/parity/make_imagereward_fixtures.py does: needs image-reward==1.5, timm,
torchvision) and --aesthetic25 (the aesthetic-predictor-v2-5 package's AestheticPredictorV2_5Model, a transformers
SiglipVisionModel with the v2.5 head, as scripts/parity/make_siglip_fixtures.py builds it; the training
preprocessing: adaptive average pooling to the tower's size, mean = std = 0.5); backward; one AdamW step (lr 1e-3).
The names of the rewards in the loss go to stderr ("rewards: aesthetic+clip+..."), in the order of ours. By default every UNet call in the window runs under
torch.utils.checkpoint (non-reentrant), as the authors do; --no-checkpoint keeps the activations instead.

An SDXL folder (model_index.json's StableDiffusionXLPipeline) runs the step of
scripts/parity/make_sdxl_trainer_fixtures.py instead (imported too): both encoders' penultimate states and the pooled
projection, the time ids, zeros for the unconditional half where force_zeros_for_empty_prompt is set, DDIM trailing
from the folder's scheduler config; --train names the encoders that train (text-encoder, text-encoder-2 or
text-encoders), each loaded twice (trainable and a frozen copy), an encoder that does not train once.

--precision fp32 (default) is the authors' setting: every model in float32 (their fp32 autocast changes nothing).
--precision bf16 is the usual diffusers training variant: the frozen models' weights in bfloat16 and the step under
torch.autocast(bfloat16), the trained text encoder in float32.

train_step_s is the best of --repeats wall-clock timings of zero_grad + forward + backward + optimizer step, after one
warm-up step (models loaded once, outside the timing). peak_rss_kb is VmHWM of /proc/self/status
(kilobytes) at the end: the whole process, loading included (ru_maxrss would carry the parent's peak across exec).
On CUDA, peak_cuda_mb (torch.cuda.max_memory_allocated) is added.
"""
import argparse
import json
import logging
import os
import resource
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "parity"))

import torch  # noqa: E402

import make_sdxl_trainer_fixtures as xl  # noqa: E402
import make_trainer_fixtures as ref  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
for name in ["diffusers", "transformers"]:
    logging.getLogger(name).setLevel(logging.ERROR)

p = argparse.ArgumentParser()
p.add_argument("--model", default=ref.SD, help="a diffusers Stable Diffusion folder")
p.add_argument("--clip", default=os.path.join(ref.HF, "clip"), help="a transformers CLIPModel folder")
p.add_argument("--aesthetic", default=os.path.join(ref.HF, "aesthetic.pth"), help="the LAION aesthetic head .pth")
p.add_argument("--batch", type=int, default=2)
p.add_argument("--steps", type=int, default=5, help="sampling steps")
p.add_argument("--window", type=int, default=5, help="steps with gradient (the last ones)")
p.add_argument("--size", type=int, default=64, help="image size in pixels")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--device", default="cpu")
p.add_argument("--no-checkpoint", action="store_true", help="plain autograd through the UNet calls")
p.add_argument("--guidance", type=float, default=ref.GUIDANCE)
p.add_argument("--pickscore", help="a PickScore (transformers CLIPModel) folder: adds 1 * pickscore (the authors' scale)")
p.add_argument("--hpsv2", help="an HPSv2 open_clip ViT-H-14 checkpoint (.pt or .safetensors): adds 100 * hpsv2")
p.add_argument("--hpsv2.1", dest="hpsv21", help="an HPSv2.1 checkpoint (HPS_v2.1_compressed.pt): as --hpsv2, "
               "adds 100 * hpsv2.1")
p.add_argument("--imagereward", help="CKPT[,VOCAB]: ImageReward.pt (or a .safetensors copy) with med_config.json "
               "beside it, and bert-base-uncased's vocab.txt (default: beside it): adds 1 * imagereward")
p.add_argument("--aesthetic25", help="SIGLIP_DIR,HEAD: a transformers SigLIP folder (vision or full model) and the "
               "Aesthetic Predictor v2.5 head (.pth or .safetensors): adds 3 * aesthetic25")
p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
p.add_argument("--train", choices=["text-encoder", "text-encoder-2", "text-encoders"], default="text-encoder",
               help="the encoders that train (SDXL; SD 1.x/2.x has text-encoder only)")
args = p.parse_args()
if args.threads > 0:
    torch.set_num_threads(args.threads)
if not 0 <= args.window <= args.steps:
    sys.exit(f"--window must be between 0 and --steps ({args.steps})")

bf16 = args.precision == "bf16"
dtype = torch.bfloat16 if bf16 else torch.float32
with open(os.path.join(args.model, "model_index.json")) as f:
    sdxl = json.load(f).get("_class_name") == "StableDiffusionXLPipeline"
if not sdxl and args.train != "text-encoder":
    sys.exit(f"--train {args.train}: an SD 1.x/2.x model has one text encoder")
if sdxl:
    m = xl.Models(sdxl=args.model, clip=args.clip, aesthetic=args.aesthetic, device=args.device, dtype=dtype)
    names = {"text-encoder": ["text_encoder"], "text-encoder-2": ["text_encoder_2"],
             "text-encoders": list(xl.ENCODERS)}[args.train]
    # The trained encoders keep float32 weights (the optimizer's); their frozen copies stay in the models' type.
    trainable, originals = m.fresh_encoders(train=names, trained_dtype=torch.float32)
    trained = [e for name, e in zip(xl.ENCODERS, trainable) if name in names]
else:
    m = ref.Models(sd=args.model, clip=args.clip, aesthetic=args.aesthetic, device=args.device, dtype=dtype)
    te, te_frozen = m.fresh_text_encoder()
    if bf16:  # the trained encoder keeps float32 weights (the optimizer's); its frozen copy stays bfloat16
        te = te.float()
    trained = [te]
device_type = torch.device(args.device).type
extra = []  # (weight, image -> [B] score)
names = ["aesthetic", "clip"]  # the rewards in the loss, in ours' order


def pixels(image, size, mean=ref.MEAN, std=ref.STD):
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (torch.nn.functional.interpolate(image, size=(size, size), mode="bicubic", align_corners=False) - mean) / std


if args.pickscore:
    from transformers import CLIPModel, CLIPTokenizer
    pick = ref.frozen(CLIPModel.from_pretrained(args.pickscore, dtype=m.dtype).to(m.device))
    # The tokenizer's files: in tokenizer/ (synth-model) or beside the weights, else the aesthetic CLIP's (the same BPE).
    candidates = [os.path.join(d, sub) for d in (args.pickscore, args.clip) for sub in ("tokenizer", "")]
    pick_tok = CLIPTokenizer.from_pretrained(next(d for d in candidates if os.path.isfile(os.path.join(d, "vocab.json"))))

    def pickscore(image, prompts):
        f = torch.nn.functional.normalize(
            ref.features(pick.get_image_features(pixel_values=pixels(image, pick.config.vision_config.image_size))),
            dim=-1)
        with torch.no_grad():
            t = torch.nn.functional.normalize(
                ref.features(pick.get_text_features(input_ids=m.ids(pick_tok, prompts))), dim=-1)
        return pick.logit_scale.exp() * (f * t).sum(-1)
    extra.append((1.0, pickscore))
    names.append("pickscore")

def hps_term(path):
    import open_clip
    hps = open_clip.create_model("ViT-H-14", pretrained=None, device="cpu")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    hps.load_state_dict(state)  # HPSv2.1's float16 tensors are copied into the float32 model, as the hpsv2 package does
    hps = ref.frozen(hps.to(m.device, m.dtype))
    hps_tok = open_clip.get_tokenizer("ViT-H-14")

    def hpsv2(image, prompts):
        f = torch.nn.functional.normalize(hps.encode_image(pixels(image, 224)), dim=-1)
        with torch.no_grad():
            t = torch.nn.functional.normalize(hps.encode_text(hps_tok(prompts).to(m.device)), dim=-1)
        return (f * t).sum(-1)
    return hpsv2


for name, path in [("hpsv2", args.hpsv2), ("hpsv2.1", args.hpsv21)]:
    if path:
        extra.append((100.0, hps_term(path)))
        names.append(name)

if args.imagereward:
    checkpoint, _, vocab = args.imagereward.partition(",")
    extra.append((1.0, ref.ImageRewardTerm(checkpoint, vocab or None, device=m.device, dtype=m.dtype)))
    names.append("imagereward")

if args.aesthetic25:
    siglip, _, head_file = args.aesthetic25.partition(",")
    if not head_file:
        sys.exit(f"--aesthetic25 {args.aesthetic25}: expected SIGLIP_DIR,HEAD")
    from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Model
    # The package's model: SigLIP's vision tower (from a vision or a full SigLIP folder) with the v2.5 head as .layers.
    a25 = AestheticPredictorV2_5Model.from_pretrained(siglip, dtype=torch.float32)
    if head_file.endswith(".safetensors"):
        from safetensors.torch import load_file
        head_state = load_file(head_file)
    else:
        head_state = torch.load(head_file, map_location="cpu", weights_only=True)
    a25.layers.load_state_dict(head_state)
    a25 = ref.frozen(a25.to(m.device, m.dtype))
    a25_size = a25.config.image_size

    def aesthetic25(image, prompts):
        x = (torch.nn.functional.adaptive_avg_pool2d(image, a25_size) - 0.5) / 0.5  # no crop: squashed to the square
        return a25(pixel_values=x, return_dict=True).logits.squeeze(1)
    extra.append((3.0, aesthetic25))
    names.append("aesthetic25")
print("rewards: " + "+".join(names), file=sys.stderr)


def extra_rewards(image, prompts):
    return sum(weight * score(image, prompts) for weight, score in extra)

opt = torch.optim.AdamW([p for e in trained for p in e.parameters()], lr=ref.LR, betas=ref.BETAS, eps=ref.EPS, weight_decay=ref.WEIGHT_DECAY)
prompts = [ref.PROMPTS[i % len(ref.PROMPTS)] for i in range(args.batch)]
cuda = torch.device(args.device).type == "cuda"


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        if sdxl:
            loss = xl.train_step(m, trainable, originals, args.window, m.force_zeros, prompts=prompts, steps=args.steps,
                                 size=args.size, guidance=args.guidance, checkpoint=not args.no_checkpoint,
                                 extra_rewards=extra_rewards if extra else None)
        else:
            loss = ref.train_step(m, te, te_frozen, prompts, args.steps, args.window, height=args.size, width=args.size,
                                  guidance=args.guidance, checkpoint=not args.no_checkpoint,
                                  extra_rewards=extra_rewards if extra else None)
    loss.backward()
    opt.step()
    value = float(loss)  # waits for the device
    if cuda:
        torch.cuda.synchronize()
    return value


loss = step()
times = []
for _ in range(args.repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)


def peak_rss_kb():
    try:
        with open("/proc/self/status") as f:
            return float(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


out = {"train_step_s": min(times), "peak_rss_kb": peak_rss_kb(),
       "loss": loss}
if cuda:
    out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
