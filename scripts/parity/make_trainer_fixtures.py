#!/usr/bin/env python3
"""One prompt-based TextCraftor training step in PyTorch, on the project's tiny random models (Tests/TextCraftorTests).

Run by hand:  HF_HUB_OFFLINE=1 python3 scripts/parity/make_trainer_fixtures.py [--only train_step|imagereward]
Needs torch==2.11.0, diffusers (0.39 used), transformers 4.x (4.57.6 used), safetensors. Nothing is downloaded and
nothing is regenerated: it reads the existing tiny models
  Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15/   tokenizer, text_encoder, unet, vae, scheduler (its config)
  Tests/RewardsTests/Fixtures/hf/clip/                 a transformers CLIPModel (image size 64, projection 16) with
                                                       its own tokenizer in clip/tokenizer/
  Tests/RewardsTests/Fixtures/hf/aesthetic.pth         the LAION aesthetic MLP head on 16-wide embeddings
and writes
  Tests/TextCraftorTests/Fixtures/train_step.safetensors   inputs, intermediates, rewards, loss, gradients, weights
  Tests/TextCraftorTests/Fixtures/train_step.json          the settings (also stored as the safetensors metadata "meta")
  Tests/TextCraftorTests/Fixtures/train_step_imagereward.{safetensors,json}   the step with ImageReward (see the end)

The step (the spec both the Swift trainer and this reference implement), float32, CPU, one thread, every model in
eval mode; UNet, VAE, CLIP and the aesthetic head frozen; every text-encoder parameter requires grad:
  1. Frozen copy: a deep copy of the ORIGINAL text encoder, taken before any update, without grad.
  2. Scheduler: DDIMScheduler.from_config(tiny-sd15 scheduler config, timestep_spacing="trailing",
     clip_sample=False, set_alpha_to_one=False) -> scaled_linear betas 0.00085..0.012 over 1000 steps, epsilon
     prediction. set_timesteps(S): trailing spacing gives round(arange(1000, 0, -1000/S)) - 1, for S = 5:
     999, 799, 599, 399, 199. eta = 0. The step from t goes to prev = t - 1000 // S; prev < 0 uses
     alphas_cumprod[0] (set_alpha_to_one=False). scale_model_input is the identity and init_noise_sigma is 1.
     DDIM update (eta 0): x0 = (z - sqrt(1 - a_t) * eps) / sqrt(a_t); z' = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps.
  3. Ids: SD tokenizer, padding "max_length" 77 (its pad token, here <|endoftext|> = 999), truncation.
     ids = cat([ids(["", ""]), ids(prompts)]), shape [2B, 77]: unconditional first, as diffusers concatenates.
  4. Embeddings: frozen = frozen_encoder(ids).last_hidden_state (no grad);
     trainable = text_encoder(ids).last_hidden_state (with grad; both halves). [2B, 77, 32]. No attention mask.
  5. Latents: z = randn([B, 4, 8, 8], generator=torch.Generator().manual_seed(1234)) * init_noise_sigma (1.0):
     the first and only random draw of the step.
  6. For i, t in enumerate(timesteps): in the window iff i >= S - K. Outside it: under no_grad with the frozen
     embeddings (so the latents entering the window carry no graph). Inside it: with the trainable embeddings, and
     the latents keep their graph from one window step to the next.
       model_in = scale_model_input(cat([z, z]), t)
       eps = unet(model_in, t, encoder_hidden_states=context).sample       (t: the scheduler's int64 timestep)
       eps_u, eps_c = eps.chunk(2);  eps = eps_u + 7.5 * (eps_c - eps_u)
       z = scheduler.step(eps, t, z, eta=0).prev_sample
  7. Decode: x = vae.decode(z / 0.18215).sample;  image = (x / 2 + 0.5).clamp(0, 1)   ([B, 3, 64, 64])
  8. Rewards, training preprocessing: pixels = (adaptive_avg_pool2d(image, (64, 64)) - mean) / std with
     mean (0.48145466, 0.4578275, 0.40821073), std (0.26862954, 0.26130258, 0.27577711); 64 = the tiny CLIP's
     image size (so the pool is the identity here).
       f = F.normalize(clip.get_image_features(pixels), dim=-1)
       aesthetic = mlp(f).squeeze(-1)        (LAION head: layers.0, .2, .4, .6, .7 Linear; dropouts inactive)
       clip = (f * F.normalize(clip.get_text_features(clip_ids), dim=-1)).sum(-1)
     clip_ids: the prompts through the tiny CLIP's own tokenizer (clip/tokenizer), padded to 77, truncated.
  9. loss = -(3.0 * 1.0 * aesthetic + 100.0 * 0.5 * clip).mean()   (scale * gamma: aesthetic 3 * 1, clip 100 * 0.5)
 10. loss.backward(): gradient of every text-encoder parameter (all 52 tensors, 54,895 numbers, receive one; none is
     missing, so no zeros stand in for a missing gradient; the token-embedding rows of the 975 tokens that do not
     occur in the ids are exactly zero).
 11. torch.optim.AdamW(text_encoder.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2), one
     step (torch's defaults otherwise: amsgrad False, maximize False). For step 1 this is
       p <- p * (1 - lr * wd);  p <- p - lr * g / (|g| + eps)      (m_hat = g, sqrt(v_hat) = |g|)
     computed by torch as denom = sqrt(v) / sqrt(1 - beta2) + eps, p -= (lr / (1 - beta1)) * m / denom.

Cases: "k5" (S = 5, K = 5: every step in the window) and "k2" (S = 5, K = 2: steps 999, 799, 599 outside).
Each case starts from the original weights (a fresh text encoder and a fresh AdamW).

Keys (float32 unless said):
  sd.input_ids [2B,77] int64, clip.input_ids [B,77] int64, timesteps [S] int64, alphas_cumprod [1000],
  frozen_context [2B,77,32] (the frozen encoder's embeddings; equal to the trainable ones before the update),
  clip.text_embeds [B,16] (get_text_features, not normalised),
  and per case c in {k5, k2}:
  c.init_latents [B,4,8,8], c.latents.<i> [B,4,8,8] the latents after sampling step i (0-based; the last equals
  c.final_latents), c.final_latents, c.image [B,3,64,64], c.aesthetic [B], c.clip [B], c.loss [] (0-d),
  c.grad_context [2B,77,32] (d loss / d trainable embeddings: uncond half first),
  c.grad.<name> and c.after.<name> for every text-encoder state-dict name except the position_ids buffer.

Tolerances (measured here, also in train_step.json "results"): float32 against the same step in float64 differs by
<= 6e-6 of max|grad| on the gradients, and 1 vs 2 threads by <= 6.2e-6 of max|grad|; a relative tolerance of ~1e-4
(scaled by each tensor's max) is fair. The latent chain dominates the gradient on these random models (k5 with the
latents detached between window steps: |grad| 0.008 instead of 3.78; the latents grow to std ~16 under guidance 7.5).
AdamW's first step moves each element by about lr * sign(g), so elements whose gradient is at rounding level (the
smallest non-zero |g| is ~1e-11) can move differently: float32 vs float64 "after" values differ by up to 1.9e-4
(k5), 1 vs 2 threads by 1.4e-4. Compare c.after.* with an absolute tolerance of ~5e-4, or check exactly against
AdamW applied to your own gradients.

Checks run here (printed, and asserted where exact): the gradients with torch.utils.checkpoint around every UNet call
in the window (non-reentrant, as the authors checkpoint each UNet call) match plain autograd; the same step in
float64 is printed as the attainable float32 accuracy.

With ImageReward (`--only imagereward`, or by default after train_step; needs image-reward==1.5 as
make_imagereward_fixtures.py says, whose load_checkpoint builds the package's own ImageReward classes around the tiny
Tests/RewardsTests/Fixtures/imagereward/ImageReward.pt): the same step with ImageReward as the reward in step 8,
  ids, mask = BertTokenizer(vocab.txt + BLIP's [DEC], [ENC])(prompts, padding "max_length" 35, truncation)
  imagereward = model.score_gard(ids, mask, (adaptive_avg_pool2d(image, (32, 32)) - mean) / std).squeeze(1)
and the loss -(1.0 * 1.0 * imagereward).mean() (cases "k5", "k2") or -(3.0 * 1.0 * aesthetic + 1.0 * 1.0 *
imagereward).mean() ("aesthetic_k2", K = 2), written to train_step_imagereward.{safetensors,json} (main_imagereward
lists its keys). float32 vs float64 there: gradients within 3.1e-6 of max|g| (relative norm error <= 4e-6).
"""
import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SD = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures", "sd", "tiny-sd15")
HF = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "hf")
OUT = os.path.join(ROOT, "Tests", "TextCraftorTests", "Fixtures")

PROMPTS = ["a red circle on a blue background", "two small squares, photo"]
SEED = 1234
SAMPLING_STEPS = 5
GUIDANCE = 7.5
HEIGHT = WIDTH = 64
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
GAMMAS = {"aesthetic": 1.0, "clip": 0.5}
SCALES = {"aesthetic": 3.0, "clip": 100.0}
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 1e-2
CASES = [("k5", 5), ("k2", 2)]
IMAGEREWARD = os.path.join(ROOT, "Tests", "RewardsTests", "Fixtures", "imagereward")
IMAGEREWARD_GAMMA, IMAGEREWARD_SCALE = 1.0, 1.0  # the Swift WeightedReward's default scale for imagereward is 1
# (case, window, the fixture's rewards that join ImageReward in the loss)
IMAGEREWARD_CASES = [("k5", 5, ()), ("k2", 2, ()), ("aesthetic_k2", 2, ("aesthetic",))]


class AestheticMLP(torch.nn.Module):
    """The LAION improved aesthetic predictor v2 head: Linear layers 0, 2, 4, 6, 7, no activations."""

    def __init__(self, width):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


def features(out):
    """The embeddings of CLIPModel.get_image_features / get_text_features: a tensor on transformers 4, an output
    object whose pooler_output holds the same projected embeddings on transformers 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def frozen(module):
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Models:
    """Everything a step needs; the text encoder is reloaded by fresh_text_encoder() for every case."""

    def __init__(self, sd=SD, clip=os.path.join(HF, "clip"), aesthetic=os.path.join(HF, "aesthetic.pth"),
                 device="cpu", dtype=torch.float32):
        self.sd, self.device, self.dtype = sd, torch.device(device), dtype
        self.tokenizer = CLIPTokenizer.from_pretrained(os.path.join(sd, "tokenizer"))
        self.unet = frozen(UNet2DConditionModel.from_pretrained(os.path.join(sd, "unet"), torch_dtype=dtype,
                                                                low_cpu_mem_usage=False).to(self.device))
        self.vae = frozen(AutoencoderKL.from_pretrained(os.path.join(sd, "vae"), torch_dtype=dtype,
                                                        low_cpu_mem_usage=False).to(self.device))
        self.scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(os.path.join(sd, "scheduler")),
                                                   timestep_spacing="trailing", clip_sample=False,
                                                   set_alpha_to_one=False)
        self.clip = frozen(CLIPModel.from_pretrained(clip, dtype=dtype).to(self.device))
        # The reward CLIP's tokenizer: tokenizer/, else beside its weights, else (ShapesWorld's rewards/clip has none;
        # ours then takes its bundled CLIP BPE) the model's own, the same BPE.
        clip_tok = next((d for d in (os.path.join(clip, "tokenizer"), clip)
                         if os.path.isfile(os.path.join(d, "vocab.json"))), os.path.join(sd, "tokenizer"))
        self.clip_tokenizer = CLIPTokenizer.from_pretrained(clip_tok)
        if aesthetic.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(aesthetic)
        else:
            state = torch.load(aesthetic, map_location="cpu", weights_only=True)
        self.aesthetic = AestheticMLP(state["layers.0.weight"].shape[1])
        self.aesthetic.load_state_dict(state)
        self.aesthetic = frozen(self.aesthetic.to(self.device, dtype))
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def fresh_text_encoder(self):
        """The original text encoder (trainable: every parameter requires grad) and a frozen deep copy of it."""
        te = CLIPTextModel.from_pretrained(os.path.join(self.sd, "text_encoder"), dtype=self.dtype)
        te = te.to(self.device).eval()
        for p in te.parameters():
            p.requires_grad_(True)
        return te, frozen(copy.deepcopy(te))

    def ids(self, tokenizer, texts):
        return tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)


def train_step(m, te, te_frozen, prompts, steps, window, seed=SEED, guidance=GUIDANCE, height=HEIGHT, width=WIDTH,
               checkpoint=False, record=None, extra_rewards=None, base_rewards=("aesthetic", "clip")):
    """The forward of one step up to the loss (see the module docstring). Returns the loss; fills `record` with the
    intermediates when given. `base_rewards`: which of the fixture's aesthetic and CLIP rewards enter the loss (both
    by default; the ImageReward fixture uses none or the aesthetic alone). `extra_rewards(image, prompts)`, when given,
    returns further weighted rewards [B] that the loss subtracts too (the benchmark's PickScore and HPSv2, the
    ImageReward fixture's ImageReward). The caller runs backward and the optimizer."""
    b = len(prompts)
    ids = torch.cat([m.ids(m.tokenizer, [""] * b), m.ids(m.tokenizer, prompts)])
    with torch.no_grad():
        e_frozen = te_frozen(ids).last_hidden_state
    e = te(ids).last_hidden_state if window > 0 else None
    if record is not None and e is not None:
        e.retain_grad()
        record["context"] = e
        record["context_value"] = e.detach().clone()

    sched = m.scheduler
    sched.set_timesteps(steps)
    shape = [b, m.unet.config.in_channels, height // m.vae_factor, width // m.vae_factor]
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(m.device, m.dtype)
    z = z * sched.init_noise_sigma
    if record is not None:
        record.update(ids=ids, timesteps=sched.timesteps.clone(), e_frozen=e_frozen, init_latents=z.detach().clone(),
                      latents=[])

    def unet(x, t, context):
        return m.unet(x, t, encoder_hidden_states=context).sample

    for i, t in enumerate(sched.timesteps):
        in_window = i >= steps - window
        with torch.set_grad_enabled(in_window):
            context = e if in_window else e_frozen
            model_in = sched.scale_model_input(torch.cat([z, z]), t)
            if in_window and checkpoint:
                eps = torch.utils.checkpoint.checkpoint(unet, model_in, t, context, use_reentrant=False)
            else:
                eps = unet(model_in, t, context)
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
            z = sched.step(eps, t, z, eta=0.0).prev_sample
        if record is not None:
            record["latents"].append(z.detach().clone())

    x = m.vae.decode(z / m.vae.config.scaling_factor).sample
    image = (x / 2 + 0.5).clamp(0, 1)

    total = None
    if base_rewards:
        size = m.clip.config.vision_config.image_size
        mean = torch.tensor(MEAN, device=m.device, dtype=m.dtype).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=m.device, dtype=m.dtype).view(1, 3, 1, 1)
        pixels = (F.adaptive_avg_pool2d(image, (size, size)) - mean) / std
        f = F.normalize(features(m.clip.get_image_features(pixel_values=pixels)), dim=-1)
        aesthetic = m.aesthetic(f).squeeze(-1)
        clip_ids = m.ids(m.clip_tokenizer, prompts)
        with torch.no_grad():
            text = features(m.clip.get_text_features(input_ids=clip_ids))
        clip = (f * F.normalize(text, dim=-1)).sum(-1)
        scores = {"aesthetic": aesthetic, "clip": clip}
        for name in base_rewards:  # in this order: the sum is the same float32 expression as written in the docstring
            term = SCALES[name] * GAMMAS[name] * scores[name]
            total = term if total is None else total + term
        if record is not None:
            record.update(aesthetic=aesthetic.detach(), clip=clip.detach(), clip_ids=clip_ids, text_embeds=text)
    if extra_rewards is not None:
        extra = extra_rewards(image, prompts)
        total = extra if total is None else total + extra
    loss = -total.mean()
    if record is not None:
        record.update(final_latents=z.detach(), image=image.detach())
    return loss


def run_case(m, window, checkpoint=False, **rewards):
    """One full step: forward, backward, AdamW. Returns (record, grads, after) keyed by state-dict names. `rewards`:
    train_step's base_rewards and extra_rewards (the fixture's aesthetic + CLIP when not given)."""
    te, te_frozen = m.fresh_text_encoder()
    rec = {"before": {name: p.detach().clone() for name, p in te.named_parameters()}}
    opt = torch.optim.AdamW(te.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    opt.zero_grad(set_to_none=True)
    loss = train_step(m, te, te_frozen, PROMPTS, SAMPLING_STEPS, window, checkpoint=checkpoint, record=rec, **rewards)
    loss.backward()
    rec["loss"] = loss.detach()
    rec["grad_context"] = rec.pop("context").grad.detach().clone()
    grads, missing = {}, []
    for name, p in te.named_parameters():
        if p.grad is None:
            missing.append(name)
        grads[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    rec["missing"] = missing
    opt.step()
    after = {name: p.detach().clone() for name, p in te.named_parameters()}
    assert set(after) == set(te.state_dict()) - {"text_model.embeddings.position_ids"}
    return rec, grads, after


class ImageRewardTerm:
    """ImageReward as a reward of the step, in the image-reward package's own classes (by default the tiny fixture
    model of make_imagereward_fixtures.py, loaded by its load_checkpoint; `checkpoint` and `vocab` name another, such
    as a synth-model's ImageReward.safetensors). Called with the images [B, 3, H, W] in [0, 1] and the prompts, returns
    gamma * scale * score_gard [B] on the training preprocessing (adaptive average pool to the ViT's image size, CLIP's
    mean and std), the prompts through transformers' BertTokenizer with BLIP's added tokens (padding to 35,
    truncation, as the package's score()). Keeps the last scores, ids and mask for the record."""

    def __init__(self, checkpoint=os.path.join(IMAGEREWARD, "ImageReward.pt"), vocab=None, device="cpu",
                 dtype=torch.float32, gamma=IMAGEREWARD_GAMMA, scale=IMAGEREWARD_SCALE):
        from make_imagereward_fixtures import load_checkpoint
        model, self.tokenizer = load_checkpoint(checkpoint, vocab, dtype)
        model.device = torch.device(device)  # score_gard puts its image attention mask on model.device
        self.model = frozen(model.to(device))
        size = self.model.blip.visual_encoder.patch_embed.img_size
        self.image_size = size if isinstance(size, int) else size[0]
        self.device, self.dtype, self.weight = torch.device(device), dtype, gamma * scale
        self.scores = self.ids = self.mask = None

    def __call__(self, image, prompts):
        text = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        self.ids, self.mask = text.input_ids.to(self.device), text.attention_mask.to(self.device)
        mean = torch.tensor(MEAN, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        pixels = (F.adaptive_avg_pool2d(image, (self.image_size, self.image_size)) - mean) / std
        self.scores = self.model.score_gard(self.ids, self.mask, pixels).squeeze(1)
        return self.weight * self.scores


def norm(tensors):
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    m = Models()
    tensors, results = {}, {}
    for case, window in CASES:
        rec, grads, after = run_case(m, window)
        if case == CASES[0][0]:
            assert torch.equal(rec["e_frozen"], rec["context_value"]), "the frozen copy must start equal"
            tensors.update({"sd.input_ids": rec["ids"], "clip.input_ids": rec["clip_ids"],
                            "timesteps": rec["timesteps"], "alphas_cumprod": m.scheduler.alphas_cumprod.float(),
                            "frozen_context": rec["e_frozen"], "clip.text_embeds": rec["text_embeds"]})
        tensors.update({f"{case}.init_latents": rec["init_latents"], f"{case}.final_latents": rec["final_latents"],
                        f"{case}.image": rec["image"], f"{case}.aesthetic": rec["aesthetic"],
                        f"{case}.clip": rec["clip"], f"{case}.loss": rec["loss"],
                        f"{case}.grad_context": rec["grad_context"]})
        for i, z in enumerate(rec["latents"]):
            tensors[f"{case}.latents.{i}"] = z
        assert torch.equal(rec["latents"][-1], rec["final_latents"])
        for name in grads:
            tensors[f"{case}.grad.{name}"] = grads[name]
            tensors[f"{case}.after.{name}"] = after[name]

        # Information for the Swift side: sizes, the smallest non-zero gradients (AdamW's first step moves by
        # lr * g / (|g| + eps), about lr * sign(g): a gradient at rounding level could flip an element's update).
        flat = torch.cat([g.flatten() for g in grads.values()])
        nonzero = flat[flat != 0].abs()
        embed = grads["text_model.embeddings.token_embedding.weight"]
        res = {"loss": float(rec["loss"]), "aesthetic": rec["aesthetic"].tolist(), "clip": rec["clip"].tolist(),
               "grad_norm": norm(grads.values()), "grad_context_norm": norm([rec["grad_context"]]),
               "grad_max_abs": float(flat.abs().max()), "grad_min_nonzero_abs": float(nonzero.min()),
               "grad_zero_elements": int((flat == 0).sum()), "grad_elements": int(flat.numel()),
               "token_embedding_rows_with_grad": int((embed.abs().sum(1) != 0).sum()),
               "params_without_grad": rec["missing"],
               "update_max_abs": max(float((after[n] - p).abs().max()) for n, p in rec["before"].items())}
        results[case] = res
        print(f"{case}: loss {res['loss']:.6f}  aesthetic {res['aesthetic']}  clip {res['clip']}")
        print(f"     |grad| {res['grad_norm']:.6e}  |grad_context| {res['grad_context_norm']:.6e}  "
              f"max|g| {res['grad_max_abs']:.3e}  min nonzero |g| {res['grad_min_nonzero_abs']:.3e}  "
              f"zero elements {res['grad_zero_elements']}/{res['grad_elements']}  "
              f"embedding rows with grad {res['token_embedding_rows_with_grad']}  "
              f"params without grad {res['params_without_grad']}")

        # Checkpointing every UNet call in the window must not change the gradients.
        rec_c, grads_c, after_c = run_case(m, window, checkpoint=True)
        diff = max(float((grads_c[n] - grads[n]).abs().max()) for n in grads)
        exact = all(torch.equal(grads_c[n], grads[n]) for n in grads) and torch.equal(rec_c["loss"], rec["loss"])
        res["checkpoint_grad_max_abs_diff"] = diff
        res["checkpoint_bitwise_equal"] = exact
        print(f"     checkpointed UNet calls: loss {float(rec_c['loss']):.6f}, grads max abs diff {diff:.3e}, "
              f"bitwise equal {exact}")
        assert diff <= 1e-6 * res["grad_max_abs"], "checkpointing changed the gradients"

        # The same step in float64: how far float32 is from exact (for the Swift tolerance).
        torch.set_default_dtype(torch.float64)  # transformers' causal mask is built in the default dtype
        m64 = Models(dtype=torch.float64)
        rec64, grads64, after64 = run_case(m64, window)
        torch.set_default_dtype(torch.float32)
        rel = max(float((grads64[n] - grads[n].double()).abs().max()) for n in grads) / float(flat.abs().max())
        res["float64_loss"] = float(rec64["loss"])
        res["float64_grad_norm"] = norm(grads64.values())
        res["float32_vs_float64_grad_max_abs_diff_over_max_abs"] = rel
        res["float32_vs_float64_after_max_abs_diff"] = max(float((after64[n] - after[n].double()).abs().max())
                                                           for n in after)
        flips = [(n, int(((grads64[n] > 0) != (grads[n] > 0)).sum())) for n in grads]
        res["float32_vs_float64_grad_sign_differences"] = sum(c for _, c in flips)
        print(f"     float64: loss {res['float64_loss']:.9f}, |grad| {res['float64_grad_norm']:.6e}, float32 grads "
              f"max abs diff / max|g| {rel:.2e}, after max abs diff "
              f"{res['float32_vs_float64_after_max_abs_diff']:.2e}, gradient signs that differ "
              f"{res['float32_vs_float64_grad_sign_differences']}")

    meta = {
        "prompts": PROMPTS, "uncond_prompt": "", "batch": len(PROMPTS), "seed": SEED,
        "latent_shape": list(tensors["k5.init_latents"].shape), "height": HEIGHT, "width": WIDTH,
        "sampling_steps": SAMPLING_STEPS, "windows": {c: k for c, k in CASES},
        "timesteps": tensors["timesteps"].tolist(), "guidance": GUIDANCE, "eta": 0.0,
        "scheduler": {"class": "DDIMScheduler", "timestep_spacing": "trailing", "clip_sample": False,
                      "set_alpha_to_one": False, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                      "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"},
        "vae_scaling_factor": m.vae.config.scaling_factor, "clip_image_size": m.clip.config.vision_config.image_size,
        "clip_mean": MEAN, "clip_std": STD, "gammas": GAMMAS, "scales": SCALES,
        "loss": "-(3.0 * 1.0 * aesthetic + 100.0 * 0.5 * clip).mean()",
        "optimizer": {"name": "AdamW", "lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY},
        "models": {"sd": "Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15",
                   "clip": "Tests/RewardsTests/Fixtures/hf/clip",
                   "aesthetic": "Tests/RewardsTests/Fixtures/hf/aesthetic.pth"},
        "results": results,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__},
    }
    write_fixture("train_step", meta, tensors)


def main_imagereward():
    """Tests/TextCraftorTests/Fixtures/train_step_imagereward.{safetensors,json}: the step of the module docstring
    with ImageReward as the reward (see ImageRewardTerm) instead of aesthetic + CLIP: alone with windows 5 and 2
    ("k5", "k2"), and with the aesthetic reward (gamma 1, scale 3) beside it with window 2 ("aesthetic_k2"):
      loss = -(1.0 * 1.0 * imagereward).mean()   or   -(3.0 * 1.0 * aesthetic + 1.0 * 1.0 * imagereward).mean()
    Keys: imagereward.input_ids [B,35] int64 and imagereward.attention_mask [B,35] int64 (transformers'
    BertTokenizer on the fixture's vocab.txt), and per case c: c.init_latents, c.final_latents, c.image, c.imagereward
    [B] (score_gard, before the weight), c.aesthetic [B] (aesthetic_k2 only), c.loss [], c.grad.<name>, c.after.<name>
    as in train_step.safetensors."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    m = Models()
    ir = ImageRewardTerm()
    tensors, results = {}, {}
    for case, window, base in IMAGEREWARD_CASES:
        rec, grads, after = run_case(m, window, base_rewards=base, extra_rewards=ir)
        if case == IMAGEREWARD_CASES[0][0]:
            tensors.update({"imagereward.input_ids": ir.ids, "imagereward.attention_mask": ir.mask})
        assert torch.equal(tensors["imagereward.input_ids"], ir.ids)
        tensors.update({f"{case}.init_latents": rec["init_latents"], f"{case}.final_latents": rec["final_latents"],
                        f"{case}.image": rec["image"], f"{case}.imagereward": ir.scores.detach(),
                        f"{case}.loss": rec["loss"]})
        if base:
            tensors[f"{case}.aesthetic"] = rec["aesthetic"]
        for name in grads:
            tensors[f"{case}.grad.{name}"] = grads[name]
            tensors[f"{case}.after.{name}"] = after[name]

        flat = torch.cat([g.flatten() for g in grads.values()])
        nonzero = flat[flat != 0].abs()
        res = {"loss": float(rec["loss"]), "imagereward": ir.scores.tolist(), "grad_norm": norm(grads.values()),
               "grad_context_norm": norm([rec["grad_context"]]), "grad_max_abs": float(flat.abs().max()),
               "grad_min_nonzero_abs": float(nonzero.min()), "grad_zero_elements": int((flat == 0).sum()),
               "grad_elements": int(flat.numel()), "params_without_grad": rec["missing"],
               "update_max_abs": max(float((after[n] - p).abs().max()) for n, p in rec["before"].items())}
        if base:
            res["aesthetic"] = rec["aesthetic"].tolist()
        results[case] = res
        print(f"{case}: loss {res['loss']:.6f}  imagereward {res['imagereward']}  aesthetic {res.get('aesthetic')}")
        print(f"     |grad| {res['grad_norm']:.6e}  |grad_context| {res['grad_context_norm']:.6e}  "
              f"max|g| {res['grad_max_abs']:.3e}  min nonzero |g| {res['grad_min_nonzero_abs']:.3e}  "
              f"zero elements {res['grad_zero_elements']}/{res['grad_elements']}  "
              f"params without grad {res['params_without_grad']}")

        # The same step in float64 (every model, ImageReward too): the attainable float32 accuracy.
        torch.set_default_dtype(torch.float64)
        m64 = Models(dtype=torch.float64)
        ir64 = ImageRewardTerm(dtype=torch.float64)
        rec64, grads64, after64 = run_case(m64, window, base_rewards=base, extra_rewards=ir64)
        torch.set_default_dtype(torch.float32)
        rel = max(float((grads64[n] - grads[n].double()).abs().max()) for n in grads) / float(flat.abs().max())
        res["float64_loss"] = float(rec64["loss"])
        res["float64_grad_norm"] = norm(grads64.values())
        res["float32_vs_float64_grad_max_abs_diff_over_max_abs"] = rel
        res["float32_vs_float64_grad_relative_norm_error"] = (
            norm([grads64[n] - grads[n].double() for n in grads]) / norm(grads64.values()))
        res["float32_vs_float64_after_max_abs_diff"] = max(float((after64[n] - after[n].double()).abs().max())
                                                           for n in after)
        print(f"     float64: loss {res['float64_loss']:.9f}, |grad| {res['float64_grad_norm']:.6e}, float32 grads "
              f"max abs diff / max|g| {rel:.2e}, relative norm error "
              f"{res['float32_vs_float64_grad_relative_norm_error']:.2e}, after max abs diff "
              f"{res['float32_vs_float64_after_max_abs_diff']:.2e}")

    meta = {
        "prompts": PROMPTS, "uncond_prompt": "", "batch": len(PROMPTS), "seed": SEED,
        "latent_shape": list(tensors["k5.init_latents"].shape), "height": HEIGHT, "width": WIDTH,
        "sampling_steps": SAMPLING_STEPS, "cases": {c: {"window": k, "with": list(b)} for c, k, b in IMAGEREWARD_CASES},
        "guidance": GUIDANCE, "eta": 0.0, "scheduler": "as train_step.json",
        "imagereward_image_size": ir.image_size, "imagereward_max_length": 35, "mean": MEAN, "std": STD,
        "gammas": {"imagereward": IMAGEREWARD_GAMMA, "aesthetic": GAMMAS["aesthetic"]},
        "scales": {"imagereward": IMAGEREWARD_SCALE, "aesthetic": SCALES["aesthetic"]},
        "loss": {"k5": "-(1.0 * 1.0 * imagereward).mean()", "k2": "-(1.0 * 1.0 * imagereward).mean()",
                 "aesthetic_k2": "-(3.0 * 1.0 * aesthetic + 1.0 * 1.0 * imagereward).mean()"},
        "optimizer": {"name": "AdamW", "lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY},
        "models": {"sd": "Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15",
                   "imagereward": "Tests/RewardsTests/Fixtures/imagereward (ImageReward.pt, med_config.json, vocab.txt)",
                   "clip": "Tests/RewardsTests/Fixtures/hf/clip (aesthetic_k2's embedder)",
                   "aesthetic": "Tests/RewardsTests/Fixtures/hf/aesthetic.pth"},
        "results": results,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__,
                     "image-reward": __import__("importlib.metadata").metadata.version("image-reward")},
    }
    write_fixture("train_step_imagereward", meta, tensors)


def write_fixture(name, meta, tensors):
    """OUT/name.json (the settings and results, indented) and OUT/name.safetensors (the tensors, the settings again
    in its metadata), as the Swift parity tests read them."""
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    path = os.path.join(OUT, name + ".safetensors")
    save_file({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())}, path,
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    print(f"{os.path.relpath(path, ROOT)}: {len(tensors)} tensors, {os.path.getsize(path) / 1024:.1f} KB")


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Writes the training-step parity fixtures (both by default).")
    parser.add_argument("--only", choices=["train_step", "imagereward"],
                        help="train_step: aesthetic + CLIP (train_step.*); imagereward: ImageReward as the reward "
                             "(train_step_imagereward.*, needs image-reward==1.5 as make_imagereward_fixtures.py says)")
    only = parser.parse_args().only
    if only in (None, "train_step"):
        main()
    if only in (None, "imagereward"):
        main_imagereward()
