"""What the parity scripts do to a freshly built tiny model's weights before saving it."""
import torch


def perturb(model, seed, cross_attention_scale=None):
    """Non-trivial biases and norm affines (the defaults 0/1 hide a dropped bias); small cross-attention outputs
    so that classifier-free guidance does not blow up in a random UNet."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            if cross_attention_scale and "attn2.to_out" in name:
                p.mul_(cross_attention_scale)
    return model
