"""CIRKDv2's channel relation terms and its GCN student connector (CIRKD ``losses/cirkd_channel.py``,
``losses/gcn.py``, ``train_cirkdv2.py``).

Channel embeddings: both features are 4×4 average-pooled (ceil mode: an edge window averages the
positions it covers); the pooled student goes through ``head`` (1×1 conv C_s→C_t, BatchNorm, ReLU,
1×1 conv), then every channel of both networks is a row over the D = h'·w' pooled positions,
L2-normalised over them: s, t B×C_t×D.

- ``minibatch_channel``: per ordered image pair (i, j), the C_t×C_t similarities s_i·s_jᵀ/τ and
  t_i·t_jᵀ/τ; Σ over the C_t rows of KL(softmax(T) ‖ softmax(S)) over j's C_t channels, / (C_t·B²)
  (``minibatch_pixel_relation`` with channels as its pixels).
- ``channel_kd``: mean over B·C_t·D of (s − t)².
- ``memory_channel``: a bank of S teacher channel rows (``channel_memory_size``, random unit rows at
  start). Each step, **before** sampling, it takes min(B·C_t, 256) of this batch's teacher rows at
  random (gathered over ranks) and writes them at the pointer; a write that would reach the end
  (ptr + n ≥ S) goes to the last n rows and the pointer returns to 0. Then ``channel_contrast_size``
  random rows M are the negatives: T²·Σ over the B·C_t rows of KL(softmax(t·Mᵀ/τ/T) ‖
  softmax(s·Mᵀ/τ/T)) / (B·C_t).
The bank's row length D is set by the first batch (CIRKD sizes it from the crop at construction).

GCN (CIRKD ``losses/gcn.py``): x B×C×H×W -> relu(bn(conv([x, relu(bn(conv(A·v)))]))) with
q, k, v = 1×1 convs C→C/2 of x, A = softmax over positions of (q/√(C/2))·kᵀ (N×N per image).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillationLoss, check_same_grid
from .cross_image import gather_across_ranks, minibatch_pixel_relation

POOL = 4                 # CIRKD's 4×4 patches
CHANNEL_UPDATE_FREQ = 256  # teacher rows enqueued per step at most


class GCN(nn.Module):
    """CIRKDv2's graph connector on the student feature (module doc): B×C×H×W -> B×C×H×W."""

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 2
        if inner < 1:
            raise ValueError(f"GCN: the student feature needs at least 2 channels, got {channels}")
        self.query, self.key, self.value = (nn.Conv2d(channels, inner, 1, bias=False) for _ in range(3))
        self.expand = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B×N×C/2
        k = self.key(x).flatten(2)                    # B×C/2×N
        v = self.value(x).flatten(2).transpose(1, 2)  # B×N×C/2
        attention = torch.softmax((q * q.shape[2] ** -0.5) @ k, dim=-1)
        graph = (attention @ v).transpose(1, 2).reshape(B, -1, H, W)
        return self.fuse(torch.cat([x, self.expand(graph)], dim=1))



def similarity_kd(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·Σ_rows KL(softmax(t/T) ‖ softmax(s/T)) / #rows over the last dim; rows×M inputs (0 rows -> 0). The memory
    channel relation takes CIRKD's dot products with the bank as they are: ``frkd_kernels.relation_kl`` would
    renormalise the float32 bank rows, a 1e-8 relative difference from CIRKD's values."""
    log_s = F.log_softmax(s_logits / temperature, dim=-1)
    log_t = F.log_softmax(t_logits.detach() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum() / max(1, s_logits.shape[0]) * temperature ** 2

def channel_embeddings(feat: torch.Tensor) -> torch.Tensor:
    """4×4 average pool (ceil mode), then each channel's row over the pooled positions, L2-normalised:
    B×C×H×W -> B×C×D."""
    return F.normalize(F.avg_pool2d(feat, POOL, POOL, ceil_mode=True).flatten(2), p=2, dim=-1)


class ChannelContrast(DistillationLoss):
    """``minibatch_channel``, ``memory_channel`` and ``channel_kd`` × their λ (module doc).

    Buffers: ``channel_bank`` S×D (D set by the first batch) and ``channel_ptr``. ``head`` is trained
    with the student.
    """

    def __init__(self, *, lambda_minibatch_channel: float, lambda_memory_channel: float, lambda_channel_kd: float,
                 channel_memory_size: int, channel_contrast_size: int, contrast_temperature: float,
                 contrast_kd_temperature: float, **common):
        super().__init__(**common)
        for name, value in (("channel_memory_size", channel_memory_size),
                            ("channel_contrast_size", channel_contrast_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ChannelContrast: {name} must be a positive int, got {value!r}")
        C_s, C_t = common["student_channels"], common["teacher_channels"]
        self.lambda_minibatch_channel, self.lambda_memory_channel = lambda_minibatch_channel, lambda_memory_channel
        self.lambda_channel_kd, self.channel_contrast_size = lambda_channel_kd, channel_contrast_size
        self.contrast_temperature, self.contrast_kd_temperature = contrast_temperature, contrast_kd_temperature
        self.head = nn.Sequential(nn.Conv2d(C_s, C_t, 1, bias=False), nn.BatchNorm2d(C_t), nn.ReLU(inplace=True),
                                  nn.Conv2d(C_t, C_t, 1, bias=False))
        self.register_buffer("channel_bank", torch.empty(channel_memory_size, 0))
        self.register_buffer("channel_ptr", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "channel_bank")
        if saved is not None and saved.shape != self.channel_bank.shape:
            self.channel_bank.resize_(saved.shape)  # in place: a DDP wrapper keeps its reference
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _bank(self, length: int) -> torch.Tensor:
        """The bank, filled with random unit rows of ``length`` on first use."""
        bank = self.channel_bank
        if bank.shape[1] == 0:
            bank.resize_(bank.shape[0], length)
            bank.copy_(F.normalize(torch.randn(bank.shape, device=bank.device), dim=1))
        elif bank.shape[1] != length:
            raise ValueError(f"ChannelContrast: the channel bank holds rows of {bank.shape[1]} pooled positions, "
                             f"this batch has {length}: CIRKDv2's channel terms need one feature size for the "
                             "whole run (a fixed --crop-size)")
        return bank

    @torch.no_grad()
    def enqueue(self, t: torch.Tensor) -> None:
        """Write min(rows, 256) random rows of t (B·C_t×D, gathered over ranks) at the pointer (module doc)."""
        rows = gather_across_ranks(t)
        bank = self._bank(rows.shape[1])
        n = min(rows.shape[0], CHANNEL_UPDATE_FREQ)
        picked = F.normalize(rows[torch.randperm(rows.shape[0], device=rows.device)[:n]], p=2, dim=1)
        ptr, size = int(self.channel_ptr), bank.shape[0]
        if ptr + n >= size:
            bank[size - n:] = picked.to(bank.dtype)
            self.channel_ptr.zero_()
        else:
            bank[ptr:ptr + n] = picked.to(bank.dtype)
            self.channel_ptr.fill_(ptr + n)

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        pooled = F.avg_pool2d(student.feat, POOL, POOL, ceil_mode=True)
        s = F.normalize(self.head(pooled).flatten(2), p=2, dim=-1)  # B×C_t×D
        t = channel_embeddings(teacher.feat.detach().to(s.dtype))
        B, C, D = s.shape
        out = {}
        if self.lambda_minibatch_channel != 0:  # channels as the relation's pixels: B×D×C×1
            relation = minibatch_pixel_relation(s.transpose(1, 2)[..., None], t.transpose(1, 2)[..., None],
                                                self.contrast_temperature)
            out["minibatch_channel"] = self.lambda_minibatch_channel * relation
        if self.lambda_channel_kd != 0:
            out["channel_kd"] = self.lambda_channel_kd * (s - t).pow(2).mean()
        s_rows, t_rows = s.reshape(B * C, D), t.reshape(B * C, D)
        self.enqueue(t_rows)
        if self.lambda_memory_channel != 0:
            bank = self.channel_bank
            negatives = bank[torch.randperm(bank.shape[0], device=bank.device)[:self.channel_contrast_size]]
            tau = self.contrast_temperature
            out["memory_channel"] = self.lambda_memory_channel * similarity_kd(
                s_rows @ negatives.T.to(s.dtype) / tau, t_rows @ negatives.T.to(s.dtype) / tau,
                self.contrast_kd_temperature)
        return out
