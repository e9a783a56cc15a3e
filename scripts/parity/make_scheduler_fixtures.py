#!/usr/bin/env python3
"""Fixtures for Tests/StableDiffusionTests/SchedulerTests.swift: diffusers' schedulers, run on a fake model.

Run by hand:  python3 scripts/parity/make_scheduler_fixtures.py   (torch 2.11.0, safetensors, diffusers 0.39.0)
Writes Tests/StableDiffusionTests/Fixtures/schedulers/{cases.json, schedulers.safetensors}.

Every scheduler is built from a config dict (what a scheduler_config.json file holds), never from the hub. A case
may switch the class as `XScheduler.from_config(pipe.scheduler.config)` does. A rollout starts from latents
`sample * init_noise_sigma` and, at each timestep, feeds `step` the output of a fake model that is a fixed function of
its (scaled) input and the timestep:

    model(x, t) = 0.9 * x + (0.1 * t / 1000) * const

(close to the ideal noise prediction for data at 0, so that the samples stay of order 1 for every prediction type)

recording every step's sample (and the predicted x_0 where diffusers returns it). The Swift test writes the same
function. The samplers that add noise (DDIM with eta, Euler with s_churn, Euler ancestral, DPM-Solver's SDE) draw it
from a CPU generator seeded with the case's seed, which the Swift test seeds the same way. Also: the timesteps of every
class and spacing for many step counts (and of Karras sigmas, with the sigmas), the cumulative alphas of each beta
schedule, add_noise, and gradients of a scalar of the last sample with respect to the first sample and to `const`
through the last three steps of a run.
"""
import json
import os

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       PNDMScheduler)
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "StableDiffusionTests", "Fixtures", "schedulers")
CLASSES = {c.__name__: c for c in (DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                   DPMSolverMultistepScheduler, PNDMScheduler)}
# The names of `--scheduler`: a class, and the config keys the name fixes.
SHORT = {"ddim": (DDIMScheduler, {}), "euler": (EulerDiscreteScheduler, {}),
         "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
         "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
         "dpm-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}), "pndm": (PNDMScheduler, {})}

# Stable Diffusion 1.5's scheduler_config.json as published, and a 2.x 768-v one.
SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SD2V = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
# SDXL 1.0 base's, as published: Euler with "leading" spacing.
SDXL = {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
        "use_karras_sigmas": False}
SCALED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def ddim(**kw):
    return {"_class_name": "DDIMScheduler", **SCALED, **kw}


def euler(**kw):
    return {"_class_name": "EulerDiscreteScheduler", **SCALED, **kw}


def dpm(**kw):
    return {"_class_name": "DPMSolverMultistepScheduler", **SCALED, **kw}


def ancestral(**kw):
    return {"_class_name": "EulerAncestralDiscreteScheduler", **SCALED, **kw}


SDE = "sde-dpmsolver++"


# name, config file, class override (None: the file's), steps, options (eta, seed, s_churn, karras: the --karras flag,
# which sets use_karras_sigmas over the file's config)
CASES = [
    ("pndm_sd15_10", SD15, None, 10, {}),
    ("pndm_sd15_2", SD15, None, 2, {}),
    ("pndm_sd2v_12", SD2V, "pndm", 12, {}),
    ("pndm_prk_linear_8", {"_class_name": "PNDMScheduler"}, None, 8, {}),
    ("ddim_sd15_25", SD15, "ddim", 25, {}),
    ("ddim_trailing_clip_25", ddim(timestep_spacing="trailing"), None, 25, {}),
    ("ddim_linspace_eta05_10", ddim(timestep_spacing="linspace", clip_sample=False), None, 10, {"eta": 0.5, "seed": 1234}),
    ("ddim_sd2v_10", SD2V, None, 10, {}),
    ("ddim_sample_trailing_10", ddim(timestep_spacing="trailing", prediction_type="sample", clip_sample_range=0.8), None, 10, {}),
    ("ddim_zero_snr_v_10", ddim(timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                clip_sample=False), None, 10, {}),
    ("ddim_cosine_eta1_6", {"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"}, None, 6,
     {"eta": 1.0, "seed": 7}),
    ("euler_sd15_10", SD15, "euler", 10, {}),
    ("euler_sd2v_25", SD2V, "euler", 25, {}),
    ("euler_trailing_sample_10", euler(timestep_spacing="trailing", prediction_type="sample"), None, 10, {}),
    ("euler_churn_8", euler(), None, 8, {"s_churn": 1.0, "seed": 99}),
    ("euler_continuous_v_sigma_min_7", euler(prediction_type="v_prediction", timestep_type="continuous",
                                             final_sigmas_type="sigma_min"), None, 7, {}),
    ("euler_zero_snr_linear_9", {"_class_name": "EulerDiscreteScheduler", "rescale_betas_zero_snr": True,
                                 "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, None, 9, {}),
    ("dpm_sd15_10", SD15, "dpm", 10, {}),
    ("dpm_sd15_25", SD15, "dpm", 25, {}),
    ("dpm_sd2v_25", SD2V, "dpm", 25, {}),
    ("dpm_order1_trailing_10", dpm(solver_order=1, timestep_spacing="trailing"), None, 10, {}),
    ("dpm_order3_20", dpm(solver_order=3), None, 20, {}),
    ("dpm_heun_sample_12", dpm(solver_type="heun", prediction_type="sample"), None, 12, {}),
    ("dpm_sigma_min_no_lof_8", dpm(final_sigmas_type="sigma_min", lower_order_final=False), None, 8, {}),
    ("dpm_euler_at_final_sigma_min_20", dpm(final_sigmas_type="sigma_min", euler_at_final=True), None, 20, {}),
    ("dpm_lambda_clipped_12", dpm(lambda_min_clipped=-2.0, timestep_spacing="trailing"), None, 12, {}),
    ("dpm_zero_snr_v_15", dpm(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
     None, 15, {}),
    # Karras sigmas: Euler between the spacing's first and last sigma, DPM-Solver over the whole schedule
    ("euler_karras_sd15_10", SD15, "euler", 10, {"karras": True}),
    ("euler_karras_leading_v_12", euler(timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction",
                                        use_karras_sigmas=True), None, 12, {}),
    ("euler_karras_trailing_sigma_min_9", euler(timestep_spacing="trailing", final_sigmas_type="sigma_min",
                                                use_karras_sigmas=True), None, 9, {}),
    ("euler_karras_linear_25", {"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}, None, 25, {}),
    ("dpm_karras_sd15_10", SD15, "dpm", 10, {"karras": True}),
    ("dpm_karras_sd15_25", SD15, "dpm", 25, {"karras": True}),
    ("dpm_karras_trailing_order3_20", dpm(timestep_spacing="trailing", solver_order=3, use_karras_sigmas=True), None, 20, {}),
    # Euler ancestral: noise from the generator at every step
    ("euler_ancestral_sd15_10", SD15, "euler-ancestral", 10, {"seed": 5}),
    ("euler_ancestral_sd2v_25", SD2V, "euler-ancestral", 25, {"seed": 6}),
    ("euler_ancestral_leading_12", ancestral(timestep_spacing="leading", steps_offset=1), None, 12, {"seed": 7}),
    ("euler_ancestral_zero_snr_v_9", ancestral(timestep_spacing="trailing", prediction_type="v_prediction",
                                                rescale_betas_zero_snr=True), None, 9, {"seed": 8}),
    # DPM-Solver++ SDE: noise from the generator at every step
    ("dpm_sde_sd15_10", SD15, "dpm-sde", 10, {"seed": 11}),
    ("dpm_sde_sd15_25", SD15, "dpm-sde", 25, {"seed": 12}),
    ("dpm_sde_karras_sd15_25", SD15, "dpm-sde", 25, {"seed": 13, "karras": True}),
    ("dpm_sde_heun_v_leading_15", dpm(algorithm_type=SDE, solver_type="heun", prediction_type="v_prediction",
                                      timestep_spacing="leading", steps_offset=1), None, 15, {"seed": 14}),
    ("dpm_sde_order3_trailing_20", dpm(algorithm_type=SDE, solver_order=3, timestep_spacing="trailing"), None, 20,
     {"seed": 15}),
    ("dpm_sde_sigma_min_no_lof_8", dpm(algorithm_type=SDE, final_sigmas_type="sigma_min", lower_order_final=False),
     None, 8, {"seed": 16}),
    ("dpm_sde_order1_sample_6", dpm(algorithm_type=SDE, solver_order=1, prediction_type="sample"), None, 6, {"seed": 17}),
    # what SDXL users pick, from its own config
    ("sdxl_euler_karras_30", SDXL, None, 30, {"karras": True}),
    ("sdxl_euler_ancestral_30", SDXL, "euler-ancestral", 30, {"seed": 21}),
    ("sdxl_dpm_karras_30", SDXL, "dpm", 30, {"karras": True}),
    ("sdxl_dpm_sde_karras_30", SDXL, "dpm-sde", 30, {"seed": 22, "karras": True}),
]

# gradient cases: (case whose config and steps are used, how many final steps run with gradient)
GRADIENTS = [("ddim_sd15_25", 3), ("ddim_trailing_clip_25", 3), ("euler_sd15_10", 3), ("dpm_sd15_25", 3),
             ("pndm_sd15_10", 3), ("euler_karras_sd15_10", 3), ("dpm_karras_sd15_10", 4)]

STEP_COUNTS = list(range(1, 51)) + [61, 75, 100, 121, 150, 250, 333, 500, 1000]


def build(config, override, opts):
    base = CLASSES[config["_class_name"]].from_config(config)
    cls, keys = SHORT[override] if override else (type(base), {})
    if opts.get("karras"):
        keys = {**keys, "use_karras_sigmas": True}
    return cls.from_config(base.config, **keys) if override or keys else base


def model(x, t, const):
    return 0.9 * x + (0.1 * float(t) / 1000.0) * const


def step(s, out, t, x, opts, generator):
    kw = {}
    if isinstance(s, DDIMScheduler):
        kw = {"eta": opts.get("eta", 0.0), "generator": generator}
    elif isinstance(s, EulerDiscreteScheduler):
        kw = {"s_churn": opts.get("s_churn", 0.0), "generator": generator}
    elif isinstance(s, (EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)):
        kw = {"generator": generator}
    return s.step(out, t, x, **kw)


def main():
    os.makedirs(OUT, exist_ok=True)
    t = {}
    sample = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    const = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    t.update({"sample": sample, "const": const, "weights": weights})

    manifest = []
    for name, config, override, steps, opts in CASES:
        s = build(config, override, opts)
        s.set_timesteps(steps)
        generator = torch.Generator().manual_seed(opts["seed"]) if "seed" in opts else None
        sigma = float(s.init_noise_sigma)
        x = sample * s.init_noise_sigma
        samples, preds, inputs = [x], [], []
        for ts in s.timesteps:
            inp = s.scale_model_input(x, ts)
            out = step(s, model(inp, ts, const), ts, x, opts, generator)
            x = out.prev_sample
            inputs.append(inp)
            samples.append(x)
            if getattr(out, "pred_original_sample", None) is not None:
                preds.append(out.pred_original_sample)
        t[f"{name}.timesteps"] = s.timesteps.to(torch.float64)
        t[f"{name}.init_noise_sigma"] = torch.tensor([sigma], dtype=torch.float64)
        t[f"{name}.samples"] = torch.stack(samples)
        t[f"{name}.inputs"] = torch.stack(inputs)
        if preds:
            t[f"{name}.pred_original"] = torch.stack(preds)
        if hasattr(s, "sigmas") and not isinstance(s, (DDIMScheduler, PNDMScheduler)):
            t[f"{name}.sigmas"] = s.sigmas.to(torch.float32)
        manifest.append({"name": name, "config": config, "scheduler": override, "steps": steps, "eta": opts.get("eta", 0.0),
                         "seed": opts.get("seed"), "s_churn": opts.get("s_churn", 0.0), "karras": opts.get("karras", False),
                         "class": type(s).__name__})

    # gradients of sum(weights * x_final) through the last k steps, wrt the sample entering them and `const`
    cases = {c[0]: c for c in CASES}
    gradients = []
    for name, k in GRADIENTS:
        _, config, override, steps, opts = cases[name]
        s = build(config, override, opts)
        s.set_timesteps(steps)
        x = None
        c = const.clone().requires_grad_(True)
        # run the first steps without gradient (as TextCraftor does), then the last k with it
        with torch.no_grad():
            x = sample * s.init_noise_sigma
            for ts in s.timesteps[:-k]:
                x = step(s, model(s.scale_model_input(x, ts), ts, const), ts, x, opts, None).prev_sample
        x0 = x.clone().requires_grad_(True)
        x = x0
        for ts in s.timesteps[-k:]:
            x = step(s, model(s.scale_model_input(x, ts), ts, c), ts, x, opts, None).prev_sample
        loss = (x * weights).sum()
        g_sample, g_const = torch.autograd.grad(loss, [x0, c])
        t[f"grad.{name}.start"] = x0.detach()
        t[f"grad.{name}.final"] = x.detach()
        t[f"grad.{name}.sample"] = g_sample
        t[f"grad.{name}.const"] = g_const
        gradients.append({"case": name, "steps_with_grad": k})

    # timesteps of each class and spacing for many step counts ("leading" with steps_offset 1, as SD configs have)
    for cls in CLASSES.values():
        for spacing in ("leading", "trailing", "linspace"):
            extra = {"skip_prk_steps": True} if cls is PNDMScheduler else {}
            s = cls(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0, **extra)
            values, lengths = [], []
            for n in STEP_COUNTS:
                s.set_timesteps(n)
                values.append(s.timesteps.to(torch.float64))
                lengths.append(len(s.timesteps))
            key = f"timesteps.{cls.__name__}.{spacing}"
            t[key + ".values"] = torch.cat(values).to(torch.float32)  # whole numbers or Euler's float32 values
            t[key + ".lengths"] = torch.tensor(lengths, dtype=torch.int64)
    t["timesteps.step_counts"] = torch.tensor(STEP_COUNTS, dtype=torch.int64)

    # the same with Karras sigmas on Stable Diffusion's schedule, and the sigmas (one more per count: the final one)
    for cls in (EulerDiscreteScheduler, DPMSolverMultistepScheduler):
        for spacing in ("leading", "trailing", "linspace"):
            s = cls(**SCALED, use_karras_sigmas=True, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
            values, sigmas = [], []
            for n in STEP_COUNTS:
                s.set_timesteps(n)
                values.append(s.timesteps.to(torch.float64))
                sigmas.append(s.sigmas.to(torch.float32))
            key = f"karras.{cls.__name__}.{spacing}"
            t[key + ".values"] = torch.cat(values).to(torch.float32)
            t[key + ".sigmas"] = torch.cat(sigmas)
    # DPM-Solver truncates (not rounds) the cosine schedule's Karras timesteps; from 10 steps on they start with one
    # timestep several times, which its step index cannot run (diffusers fails at the last step), so up to 9
    s = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    values = []
    for n in range(1, 10):
        s.set_timesteps(n)
        values.append(s.timesteps.to(torch.float64))
    t["karras.cosine.values"] = torch.cat(values).to(torch.float32)

    # cumulative alphas of each beta schedule
    for label, config in [("linear", {}), ("scaled_linear", SCALED), ("squaredcos_cap_v2", {"beta_schedule": "squaredcos_cap_v2"}),
                          ("scaled_linear_zero_snr", {**SCALED, "rescale_betas_zero_snr": True})]:
        t[f"alphas_cumprod.ddim.{label}"] = DDIMScheduler(**config).alphas_cumprod
        t[f"alphas_cumprod.euler.{label}"] = EulerDiscreteScheduler(**config).alphas_cumprod

    # add_noise on a batch of two
    original = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    t.update({"add_noise.original": original, "add_noise.noise": noise})
    for short in SHORT:
        s = build(SD15, short, {})
        s.set_timesteps(10)
        sigma_based = isinstance(s, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler))
        chosen = torch.stack([s.timesteps[0], s.timesteps[6]]) if sigma_based else torch.tensor([999, 321])
        t[f"add_noise.{short}.timesteps"] = chosen.to(torch.float64)
        t[f"add_noise.{short}.out"] = s.add_noise(original, noise, chosen)

    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "schedulers.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"cases": manifest, "gradients": gradients}, f, indent=1)
        f.write("\n")
    for f in sorted(os.listdir(OUT)):
        print(f"{f:40s} {os.path.getsize(os.path.join(OUT, f)) / 1024:8.1f} KB")


if __name__ == "__main__":
    main()
