"""Logit distillation terms: pixel-wise KD and channel-wise distillation (CWD), as in CIRKD.

z_s, z_t: student and teacher logits B×K×H×W at the same size. Computed in float32 (or float64
when an input is float64) whatever the input dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def pixel_kl(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(P_T ‖ P_S) per pixel with P = softmax over K at temperature T: -> B×H×W."""
    dt = _compute_dtype(z_s, z_t)
    log_p_s = F.log_softmax(z_s.to(dt) / temperature, dim=1)
    log_p_t = F.log_softmax(z_t.detach().to(dt) / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)


def pixel_kd(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float = 1.0,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """T²·Σ_p w_p·KL_p / max(1, Σ w): with ``weight=None`` the CIRKD mean over B·H·W pixels.

    weight: B×H×W (bool or float) selecting the pixels, e.g. FRKD's fg mask.
    """
    kl = pixel_kl(z_s, z_t, temperature)
    if weight is None:
        loss = kl.mean()
    else:
        w = weight.to(kl.dtype)
        loss = (w * kl).sum() / w.sum().clamp_min(1)
    return loss * temperature ** 2


def channel_wise_kd(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float = 4.0,
                    channels: int | None = None) -> torch.Tensor:
    """CWD: softmax over the H·W positions of each channel, Σ KL(φ_T ‖ φ_S) / (B·channels) · T² (CIRKD).

    z_s, z_t: B×K×H×W. ``channels`` defaults to K; CIRKD's feature CWD divides by the student's
    channel count before its 1×1 conv.
    """
    dt = _compute_dtype(z_s, z_t)
    B, K = z_s.shape[0], channels or z_s.shape[1]
    log_s = F.log_softmax(z_s.to(dt).flatten(2) / temperature, dim=2)
    log_t = F.log_softmax(z_t.detach().to(dt).flatten(2) / temperature, dim=2)
    return (log_t.exp() * (log_t - log_s)).sum() / (B * K) * temperature ** 2
