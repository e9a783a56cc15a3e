#!/usr/bin/env python3
"""One prompt-based TextCraftor training step on SDXL in PyTorch, both text encoders trained, on the project's tiny
random models (Tests/TextCraftorTests/SDXLTrainStepParityTests.swift).

Run by hand:  HF_HUB_OFFLINE=1 python3 scripts/parity/make_sdxl_trainer_fixtures.py
Needs torch==2.11.0, diffusers (0.39 used), transformers 4.x (4.57.6 used), safetensors. Nothing is downloaded and
nothing is regenerated: it reads the existing tiny models
  Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl/   make_sdxl_fixtures.py's folder: tokenizer, tokenizer_2 (pads
                                                        with "!"), text_encoder (32 wide), text_encoder_2 (48 wide,
                                                        projection 40), a text_time UNet, a VAE (scaling 0.13025),
                                                        force_zeros_for_empty_prompt
  Tests/RewardsTests/Fixtures/hf/clip/, aesthetic.pth   the rewards of make_trainer_fixtures.py (imported from there)
and writes
  Tests/TextCraftorTests/Fixtures/sdxl_train_step.safetensors   inputs, rewards, loss, gradients, weights after
  Tests/TextCraftorTests/Fixtures/sdxl_train_step.json          the settings and measured tolerances

The step is make_trainer_fixtures.py's (DDIM eta 0, trailing spacing, no sample clipping, guidance 7.5, the loss
-(3 * aesthetic + 50 * clip).mean(), AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2, one step), with
SDXL's conditioning as StableDiffusionXLPipeline builds it when no negative prompt is given:
  1. Scheduler: DDIMScheduler.from_config(tiny-sdxl's EulerDiscreteScheduler config, timestep_spacing="trailing",
     clip_sample=False). The config has no set_alpha_to_one, so DDIM's default (True) holds: the last step goes to
     alpha 1. S = 4: timesteps 999, 749, 499, 249.
  2. Ids: ids = tokenizer(prompts), ids_2 = tokenizer_2(prompts), padding "max_length" 77, truncation.
  3. Conditioning of encoders (te, te_2):
       h = cat([te(ids, output_hidden_states=True).hidden_states[-2],
                te_2(ids_2, output_hidden_states=True).hidden_states[-2]], -1)      [B, 77, 80]
       pooled = te_2(ids_2).text_embeds                                              [B, 40]
     force_zeros_for_empty_prompt (the tiny folder sets it): the unconditional half is zeros, constant;
       context = cat([zeros_like(h), h]), text_embeds = cat([zeros_like(pooled), pooled]).
     Case "empty" instead encodes "" with both tokenizers and encoders for the unconditional half (as the pipeline
     does when the model does not force zeros), and that half trains too.
     time_ids: [64, 64, 0, 0, 64, 64] for every row (original = target = 64x64, crop 0, 0).
  4. Frozen copies: deep copies of both encoders taken before any update, no grad, condition the steps before the
     window; inside it, the trainable encoders (every parameter requires grad), and the latents keep their graph.
       eps = unet(cat([z, z]), t, encoder_hidden_states=context,
                  added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
  5. Latents: randn([2, 4, 8, 8], generator=torch.Generator().manual_seed(1234)); decode x = vae.decode(z / 0.13025)
     (float32: force_upcast changes nothing), image = (x / 2 + 0.5).clamp(0, 1); rewards as make_trainer_fixtures.
  6. loss.backward(); torch.optim.AdamW(list(te.parameters()) + list(te_2.parameters())), one step. text_encoder's
     last layer and final layer norm are not on the path of hidden_states[-2], so their .grad stays None and AdamW
     skips them (no update, no weight decay): they are stored as zero gradients and unchanged weights.

Cases: "k4" (S = 4, K = 4), "k2" (S = 4, K = 2), both with forced zeros; "empty" (S = 4, K = 2, the unconditional
half from ""). The file stays near 1 MB: k4 stores every gradient and every weight after the step, k2 every weight
after the step, and k2 and empty the gradients in SMALL (the pooled path's own parameters and the token rows).

Keys (float32 unless said): ids [2,77] int64, ids_2 [2,77] int64, empty_ids, empty_ids_2 [2,77] int64 ("" rows),
timesteps [S] int64, time_ids [4,6], init_latents [2,4,8,8], and per case c:
  c.loss [], c.aesthetic [2], c.clip [2], c.final_latents, k4.image [2,3,64,64],
  c.grad_text_embeds [4,40] (d loss / d the trainable pooled embeddings, uncond rows first: the forced cases' zeros
  are constants, and their rows' gradient goes nowhere),
  c.grad.<e>.<name> for e in text_encoder, text_encoder_2 and each parameter (k4; SMALL's for k2 and empty),
  c.after.<e>.<name> (k4, k2) except token_embedding.weight, whose rows are stored as
  c.after.<e>.text_model.embeddings.token_embedding.rows [R, D] for the token ids in <e>.token_rows [R] int64 (the
  rows the ids hold; every other row has zero gradient, so AdamW only decays it: before * (1 - lr * wd)); the gradient
  of the token embedding is likewise stored as c.grad.<e>...token_embedding.rows.
"""
import copy
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import make_trainer_fixtures as ref
from make_trainer_fixtures import (BETAS, EPS, GAMMAS, HF, LR, MEAN, PROMPTS, ROOT, SCALES, SEED, STD,
                                   WEIGHT_DECAY, features, frozen)

SDXL = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures", "sdxl", "tiny-sdxl")
SAMPLING_STEPS = 4
GUIDANCE = 7.5
SIZE = 64
# name, K, forced zeros, and what is stored (the file stays near 1 MB: one set of every gradient or every weight of
# both encoders is 300 KB): "all" every gradient and weight after the step, "after" every weight after the step and
# the SMALL gradients, "small" the SMALL gradients alone.
CASES = [("k4", 4, True, "all"), ("k2", 2, True, "after"), ("empty", 2, False, "small")]
ENCODERS = ("text_encoder", "text_encoder_2")
TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
# The gradients a case stores at least: those only the pooled embeddings reach (text_encoder_2's last layer norm and
# projection), and the token-embedding rows of the ids (the "" rows take gradient only from an encoded unconditional
# half).
SMALL = ["text_encoder_2.text_projection.weight", "text_encoder_2.text_model.final_layer_norm.weight",
         "text_encoder_2.text_model.final_layer_norm.bias", "text_encoder." + TOKEN_EMBEDDING,
         "text_encoder_2." + TOKEN_EMBEDDING]


class Models(ref.Models):
    """make_trainer_fixtures.Models (UNet, VAE, the reward CLIP and aesthetic head, on `device` in `dtype`) for an SDXL
    folder: the second tokenizer, DDIM from its Euler config (trailing, no clipping, the config's set_alpha_to_one),
    and force_zeros_for_empty_prompt from its model_index.json. scripts/bench/train_step.py uses it on real shapes."""

    def __init__(self, sdxl=SDXL, clip=os.path.join(HF, "clip"), aesthetic=os.path.join(HF, "aesthetic.pth"),
                 device="cpu", dtype=torch.float32):
        super().__init__(sd=sdxl, clip=clip, aesthetic=aesthetic, device=device, dtype=dtype)
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(sdxl, "tokenizer_2"))
        self.scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(os.path.join(sdxl, "scheduler")),
                                                   timestep_spacing="trailing", clip_sample=False)
        with open(os.path.join(sdxl, "model_index.json")) as f:
            self.force_zeros = json.load(f).get("force_zeros_for_empty_prompt", True)

    def fresh_encoders(self, train=ENCODERS, trained_dtype=None):
        """Both original encoders and frozen copies: (trainable, originals). An encoder named in `train` is loaded
        twice, trainable (every parameter requires grad, in `trained_dtype`, default the models' type) and frozen;
        one not named is loaded once, frozen, and stands in both tuples."""
        classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
        trainable, originals = [], []
        for name in ENCODERS:
            encoder = classes[name].from_pretrained(os.path.join(self.sd, name), dtype=self.dtype)
            encoder = encoder.to(self.device).eval()
            original = frozen(copy.deepcopy(encoder) if name in train else encoder)
            if name in train:
                encoder = encoder.to(trained_dtype or self.dtype)
                for p in encoder.parameters():
                    p.requires_grad_(True)
            trainable.append(encoder if name in train else original)
            originals.append(original)
        return tuple(trainable), tuple(originals)


def encode(encoders, ids, ids_2):
    te, te2 = encoders
    out = te(ids, output_hidden_states=True)
    out2 = te2(ids_2, output_hidden_states=True)
    return torch.cat([out.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2.text_embeds


def train_step(m, trainable, originals, window, forced, record=None, prompts=PROMPTS, steps=SAMPLING_STEPS,
               size=SIZE, guidance=GUIDANCE, checkpoint=False, extra_rewards=None):
    """The forward of one step up to the loss (see the module docstring), filling `record` when given.
    `checkpoint` runs every UNet call of the window under torch.utils.checkpoint (non-reentrant), as the authors do;
    `extra_rewards(image, prompts)` returns further weighted rewards [B] (the benchmark's PickScore and HPSv2)."""
    b = len(prompts)
    ids, ids_2 = m.ids(m.tokenizer, prompts), m.ids(m.tokenizer_2, prompts)
    empty_ids, empty_ids_2 = m.ids(m.tokenizer, [""] * b), m.ids(m.tokenizer_2, [""] * b)

    def conditioning(encoders):
        h, pooled = encode(encoders, ids, ids_2)
        if forced:
            return torch.cat([torch.zeros_like(h), h]), torch.cat([torch.zeros_like(pooled), pooled])
        h0, pooled0 = encode(encoders, empty_ids, empty_ids_2)
        return torch.cat([h0, h]), torch.cat([pooled0, pooled])

    with torch.no_grad():
        frozen_context, frozen_pooled = conditioning(originals)
    context, pooled = conditioning(trainable)
    if record is not None:
        context.retain_grad()
        pooled.retain_grad()
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=m.dtype, device=m.device).repeat(2 * b, 1)

    sched = m.scheduler
    sched.set_timesteps(steps)
    z = torch.randn([b, m.unet.config.in_channels, size // m.vae_factor, size // m.vae_factor],
                    generator=torch.Generator().manual_seed(SEED), dtype=torch.float32).to(m.device, m.dtype)
    z = z * sched.init_noise_sigma
    if record is not None:
        record.update(ids=ids, ids_2=ids_2, empty_ids=empty_ids, empty_ids_2=empty_ids_2, time_ids=time_ids,
                      timesteps=sched.timesteps.clone(), init_latents=z.clone(), context=context, pooled=pooled)

    def unet(x, t, c, p):
        return m.unet(x, t, encoder_hidden_states=c, added_cond_kwargs={"text_embeds": p, "time_ids": time_ids}).sample

    for i, t in enumerate(sched.timesteps):
        in_window = i >= steps - window
        with torch.set_grad_enabled(in_window):
            c, p = (context, pooled) if in_window else (frozen_context, frozen_pooled)
            if in_window and checkpoint:
                eps = torch.utils.checkpoint.checkpoint(unet, torch.cat([z, z]), t, c, p, use_reentrant=False)
            else:
                eps = unet(torch.cat([z, z]), t, c, p)
            eps_u, eps_c = eps.chunk(2)
            z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z, eta=0.0).prev_sample

    image = (m.vae.decode(z / m.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    size = m.clip.config.vision_config.image_size
    mean = torch.tensor(MEAN, dtype=m.dtype, device=m.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=m.dtype, device=m.device).view(1, 3, 1, 1)
    f = F.normalize(features(m.clip.get_image_features(pixel_values=(F.adaptive_avg_pool2d(image, (size, size)) - mean) / std)), dim=-1)
    aesthetic = m.aesthetic(f).squeeze(-1)
    with torch.no_grad():
        text = features(m.clip.get_text_features(input_ids=m.ids(m.clip_tokenizer, prompts)))
    clip = (f * F.normalize(text, dim=-1)).sum(-1)
    total = SCALES["aesthetic"] * GAMMAS["aesthetic"] * aesthetic + SCALES["clip"] * GAMMAS["clip"] * clip
    if extra_rewards is not None:
        total = total + extra_rewards(image, prompts)
    loss = -total.mean()
    if record is not None:
        record.update(final_latents=z.detach(), image=image.detach(), aesthetic=aesthetic.detach(), clip=clip.detach())
    return loss


def run_case(m, window, forced):
    trainable, originals = m.fresh_encoders()
    before = {f"{e}.{n}": p.detach().clone() for e, enc in zip(ENCODERS, trainable) for n, p in enc.named_parameters()}
    params = list(trainable[0].parameters()) + list(trainable[1].parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    rec = {}
    loss = train_step(m, trainable, originals, window, forced, rec)
    loss.backward()
    rec["loss"] = loss.detach()
    rec["grad_context"] = rec.pop("context").grad.detach().clone()
    rec["grad_text_embeds"] = rec.pop("pooled").grad.detach().clone()
    grads, missing = {}, []
    for e, enc in zip(ENCODERS, trainable):
        for n, p in enc.named_parameters():
            if p.grad is None:
                missing.append(f"{e}.{n}")
            grads[f"{e}.{n}"] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    opt.step()
    after = {f"{e}.{n}": p.detach().clone() for e, enc in zip(ENCODERS, trainable) for n, p in enc.named_parameters()}
    for name in missing:
        assert torch.equal(after[name], before[name]), f"{name} has no gradient and must not move"
    return rec, grads, after, before, missing


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    m = Models()
    tensors, results = {}, {}
    rows = {}
    for case, window, forced, stored in CASES:
        keep_after = stored in ("all", "after")
        rec, grads, after, before, missing = run_case(m, window, forced)
        if case == CASES[0][0]:
            for key in ["ids", "ids_2", "empty_ids", "empty_ids_2", "time_ids", "timesteps", "init_latents"]:
                tensors[key] = rec[key]
            for e, key in zip(ENCODERS, ["ids", "ids_2"]):
                both = torch.cat([rec[key], rec["empty_" + key]]).flatten()
                rows[e] = torch.unique(both)
                tensors[f"{e}.token_rows"] = rows[e]
        for key in ["loss", "aesthetic", "clip", "final_latents", "grad_text_embeds"]:
            tensors[f"{case}.{key}"] = rec[key]
        if stored == "all":
            tensors[f"{case}.image"] = rec["image"]
        for name, g in grads.items():
            keep_grad = stored == "all" or name in SMALL
            encoder = name.split(".")[0]
            if name.endswith(TOKEN_EMBEDDING):
                unused = torch.ones(g.shape[0], dtype=torch.bool)
                unused[rows[encoder]] = False
                assert (g[unused] == 0).all(), f"{name}: a row outside the ids has gradient"
                if keep_grad:
                    tensors[f"{case}.grad.{name[:-len('.weight')]}.rows"] = g[rows[encoder]]
                if keep_after:
                    decayed = before[name][unused] * (1 - LR * WEIGHT_DECAY)
                    assert torch.equal(after[name][unused], decayed), f"{name}: unused rows only decay"
                    tensors[f"{case}.after.{name[:-len('.weight')]}.rows"] = after[name][rows[encoder]]
            else:
                if keep_grad:
                    tensors[f"{case}.grad.{name}"] = g
                if keep_after:
                    tensors[f"{case}.after.{name}"] = after[name]
        flat = torch.cat([g.flatten() for g in grads.values()])
        nonzero = flat[flat != 0].abs()
        res = {"loss": float(rec["loss"]), "aesthetic": rec["aesthetic"].tolist(), "clip": rec["clip"].tolist(),
               "grad_norm": float(flat.double().norm()), "grad_max_abs": float(flat.abs().max()),
               "grad_min_nonzero_abs": float(nonzero.min()), "params_without_grad": missing,
               "grad_text_embeds_norm": float(rec["grad_text_embeds"].double().norm()),
               "grad_projection_norm": float(grads["text_encoder_2.text_projection.weight"].double().norm())}
        # The same step in float64: the attainable float32 accuracy, for the Swift tolerance.
        torch.set_default_dtype(torch.float64)
        m64 = Models(dtype=torch.float64)
        _, grads64, after64, _, _ = run_case(m64, window, forced)
        torch.set_default_dtype(torch.float32)
        res["float32_vs_float64_grad_relative_l2"] = float(
            torch.sqrt(sum(((grads64[n] - grads[n].double()) ** 2).sum() for n in grads))
            / torch.sqrt(sum((grads64[n] ** 2).sum() for n in grads)))
        res["float32_vs_float64_after_max_abs_diff"] = max(float((after64[n] - after[n].double()).abs().max())
                                                           for n in after)
        results[case] = res
        print(f"{case}: loss {res['loss']:.6f} |grad| {res['grad_norm']:.4e} max|g| {res['grad_max_abs']:.3e} "
              f"min nonzero |g| {res['grad_min_nonzero_abs']:.3e} |d text_embeds| {res['grad_text_embeds_norm']:.3e} "
              f"without grad {len(missing)}; float64: grads rel {res['float32_vs_float64_grad_relative_l2']:.2e}, "
              f"after {res['float32_vs_float64_after_max_abs_diff']:.2e}")

    meta = {
        "prompts": PROMPTS, "seed": SEED, "sampling_steps": SAMPLING_STEPS, "guidance": GUIDANCE, "size": SIZE,
        "cases": {c: {"window": k, "force_zeros": forced, "stored": stored} for c, k, forced, stored in CASES},
        "small_gradients": SMALL,
        "timesteps": tensors["timesteps"].tolist(),
        "optimizer": {"name": "AdamW", "lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY},
        "gammas": GAMMAS, "scales": SCALES, "results": results,
        "models": {"sdxl": "Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl", "clip": "Tests/RewardsTests/Fixtures/hf/clip",
                   "aesthetic": "Tests/RewardsTests/Fixtures/hf/aesthetic.pth"},
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__},
    }
    ref.write_fixture("sdxl_train_step", meta, tensors)


if __name__ == "__main__":
    main()
