"""CIRKD-style IFV term: a Python loop over classes with full-size masks (the peer to beat).

Written from the description in docs (anchors.md A.1, frkd_method.md §3(c)), not from CIRKD's
code: for every class k it builds a B×C×H×W float mask, pools per-image prototypes as masked
sum / (count + 1e-6), replaces each pixel's centre by its class prototype (ignored pixels keep
their own feature, so their cosine is 1), takes the cosine map over C and the MSE between the
student's and the teacher's maps over all B·H·W pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def centre_cosine_map(feat: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """feat B×C×H×W, labels B×H×W -> cosine of each pixel to its class centre, B×H×W."""
    B, C, H, W = feat.shape
    wide_labels = labels[:, None].expand(B, C, H, W)
    centres = feat
    for k in range(num_classes):
        mask = (wide_labels == k).to(feat.dtype)
        proto = (feat * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + 1e-6)
        centres = mask * proto[:, :, None, None] + (1 - mask) * centres
    return F.cosine_similarity(feat, centres, dim=1)


def ifv_loss(f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """f_s B×C_s×H×W, f_t B×C_t×H×W, labels B×H×W -> mean over B·H·W of (map_S − map_T)²."""
    with torch.no_grad():
        map_t = centre_cosine_map(f_t, labels, num_classes)
    return F.mse_loss(centre_cosine_map(f_s, labels, num_classes), map_t)
