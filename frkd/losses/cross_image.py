"""CIRKD's cross-image relation terms (Yang et al., CVPR 2022; CIRKD ``losses/cirkd_mini_batch.py``,
``losses/cirkd_memory.py``, ``train_cirkd.py``).

Notation: f_s B×C_s×H×W, f_t B×C_t×H×W (stride 8), N = H·W, y B×H×W labels at the feature size,
ê = e/‖e‖₂ over channels, KL_T(a ‖ b) = T²·Σ softmax(a/T)·(log softmax(a/T) − log softmax(b/T)).

- ``minibatch_pixel``: for every ordered pair of images (i, j), the N×N similarities
  S_ij = f̂_i·f̂_jᵀ/τ of each network; Σ over the N rows of KL_1(T_ij ‖ S_ij) with the softmax over
  the N pixels of image j, divided by N·B² (``batchmean`` per pair, mean over the B² pairs).
  No projection: student and teacher maps are N×N whatever their channels.
- ``memory_pixel`` / ``memory_region``: every valid pixel p is an anchor; its teacher embedding t̂_p
  and the projected student embedding ŝ_p = normalise(head(f_s))_p are compared with M teacher
  embeddings drawn from a memory bank of pixels (or of class-mean "regions");
  Σ_p KL_T(t̂_p·Mᵀ/τ ‖ ŝ_p·Mᵀ/τ) / #anchors. head = 1×1 conv C_s→C_t, BatchNorm, ReLU, 1×1 conv.
  The banks hold per class a ring of teacher embeddings: each step, before the contrast, every
  image adds per present class its normalised class mean (region bank) and up to 16 of its pixels
  picked at random (pixel bank). The M negatives are the same random slots of every class:
  ``pixel_contrast_size // K + 1`` (``region_contrast_size // K + 1``) slots per class.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import frkd_kernels

from .base import DistillationLoss, check_same_grid, valid_pixels

PIXEL_UPDATE_FREQ = 16  # pixels per class and image added to the pixel bank (CIRKD)


def minibatch_pixel_relation(f_s: torch.Tensor, f_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """CIRKD's mini-batch pixel-to-pixel term (module doc) over the B·N×B·N similarities of each
    network, with the softmax over each image's N columns: ``frkd_kernels.relation_kl`` with the
    pixels as queries and keys and one key group per image (tiled; the similarities are never held
    whole). f_s B×C_s×H×W, f_t B×C_t×H×W -> scalar (float32, float64 for float64 features)."""
    B = f_s.shape[0]
    dt = torch.float64 if f_s.dtype == torch.float64 else torch.float32  # softmax over N·B columns
    with torch.autocast(f_s.device.type, enabled=False):
        s = f_s.to(dt).flatten(2).transpose(1, 2).reshape(-1, f_s.shape[1])
        t = f_t.detach().to(dt).flatten(2).transpose(1, 2).reshape(-1, f_t.shape[1])
        return frkd_kernels.relation_kl(s, t, groups=B, temperature=temperature)


class MiniBatchPixel(DistillationLoss):
    """``minibatch_pixel``: λ·``minibatch_pixel_relation`` at τ = ``contrast_temperature``."""

    def __init__(self, *, lambda_minibatch_pixel: float, contrast_temperature: float, **common):
        super().__init__(**common)
        self.lambda_minibatch_pixel, self.contrast_temperature = lambda_minibatch_pixel, contrast_temperature

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        relation = minibatch_pixel_relation(student.feat, teacher.feat, self.contrast_temperature)
        return {"minibatch_pixel": self.lambda_minibatch_pixel * relation}


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over dim 0 from every rank (no grad); itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class MemoryContrast(DistillationLoss):
    """``memory_pixel`` and ``memory_region``: λ·the memory-bank relation terms (module doc).

    Buffers: ``pixel_bank`` K×pixel_memory_size×C_t, ``region_bank`` K×region_memory_size×C_t (random
    unit vectors at start, as CIRKD), and their per-class write pointers. ``head`` is trained with
    the student. ``pixel_memory_cirkd_enqueue``: fill a class's pixel slots as CIRKD's code does
    (``enqueue``).
    """

    def __init__(self, *, lambda_memory_pixel: float, lambda_memory_region: float, contrast_temperature: float,
                 contrast_kd_temperature: float, pixel_memory_size: int, region_memory_size: int,
                 pixel_contrast_size: int, region_contrast_size: int, pixel_memory_cirkd_enqueue: bool = False,
                 **common):
        super().__init__(**common)
        for name, value in (("pixel_memory_size", pixel_memory_size), ("region_memory_size", region_memory_size),
                            ("pixel_contrast_size", pixel_contrast_size),
                            ("region_contrast_size", region_contrast_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MemoryContrast: {name} must be a positive int, got {value!r}")
        if pixel_memory_size < PIXEL_UPDATE_FREQ:
            raise ValueError(f"MemoryContrast: pixel_memory_size must be >= {PIXEL_UPDATE_FREQ}, got {pixel_memory_size}")
        K, C_s, C_t = self.num_classes, common["student_channels"], common["teacher_channels"]
        self.lambda_memory_pixel, self.lambda_memory_region = lambda_memory_pixel, lambda_memory_region
        self.contrast_temperature, self.contrast_kd_temperature = contrast_temperature, contrast_kd_temperature
        self.pixel_memory_cirkd_enqueue = pixel_memory_cirkd_enqueue
        self.pixel_per_class = pixel_contrast_size // K + 1
        self.region_per_class = region_contrast_size // K + 1
        self.head = nn.Sequential(nn.Conv2d(C_s, C_t, 1, bias=False), nn.BatchNorm2d(C_t), nn.ReLU(inplace=True),
                                  nn.Conv2d(C_t, C_t, 1, bias=False))
        self.register_buffer("pixel_bank", F.normalize(torch.randn(K, pixel_memory_size, C_t), dim=2))
        self.register_buffer("pixel_ptr", torch.zeros(K, dtype=torch.long))
        self.register_buffer("region_bank", F.normalize(torch.randn(K, region_memory_size, C_t), dim=2))
        self.register_buffer("region_ptr", torch.zeros(K, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, t_emb: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch of normalised teacher embeddings t_emb B×C_t×H×W with labels y B×H×W (valid:
        0 ≤ y < K, ≠ ignore) to both banks, image after image as CIRKD (gathered over ranks first).

        A class with n pixels in an image adds min(n, 16) of them, drawn at random, to its pixel bank;
        with ``pixel_memory_cirkd_enqueue`` it adds instead the pixels at min(n, 16) random raster
        positions below n, whatever their class (CIRKD's ``this_feat[:, perm[:K]]``).
        """
        t_emb, y = gather_across_ranks(t_emb), gather_across_ranks(y)
        K = self.num_classes
        protos, counts = frkd_kernels.prototype_pool(t_emb, y, K, self.ignore_index)  # B×K×C, B×K
        regions = F.normalize(protos, dim=2)
        valid = valid_pixels(y, K, self.ignore_index).flatten(1)  # B×N
        labels = y.flatten(1)
        pixels = t_emb.flatten(2).transpose(1, 2)  # B×N×C
        region_size, pixel_size = self.region_bank.shape[1], self.pixel_bank.shape[1]
        for b in range(t_emb.shape[0]):
            present = (counts[b] > 0).nonzero()[:, 0]
            self.region_bank[present, self.region_ptr[present]] = regions[b, present].to(self.region_bank.dtype)
            self.region_ptr[present] = (self.region_ptr[present] + 1) % region_size
            n = counts[b].long().clamp(max=PIXEL_UPDATE_FREQ)  # K
            if self.pixel_memory_cirkd_enqueue:  # per present class, random raster positions below its count
                order = torch.cat([torch.randperm(int(counts[b, k]), device=y.device)[:PIXEL_UPDATE_FREQ]
                                   for k in present.tolist()])
                cls = present.repeat_interleave(n[present])
                rank = torch.arange(order.numel(), device=y.device) - (n.cumsum(0) - n)[cls]
            else:  # up to PIXEL_UPDATE_FREQ random pixels per class: sort by (class, random key), rank within class
                key = torch.where(valid[b], labels[b].to(torch.float64)
                                  + torch.rand(labels.shape[1], dtype=torch.float64, device=y.device), float("inf"))
                order = key.argsort()[: int(valid[b].sum())]
                cls = labels[b, order]
                first = torch.cumsum(counts[b].long(), 0) - counts[b].long()  # first sorted position of each class
                rank = torch.arange(order.numel(), device=y.device) - first[cls]
                keep = rank < PIXEL_UPDATE_FREQ
                order, cls, rank = order[keep], cls[keep], rank[keep]
            wraps = self.pixel_ptr + n >= pixel_size
            start = torch.where(wraps, pixel_size - n, self.pixel_ptr)
            self.pixel_bank[cls, start[cls] + rank] = F.normalize(pixels[b, order], dim=1).to(self.pixel_bank.dtype)
            self.pixel_ptr.copy_(torch.where(n > 0, torch.where(wraps, 0, self.pixel_ptr + n), self.pixel_ptr))

    def negatives(self, bank: torch.Tensor, per_class: int) -> torch.Tensor:
        """The same ``per_class`` random slots of every class: bank K×S×C -> K·min(per_class, S)×C."""
        slots = torch.randperm(bank.shape[1], device=bank.device)[:per_class]
        return bank[:, slots].reshape(-1, bank.shape[2])

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        s_emb = F.normalize(self.head(student.feat), p=2, dim=1)
        t_emb = F.normalize(teacher.feat.detach().to(s_emb.dtype), p=2, dim=1)
        y = self.labels_at(labels, s_emb)
        self.enqueue(t_emb, y)
        anchors = valid_pixels(y, self.num_classes, self.ignore_index).flatten()
        s = s_emb.permute(0, 2, 3, 1).reshape(-1, s_emb.shape[1])[anchors]
        t = t_emb.permute(0, 2, 3, 1).reshape(-1, t_emb.shape[1])[anchors]
        out = {}
        for name, weight, bank, per_class in (
                ("memory_pixel", self.lambda_memory_pixel, self.pixel_bank, self.pixel_per_class),
                ("memory_region", self.lambda_memory_region, self.region_bank, self.region_per_class)):
            if weight != 0:
                out[name] = weight * self.relation(s, t, self.negatives(bank, per_class).to(s.dtype))
        return out

    def relation(self, s: torch.Tensor, t: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """KL_T(t·Mᵀ/τ ‖ s·Mᵀ/τ) averaged over the anchors: s, t A×C_t unit rows, negatives M×C_t.
        ``frkd_kernels.relation_kl`` at temperature τ·T (it takes the softmax of the cosines / (τ·T)),
        times T²; 0 without anchors."""
        kd = self.contrast_kd_temperature
        return frkd_kernels.relation_kl(s, t, negatives, negatives,
                                        temperature=self.contrast_temperature * kd) * kd ** 2
