"""Deterministic benchmark inputs: ReLU features, blocky label maps with ignored regions."""
from __future__ import annotations

import torch

IGNORE_INDEX = 255


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def features(B: int, C: int, H: int, W: int, *, seed: int, device, dtype, requires_grad=False) -> torch.Tensor:
    """B×C×H×W non-negative features (as after BN + ReLU)."""
    x = torch.randn(B, C, H, W, generator=generator(seed)).relu_().to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def logits(B: int, K: int, H: int, W: int, *, seed: int, device, dtype) -> torch.Tensor:
    """B×K×H×W teacher logits."""
    return (3 * torch.randn(B, K, H, W, generator=generator(seed))).to(device=device, dtype=dtype)


def labels(B: int, H: int, W: int, K: int, *, seed: int, device, block: int = 8, ignore_frac: float = 0.05):
    """B×H×W int64 labels made of block×block regions (like real masks: few classes per
    neighbourhood), with about ``ignore_frac`` of the regions set to IGNORE_INDEX."""
    g = generator(seed)
    block = max(1, min(block, H // 2, W // 2))
    coarse_shape = (B, -(-H // block), -(-W // block))
    coarse = torch.randint(0, K, coarse_shape, generator=g)
    coarse[torch.rand(coarse_shape, generator=g) < ignore_frac] = IGNORE_INDEX
    full = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W]
    return full.contiguous().to(device)


def upstream_grads(outputs, seed: int = 1234):
    """A fixed upstream gradient per output (1 for scalars), the same for every provider."""
    g = generator(seed)
    return [torch.ones_like(o) if o.dim() == 0 else torch.randn(o.shape, generator=g).to(o) for o in outputs]
