"""Structural terms of CIRKD's comparison table, as CIRKD's ``train_kd.py`` computes them: SKD's
pairwise similarity, attention transfer and DSD's pixel and category similarities.

Notation: f_s B×C_s×H×W and f_t B×C_t×H×W features (stride 8), z logits B×K×H×W, a aux logits;
normalise(·) is L2 over the named dimension (eps 1e-12, as ``F.normalize``). Teacher tensors are
used detached. Each module returns its term(s) × λ.

- ``skd`` (CIRKD ``losses/skd.py``): 2×2 max-pool (ceil), normalise over channels, per image the
  N×N pixel similarities fᵀf; mean over B·N·N of (S_s − S_t)².
- ``at`` (``losses/at.py``): attention a(f) = normalise over the H·W positions of mean_c f²;
  mean over B·H·W of (a(f_s) − a(f_t))².
- ``psd`` (``losses/dsd.py`` CriterionPSD) on the maps [aux, feat, logits]: attention a(·) of each,
  residual r_nm = normalise(a_m − a_n) for n < m (3 pairs); mean over the pairs of the mean over
  B·H·W of (normalise(r_s) − normalise(r_t))².
- ``csd`` (CriterionCSD) on the logits: 2×2 average pool (ceil), softmax over positions per class at
  τ = 4, per image the K×K class similarities P·Pᵀ; mean over B·K·K of (G_s − G_t)².
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillationLoss, check_same_grid

CSD_TEMPERATURE = 4.0  # CIRKD's CriterionCSD.tau


def pairwise_similarity_kd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """SKD's pairwise term: f_s B×C_s×H×W, f_t B×C_t×H×W -> scalar (module doc)."""
    def similarities(f):
        f = F.normalize(F.max_pool2d(f, 2, 2, ceil_mode=True), p=2, dim=1).flatten(2)  # B×C×N
        return f.transpose(1, 2) @ f  # B×N×N
    return (similarities(f_s) - similarities(f_t.detach())).pow(2).mean()


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """a(f) = normalise over positions of mean_c f²: B×C×H×W -> B×H·W."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def attention_transfer(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """AT: mean over B·H·W of (a(f_s) − a(f_t))² -> scalar."""
    return (attention_map(f_s) - attention_map(f_t.detach())).pow(2).mean()


def pixel_similarity_kd(maps_s: list[torch.Tensor], maps_t: list[torch.Tensor]) -> torch.Tensor:
    """DSD's PSD over the residual attentions of every ordered pair n < m of the maps (module doc)."""
    def residuals(maps):
        a = [attention_map(m) for m in maps]
        return [F.normalize(a[m] - a[n], dim=1) for n in range(len(a)) for m in range(n + 1, len(a))]
    pairs = list(zip(residuals(maps_s), residuals([m.detach() for m in maps_t])))
    return sum((F.normalize(r_s, dim=1) - F.normalize(r_t, dim=1)).pow(2).mean() for r_s, r_t in pairs) / len(pairs)


def category_similarity_kd(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """DSD's CSD on the logits z B×K×H×W (module doc) -> scalar."""
    def similarities(z):
        p = F.softmax(F.avg_pool2d(z, 2, 2, ceil_mode=True).flatten(2) / CSD_TEMPERATURE, dim=-1)  # B×K×N
        return p @ p.transpose(1, 2)  # B×K×K
    return (similarities(z_s) - similarities(z_t.detach())).pow(2).mean()


class SKD(DistillationLoss):
    """``skd``: λ_skd·``pairwise_similarity_kd`` of the features."""

    def __init__(self, *, lambda_skd: float, **common):
        super().__init__(**common)
        self.lambda_skd = lambda_skd

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        return {"skd": self.lambda_skd * pairwise_similarity_kd(student.feat, teacher.feat)}


class AT(DistillationLoss):
    """``at``: λ_at·``attention_transfer`` of the features."""

    def __init__(self, *, lambda_at: float, **common):
        super().__init__(**common)
        self.lambda_at = lambda_at

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        return {"at": self.lambda_at * attention_transfer(student.feat, teacher.feat)}


class DSD(DistillationLoss):
    """``psd`` and ``csd``: λ_psd·PSD over [aux logits, feature, logits] and λ_csd·CSD of the logits;
    both networks need their auxiliary head (CIRKD's ``s_outputs[-2]``)."""

    def __init__(self, *, lambda_psd: float, lambda_csd: float, **common):
        super().__init__(**common)
        self.lambda_psd, self.lambda_csd = lambda_psd, lambda_csd

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        for role, out in (("student", student), ("teacher", teacher)):
            if out.aux is None:
                raise ValueError(f"DSD: the {role} has no auxiliary head, but PSD uses its aux logits (CIRKD's "
                                 "s_outputs[-2]); train with --aux")
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat, student_logits=student.logits,
                        teacher_logits=teacher.logits, student_aux=student.aux, teacher_aux=teacher.aux)
        psd = pixel_similarity_kd([student.aux, student.feat, student.logits],
                                  [teacher.aux, teacher.feat, teacher.logits])
        return {"psd": self.lambda_psd * psd,
                "csd": self.lambda_csd * category_similarity_kd(student.logits, teacher.logits)}
