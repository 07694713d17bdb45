"""The FRKD loss (docs/method.md): pseudo-knowledge filter, prototypes, intra/inter terms, coordinate
mask, one weighted feature MSE, and fg-weighted pixel KD.

Shapes: f_s = φ(F_S) and f_t are B×C_t×H×W, z_t/z_s B×K×H×W, y B×H×W labels at the feature size.
The ops come from ``frkd_kernels`` or from an ``ops`` namespace with the same functional API.
Teacher-only quantities (entropy, masks, teacher prototypes and maps) are computed under no_grad.
"""
from __future__ import annotations

from types import ModuleType, SimpleNamespace

import torch
import torch.nn as nn

import frkd_kernels

from .base import DistillationLoss, check_same_grid, valid_pixels
from .logits import pixel_kd
from .relations import inter_term, intra_term

TERMS = ("feat", "intra", "inter")


def pseudo_knowledge_filter(z_t, y, *, num_classes: int, ignore_index: int = 255, tau: float | None = None,
                            pseudo_filter: bool = True, fgbg: bool = True, ops=None):
    """Split pixels by the teacher's reliability (docs/method.md step 1). z_t B×K×H×W, y B×H×W.

    pseudo = valid ∧ pred ≠ y (dropped; none with ``pseudo_filter=False``);
    fg = valid ∧ ¬pseudo ∧ entropy ≤ τ_b (τ_b = mean entropy over the valid pixels of image b, or
    the fixed ``tau``); bg = ¬pseudo ∧ ¬fg.
    With ``fgbg=False`` there is no split: fg = ¬pseudo, bg = ∅.
    Returns (valid, fg, bg), B×H×W bool, without grad.
    """
    ops = frkd_kernels if ops is None else ops
    with torch.no_grad():
        valid = valid_pixels(y, num_classes, ignore_index)
        entropy, pred = ops.teacher_entropy(z_t.detach(), 1.0)
        pseudo = valid & (pred != y) if pseudo_filter else torch.zeros_like(valid)
        if not fgbg:
            return valid, ~pseudo, torch.zeros_like(valid)
        if tau is None:  # an image without valid pixels has no fg candidate, so its τ_b is moot
            n_valid = valid.flatten(1).sum(1).clamp_min(1)
            threshold = (torch.where(valid, entropy, 0.0).flatten(1).sum(1) / n_valid)[:, None, None]
        else:
            threshold = tau
        fg = valid & ~pseudo & (entropy <= threshold)
        return valid, fg, ~pseudo & ~fg


def share(mask: torch.Tensor) -> torch.Tensor:
    """mask B×H×W bool -> float32 mask / max(1, Σ mask)."""
    m = mask.to(torch.float32)
    return m / m.sum().clamp_min(1)


@torch.no_grad()
def feature_weight(valid, fg, bg, margin, *, alpha: float, beta: float, gamma: float, delta: float) -> torch.Tensor:
    """Step 6's per-pixel weight α·fg/N_fg + β·bg/N_bg + γ·coord/N_coord (B×H×W float32), with
    coord = valid ∧ fg ∧ (margin > δ), or valid ∧ fg when ``margin`` is None (no margin test);
    γ = 0 drops the coordinate part."""
    weight = alpha * share(fg) + beta * share(bg)
    if gamma != 0:
        coord = valid & fg if margin is None else valid & fg & (margin > delta)
        weight = weight + gamma * share(coord)
    return weight


def masked_terms(f_s, f_t, y, valid, fg, bg, *, num_classes: int, ignore_index: int = 255, alpha: float = 1.0,
                 beta: float = 0.25, gamma: float = 1.0, delta: float = 0.0, ifv_cirkd_mean: bool = False,
                 coord_mask: bool = True, wanted=TERMS, ops=None) -> dict[str, torch.Tensor]:
    """docs/method.md steps 2-6 given the filter's masks; computes only the ``wanted`` terms (unweighted).

    ``coord_mask=False`` drops the margin test: coord = valid ∧ fg.
    """
    unknown = set(wanted) - set(TERMS)
    if unknown:
        raise ValueError(f"masked_terms: wanted must be a subset of {TERMS}, got {sorted(unknown)}")
    ops = frkd_kernels if ops is None else ops
    f_t = f_t.detach()
    need_coord = "feat" in wanted and gamma != 0
    need_maps_t = "intra" in wanted or (need_coord and coord_mask)
    need_student = "intra" in wanted or "inter" in wanted
    with torch.no_grad():
        if need_maps_t or "inter" in wanted:
            protos_t, counts = ops.prototype_pool(f_t, y, num_classes, ignore_index)
        if need_maps_t:
            intra_t, inter_t = ops.class_distance_maps(f_t, y, protos_t, counts, ignore_index)
    if need_student:
        protos_s, counts_s = ops.prototype_pool(f_s, y, num_classes, ignore_index)
    terms = {}
    if "feat" in wanted:
        margin = intra_t - inter_t if need_coord and coord_mask else None
        weight = feature_weight(valid, fg, bg, margin, alpha=alpha, beta=beta, gamma=gamma, delta=delta)
        terms["feat"] = ops.masked_feature_mse(f_s, f_t, weight)
    if "intra" in wanted:
        intra_s, _ = ops.class_distance_maps(f_s, y, protos_s, counts_s, ignore_index)
        terms["intra"] = intra_term(intra_s, intra_t, valid, ifv_cirkd_mean)
    if "inter" in wanted:
        terms["inter"] = inter_term(protos_s, protos_t, counts)
    return terms


def feature_terms(f_s, f_t, z_t, y, *, num_classes: int, ignore_index: int = 255, alpha: float = 1.0,
                  beta: float = 0.25, gamma: float = 1.0, delta: float = 0.0, tau: float | None = None,
                  ifv_cirkd_mean: bool = False,
                  ops: ModuleType | SimpleNamespace | None = None) -> dict[str, torch.Tensor]:
    """Unweighted ``feat``, ``intra``, ``inter`` terms of docs/method.md steps 1-6.

    f_s = φ(F_S) B×C_t×H×W (grad flows), f_t B×C_t×H×W and z_t B×K×H×W teacher (no grad),
    y B×H×W labels at H×W. ``ops``: namespace with the functional API, default ``frkd_kernels``.
    """
    valid, fg, bg = pseudo_knowledge_filter(z_t, y, num_classes=num_classes, ignore_index=ignore_index,
                                            tau=tau, ops=ops)
    return masked_terms(f_s, f_t, y, valid, fg, bg, num_classes=num_classes, ignore_index=ignore_index,
                        alpha=alpha, beta=beta, gamma=gamma, delta=delta, ifv_cirkd_mean=ifv_cirkd_mean, ops=ops)


class FRKDLoss(DistillationLoss):
    """FRKD's terms: λ_feat·L_feat + λ_intra·L_intra + λ_inter·L_inter + λ_kd·L_kd(fg) (docs/method.md).

    Terms with λ = 0 are neither computed nor returned. φ (1×1 conv C_s -> C_t, no bias) maps the
    student feature for the feature, intra and inter terms. Ablations: ``no_pseudo_filter`` keeps
    pseudo-knowledge pixels, ``no_fgbg`` weights every kept pixel alike (fg = ¬pseudo, no entropy
    split), ``no_coord_mask`` drops the margin test (coord = valid ∧ fg).
    """

    def __init__(self, *, lambda_feat: float = 1.0, lambda_intra: float = 20.0, lambda_inter: float = 20.0,
                 lambda_kd: float = 1.0, kd_temperature: float = 1.0, frkd_alpha: float = 1.0, frkd_beta: float = 0.25,
                 frkd_gamma: float = 1.0, frkd_delta: float = 0.0, tau: float | None = None,
                 ifv_cirkd_mean: bool = False, no_pseudo_filter: bool = False, no_fgbg: bool = False,
                 no_coord_mask: bool = False, **common):
        super().__init__(**common)
        self.lambdas = {"feat": lambda_feat, "intra": lambda_intra, "inter": lambda_inter}
        self.lambda_kd, self.kd_temperature = lambda_kd, kd_temperature
        self.weights = dict(alpha=frkd_alpha, beta=frkd_beta, gamma=frkd_gamma, delta=frkd_delta)
        self.tau, self.ifv_cirkd_mean = tau, ifv_cirkd_mean
        self.pseudo_filter, self.fgbg, self.coord_mask = not no_pseudo_filter, not no_fgbg, not no_coord_mask
        self.wanted = tuple(name for name in TERMS if self.lambdas[name] != 0)
        if self.wanted:
            self.phi = nn.Conv2d(common["student_channels"], common["teacher_channels"], 1, bias=False)

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat,
                        student_logits=student.logits, teacher_logits=teacher.logits)
        out = {}
        if self.wanted or self.lambda_kd != 0:
            y = self.labels_at(labels, student.feat)
            valid, fg, bg = pseudo_knowledge_filter(
                teacher.logits, y, num_classes=self.num_classes, ignore_index=self.ignore_index, tau=self.tau,
                pseudo_filter=self.pseudo_filter, fgbg=self.fgbg)
        if self.wanted:
            terms = masked_terms(self.phi(student.feat), teacher.feat, y, valid, fg, bg,
                                 num_classes=self.num_classes, ignore_index=self.ignore_index,
                                 ifv_cirkd_mean=self.ifv_cirkd_mean, coord_mask=self.coord_mask,
                                 wanted=self.wanted, **self.weights)
            out.update({name: self.lambdas[name] * value for name, value in terms.items()})
        if self.lambda_kd != 0:
            out["kd"] = self.lambda_kd * pixel_kd(student.logits, teacher.logits, self.kd_temperature, weight=fg)
        return out
