#!/usr/bin/env python3
"""Fixtures for the engine's parity tests (Tests/TorchTests/EngineParityTests.swift).

Run by hand, never by CI:  python3 scripts/parity/make_engine_fixtures.py
Needs torch==2.11.0 and safetensors (see scripts/parity/README.md). Writes
Tests/TorchTests/Fixtures/engine/ops.safetensors.

Every case is a name, a function and its inputs. For each case the file holds
  NAME.in0, NAME.in1, ...   the inputs
  NAME.out                  the output (outputs of several tensors are concatenated flat)
  NAME.w                    a random weight of the output's shape: the loss is sum(out * w)
  NAME.grad0, ...           d loss / d input k, for the float inputs marked differentiable
The Swift test replays the same function on the same inputs and compares output and gradients.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "TorchTests", "Fixtures", "engine")
tensors = {}
g = torch.Generator().manual_seed(1234)


def r(*shape, scale=1.0):
    return torch.randn(shape, generator=g) * scale


def case(name, fn, *inputs, grad=None):
    """grad: indices of inputs to differentiate (default: every float input)."""
    inputs = [x.clone() for x in inputs]
    if grad is None:
        grad = [i for i, x in enumerate(inputs) if x.is_floating_point()]
    for i in grad:
        inputs[i].requires_grad_(True)
    out = fn(*inputs)
    if isinstance(out, (tuple, list)):
        out = torch.cat([o.reshape(-1).to(torch.float32) for o in out])
    for i, x in enumerate(inputs):
        tensors[f"{name}.in{i}"] = x.detach().clone()
    tensors[f"{name}.out"] = out.detach().clone()
    if grad and out.is_floating_point() and out.requires_grad:
        w = r(*out.shape)
        gs = torch.autograd.grad((out * w).sum(), [inputs[i] for i in grad], allow_unused=True)
        tensors[f"{name}.w"] = w
        for i, gi in zip(grad, gs):
            tensors[f"{name}.grad{i}"] = gi if gi is not None else torch.zeros_like(inputs[i])


# arithmetic and broadcasting
case("add", lambda a, b: a + b, r(3, 4), r(4))
case("sub", lambda a, b: a - b, r(2, 3), r(2, 3))
case("mul", lambda a, b: a * b, r(2, 3), r(3, 1).reshape(3, 1)[:2])
case("div", lambda a, b: a / (b.abs() + 0.5), r(2, 3), r(2, 3))
case("scalar_ops", lambda a: (a + 2.5, a - 1.25, a * 3.0, a / 4.0, 1.5 - a, 2.0 / (a.abs() + 1), 3.0 * a), r(2, 3))
case("add_alpha", lambda a, b: torch.add(a, b, alpha=-0.75), r(3), r(3))
case("pow_scalar", lambda a: (a.abs() + 0.1) ** 1.7, r(2, 3))
case("pow_tensor", lambda a, b: (a.abs() + 0.1) ** b, r(2, 3), r(2, 3))
case("maximum_minimum", lambda a, b: (torch.maximum(a, b), torch.minimum(a, b)), r(4), r(4))
case("unary", lambda a: (a.neg(), a.abs(), a.exp(), (a.abs() + 0.1).log(), (a.abs() + 0.1).sqrt(),
                         (a.abs() + 0.1).rsqrt(), a.sin(), a.cos(), a.tanh(), a.sigmoid(), a.square(),
                         a.erf(), F.softplus(a)), r(2, 5))
case("activations", lambda a: (F.gelu(a), F.gelu(a, approximate="tanh"), a * torch.sigmoid(1.702 * a),
                               F.silu(a), F.relu(a)), r(3, 4))
case("clamp", lambda a: a.clamp(-0.5, 0.7), r(3, 4))
case("clamp_min", lambda a: a.clamp(min=0.2), r(3, 4))
case("where", lambda a, b: torch.where(a > 0, a, b * 2), r(3, 4), r(3, 4))
case("masked_fill", lambda a: a.masked_fill(a < 0, -3.0), r(3, 4))
case("lerp", lambda a, b: torch.lerp(a, b, 0.3), r(5), r(5))
case("comparisons", lambda a, b: (a.eq(b), a.ne(b), a.lt(b), a.le(b), a.gt(b), a.ge(b), a.gt(0.0)),
     torch.tensor([1.0, 2.0, 3.0, -1.0]), torch.tensor([1.0, 3.0, 2.0, 0.0]), grad=[])

# reductions
case("sum_all", lambda a: a.sum(), r(3, 4))
case("sum_dim", lambda a: a.sum(dim=1), r(3, 4))
case("mean_keepdim", lambda a: a.mean(dim=(0, 2), keepdim=True), r(2, 3, 4))
case("var", lambda a: a.var(dim=1), r(3, 5))
case("std_biased", lambda a: a.std(dim=0, correction=0), r(4, 3))
case("var_all", lambda a: a.var(), r(4, 3))
case("amax", lambda a: a.amax(dim=1), r(3, 5))
case("max_dim", lambda a: torch.max(a, dim=1), r(3, 5), grad=[0])
case("argmax", lambda a: (a.argmax(dim=1), a.argmax()), r(3, 5), grad=[])
case("norm", lambda a: a.norm(p=2, dim=-1), r(3, 5))
case("norm_all", lambda a: a.norm(), r(3, 5))
case("logsumexp", lambda a: a.logsumexp(dim=1), r(3, 5))
case("cumsum", lambda a: a.cumsum(dim=1), r(3, 5))
case("prod", lambda a: a.prod(dim=1), r(3, 4))

# views and joins
case("reshape_permute", lambda a: a.permute(2, 0, 1).reshape(4, 6), r(2, 3, 4))
case("transpose_contiguous", lambda a: a.transpose(0, 2).contiguous(), r(2, 3, 4))
case("expand", lambda a: a.expand(3, 4, 5), r(4, 1))
case("squeeze_unsqueeze", lambda a: a.squeeze(1).unsqueeze(0), r(3, 1, 4))
case("slice_step", lambda a: a[:, 1:7:2], r(3, 8))
case("narrow_select", lambda a: (a.narrow(1, 2, 3), a.select(0, 1)), r(3, 6))
case("index_select", lambda a, i: a.index_select(1, i), r(3, 5), torch.tensor([4, 0, 2, 2]))
case("gather", lambda a, i: a.gather(1, i), r(3, 5), torch.tensor([[0, 4], [1, 1], [3, 2]]))
case("cat_stack", lambda a, b: (torch.cat([a, b], dim=1), torch.stack([a, b], dim=0)), r(2, 3), r(2, 3))
case("chunk_split", lambda a: (*a.chunk(3, dim=1), *a.split([1, 4], dim=1)), r(2, 5))
case("repeat", lambda a: (a.repeat(2, 3), a.repeat_interleave(2, dim=0)), r(2, 3))
case("tril_triu", lambda a: (a.tril(), a.triu(1)), r(4, 4))
case("flatten", lambda a: a.flatten(1), r(2, 3, 4))

# linear algebra
case("matmul", lambda a, b: a @ b, r(2, 3, 4), r(4, 5))
case("bmm", lambda a, b: torch.bmm(a, b), r(2, 3, 4), r(2, 4, 5))
case("baddbmm", lambda c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2.0), r(2, 3, 5), r(2, 3, 4), r(2, 4, 5))
case("linear", lambda x, w, b: F.linear(x, w, b), r(2, 3, 4), r(5, 4), r(5))
case("linear_nobias", lambda x, w: F.linear(x, w), r(3, 4), r(2, 4))

# neural-network functions
case("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), r(2, 3, 8, 8), r(4, 3, 3, 3), r(4))
case("conv2d_groups", lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2), r(2, 4, 7, 7), r(6, 2, 3, 3), r(6))
case("conv2d_1x1_dilation", lambda x, w: F.conv2d(x, w, dilation=2, padding=2), r(1, 2, 6, 6), r(3, 2, 3, 3))
case("group_norm", lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-5), r(2, 6, 4, 4), r(6), r(6))
case("layer_norm", lambda x, w, b: F.layer_norm(x, [8], w, b, eps=1e-5), r(2, 3, 8), r(8), r(8))
case("layer_norm_noaffine", lambda x: F.layer_norm(x, [3, 8], eps=1e-6), r(2, 3, 8))
case("softmax", lambda a: F.softmax(a, dim=-1), r(3, 5))
case("log_softmax", lambda a: F.log_softmax(a, dim=0), r(3, 5))
case("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v), r(2, 2, 5, 4), r(2, 2, 6, 4), r(2, 2, 6, 4))
case("sdpa_bool_mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
     r(2, 2, 5, 4), r(2, 2, 5, 4), r(2, 2, 5, 4), torch.ones(5, 5, dtype=torch.bool).tril())
case("sdpa_float_mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
     r(1, 2, 5, 4), r(1, 2, 5, 4), r(1, 2, 5, 4), r(1, 1, 5, 5), grad=[0, 1, 2])
case("sdpa_causal_scale", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3),
     r(1, 3, 5, 4), r(1, 3, 5, 4), r(1, 3, 5, 4))
case("embedding", lambda w, i: F.embedding(i, w), r(10, 4), torch.tensor([[1, 2, 3], [4, 5, 9]]))
case("interp_nearest_scale", lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"), r(1, 2, 3, 4))
case("interp_bilinear", lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False), r(1, 2, 3, 4))
case("interp_bilinear_aa", lambda x: F.interpolate(x, size=(3, 3), mode="bilinear", antialias=True), r(1, 2, 9, 8))
case("interp_bicubic_align", lambda x: F.interpolate(x, size=(7, 6), mode="bicubic", align_corners=True), r(1, 2, 4, 3))
case("interp_bicubic_aa", lambda x: F.interpolate(x, size=(4, 4), mode="bicubic", antialias=True), r(1, 3, 10, 9))
case("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (4, 3)), r(1, 3, 10, 7))
case("avg_pool2d", lambda x: F.avg_pool2d(x, 2, stride=2), r(1, 2, 6, 6))
case("pad_constant", lambda x: F.pad(x, [1, 2, 0, 1], value=0.5), r(1, 2, 3, 3))
case("pad_reflect", lambda x: F.pad(x, [1, 1, 2, 2], mode="reflect"), r(1, 2, 4, 4))
case("pad_replicate", lambda x: F.pad(x, [2, 0, 1, 1], mode="replicate"), r(1, 2, 3, 3))
case("cosine_similarity", lambda a, b: F.cosine_similarity(a, b, dim=1), r(4, 6), r(4, 6))
case("normalize", lambda a: F.normalize(a, dim=-1), r(3, 6))
case("mse_loss", lambda a, b: F.mse_loss(a, b), r(3, 4), r(3, 4))

# dtype conversions: rounding to half and bfloat16 and back
case("to_half_bf16", lambda a: (a.to(torch.float16).to(torch.float32), a.to(torch.bfloat16).to(torch.float32)),
     r(64, scale=100.0), grad=[])

# random numbers: torch.manual_seed(s); torch.randn(...) and seeded generators
torch.manual_seed(42)
tensors["random.manual_seed42.randn_2x3x8x8"] = torch.randn(2, 3, 8, 8)
tensors["random.manual_seed42.then_randn_5"] = torch.randn(5)
tensors["random.manual_seed42.then_rand_7"] = torch.rand(7)
gen = torch.Generator().manual_seed(7)
tensors["random.generator7.randn_1x4x8x8"] = torch.randn(1, 4, 8, 8, generator=gen)
tensors["random.generator7.then_randint_0_10_12"] = torch.randint(0, 10, (12,), generator=gen)
tensors["random.generator7.then_randperm_9"] = torch.randperm(9, generator=gen)
torch.manual_seed(3)
tensors["random.manual_seed3.dropout_half"] = F.dropout(torch.ones(4, 8), p=0.5, training=True)

# AdamW: 10 steps on two parameters with gradients given per step
p1, p2 = r(4, 3), r(3)
tensors["adamw.p1.initial"], tensors["adamw.p2.initial"] = p1.clone(), p2.clone()
p1.requires_grad_(True)
p2.requires_grad_(True)
opt = torch.optim.AdamW([p1, p2], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
for step in range(10):
    g1, g2 = r(4, 3), r(3)
    if step == 4:
        g2 = None  # a parameter without gradient on one step is skipped, as in PyTorch
    tensors[f"adamw.grad1.{step}"] = g1
    if g2 is not None:
        tensors[f"adamw.grad2.{step}"] = g2
    p1.grad, p2.grad = g1, g2
    opt.step()
    if step == 0:
        tensors["adamw.p1.after1"] = p1.detach().clone()
tensors["adamw.p1.after10"], tensors["adamw.p2.after10"] = p1.detach().clone(), p2.detach().clone()
tensors["adamw.exp_avg_sq.0.after10"] = opt.state[p1]["exp_avg_sq"].clone()

os.makedirs(OUT, exist_ok=True)
tensors = {k: v.contiguous() for k, v in tensors.items()}
save_file(tensors, os.path.join(OUT, "ops.safetensors"), metadata={"torch": torch.__version__})
print(f"wrote {len(tensors)} tensors to {os.path.normpath(OUT)}/ops.safetensors")
