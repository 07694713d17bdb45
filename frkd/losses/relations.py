"""Intra-class (IFV) and inter-class (IDD) relation terms, shared by ``ifvd``, ``idd`` and ``frkd``.

Notation: intra maps B×H×W (from ``class_distance_maps``), protos B×K×C and counts B×K (from
``prototype_pool``), valid B×H×W bool. Every normaliser is guarded: an empty set gives 0, not NaN.
"""
from __future__ import annotations

import torch


def intra_term(intra_s: torch.Tensor, intra_t: torch.Tensor, valid: torch.Tensor, cirkd_mean: bool) -> torch.Tensor:
    """Σ_valid (intra_S − intra_T)² / max(1, #valid), or / (B·H·W) with ``cirkd_mean`` (CIRKD's MSE).

    intra_s, intra_t, valid: B×H×W. Ignored pixels add 0 (both maps are 1 there) but count
    in the CIRKD mean.
    """
    sq = torch.where(valid, (intra_s - intra_t.to(intra_s.dtype)) ** 2, 0.0)
    denom = valid.numel() if cirkd_mean else valid.sum().clamp_min(1)
    return sq.sum() / denom


def prototype_distance(protos: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """D = 1 − cos between the prototypes of each image: protos B×K×C -> B×K×K.

    cos = a·b / (‖a‖‖b‖) where ‖a‖‖b‖ ≥ eps and 0 elsewhere (an absent class's zero prototype),
    with no gradient through the guarded entries (the eps rule of docs/ops.md).
    """
    norms = torch.linalg.vector_norm(protos, dim=2)
    den = norms[:, :, None] * norms[:, None, :]
    ok = den >= eps
    dots = torch.bmm(protos, protos.transpose(1, 2))
    cos = torch.where(ok, dots / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(dots))
    return 1.0 - cos


def present_pairs(counts: torch.Tensor) -> torch.Tensor:
    """Ordered pairs (i, j), i ≠ j, of classes present in each image: counts B×K -> B×K×K bool."""
    present = counts > 0
    K = counts.shape[1]
    off_diagonal = ~torch.eye(K, dtype=torch.bool, device=counts.device)
    return present[:, :, None] & present[:, None, :] & off_diagonal


def inter_term(protos_s: torch.Tensor, protos_t: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """IDD: Σ over images and present ordered pairs i ≠ j of (D_S − D_T)², / max(1, #pairs).

    protos_s B×K×C_s, protos_t B×K×C_t (channel counts may differ), counts B×K (same labels for
    both networks). Pairs are selected by boolean indexing, never by multiplying with a mask.
    """
    pairs = present_pairs(counts)
    diff = prototype_distance(protos_s) - prototype_distance(protos_t).to(protos_s.dtype)
    return (diff[pairs] ** 2).sum() / pairs.sum().clamp_min(1)
