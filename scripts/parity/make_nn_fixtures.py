#!/usr/bin/env python3
"""Fixtures for Tests/NNTests: a tiny module tree in PyTorch, its weights and its outputs.

Run by hand:  python3 scripts/parity/make_nn_fixtures.py   (torch 2.11.0 + safetensors)
Writes Tests/NNTests/Fixtures/{tiny.safetensors, tiny.bin, tiny_io.safetensors}.
The attention blocks are written out with explicit q/k/v/out Linear layers, as transformers' CLIPAttention
and diffusers' Attention do, so that the key names are the checkpoints' own.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "NNTests", "Fixtures")
torch.manual_seed(0)


class Attention(nn.Module):
    def __init__(self, dim, heads, context_dim=None, names=("q_proj", "k_proj", "v_proj", "out_proj"), bias=True):
        super().__init__()
        self.heads, self.names = heads, names
        kv = context_dim or dim
        setattr(self, names[0], nn.Linear(dim, dim, bias=bias))
        setattr(self, names[1], nn.Linear(kv, dim, bias=bias))
        setattr(self, names[2], nn.Linear(kv, dim, bias=bias))
        if names[3] == "to_out":  # diffusers: to_out = [Linear, Dropout]
            self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        else:
            setattr(self, names[3], nn.Linear(dim, dim))

    def forward(self, x, context=None, mask=None, causal=False):
        c = x if context is None else context
        q, k, v = (getattr(self, n)(t) for n, t in zip(self.names[:3], (x, c, c)))
        b, l, _ = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, is_causal=causal)
        o = o.transpose(1, 2).reshape(b, l, -1)
        out = self.to_out[0] if self.names[3] == "to_out" else getattr(self, self.names[3])
        return out(o)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.norm = nn.LayerNorm(8)
        self.self_attn = Attention(8, 2)
        self.cross_attn = Attention(8, 4, context_dim=6, names=("to_q", "to_k", "to_v", "to_out"), bias=False)
        self.fc = nn.Linear(8, 5)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(3, 6, eps=1e-6)
        self.conv_dw = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False)
        for p in self.parameters():  # non-trivial norms and biases, so a dropped one shows
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.1)


m = Tiny().eval()
ids = torch.tensor([[1, 5, 7, 11], [0, 2, 2, 3]])
ctx = torch.randn(2, 3, 6)
img = torch.randn(2, 3, 8, 8)
mask = torch.ones(4, 4, dtype=torch.bool).tril()
with torch.no_grad():
    h = m.norm(m.embed(ids))
    a = m.self_attn(h, mask=mask)
    c = m.cross_attn(h, context=ctx)
    logits = m.fc(h + a + c)
    y = m.conv_dw(F.silu(m.gn(m.conv(img))))
    causal = m.self_attn(h, causal=True)

os.makedirs(OUT, exist_ok=True)
sd = {k: v.contiguous() for k, v in m.state_dict().items()}
save_file(sd, os.path.join(OUT, "tiny.safetensors"))
torch.save(m.state_dict(), os.path.join(OUT, "tiny.bin"))
save_file({"ids": ids, "context": ctx, "image": img, "mask": mask, "embedded": h.contiguous(), "self_attn": a.contiguous(),
           "cross_attn": c.contiguous(), "logits": logits.contiguous(), "conv_out": y.contiguous(),
           "causal": causal.contiguous()}, os.path.join(OUT, "tiny_io.safetensors"))
print("keys:", sorted(sd))
