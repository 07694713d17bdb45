"""Baseline distillation losses with CIRKD semantics: none, kd, cwd, fitnet, ifvd, idd.

Each ``forward(student: SegOutput, teacher: SegOutput, labels B×Hin×Win int64)`` returns its
terms already multiplied by their lambda. Teacher tensors are used detached.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import frkd_kernels

from .base import DistillationLoss, check_same_grid, valid_pixels
from .logits import channel_wise_kd, pixel_kd
from .relations import inter_term, intra_term


class NoDistillation(DistillationLoss):
    """``none``: the student trains on CE alone."""

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        return {}


class PixelKD(DistillationLoss):
    """``kd``: λ_kd·T²·mean over B·H·W pixels of KL(P_T ‖ P_S) (CIRKD ``CriterionKD``)."""

    def __init__(self, *, lambda_kd: float = 1.0, kd_temperature: float = 1.0, **common):
        super().__init__(**common)
        self.lambda_kd, self.kd_temperature = lambda_kd, kd_temperature

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_logits=student.logits, teacher_logits=teacher.logits)
        return {"kd": self.lambda_kd * pixel_kd(student.logits, teacher.logits, self.kd_temperature)}


class ChannelWiseKD(DistillationLoss):
    """``cwd``: λ_cwd·CWD on logits, T = 4 (CIRKD ``CriterionCWD``, norm 'channel', KL)."""

    def __init__(self, *, lambda_cwd: float = 3.0, cwd_temperature: float = 4.0, **common):
        super().__init__(**common)
        self.lambda_cwd, self.cwd_temperature = lambda_cwd, cwd_temperature

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_logits=student.logits, teacher_logits=teacher.logits)
        return {"cwd": self.lambda_cwd * channel_wise_kd(student.logits, teacher.logits, self.cwd_temperature)}


class FitNet(DistillationLoss):
    """``fitnet``: λ_fitnet·mean over all B·C_t·H·W elements of (φ(F_S) − F_T)², φ a 1×1 conv."""

    def __init__(self, *, lambda_fitnet: float = 1.0, **common):
        super().__init__(**common)
        self.lambda_fitnet = lambda_fitnet
        self.phi = nn.Conv2d(common["student_channels"], common["teacher_channels"], 1, bias=False)

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        H, W = check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        f_t = teacher.feat.detach()
        weight = torch.full((f_t.shape[0], H, W), 1.0 / f_t[:, 0].numel(), device=f_t.device)
        return {"fitnet": self.lambda_fitnet * frkd_kernels.masked_feature_mse(self.phi(student.feat), f_t, weight)}


class IFVD(DistillationLoss):
    """``ifvd``: λ_intra·MSE over all B·H·W pixels of the intra-class cosine maps (CIRKD ``CriterionIFV``)."""

    def __init__(self, *, lambda_intra: float = 20.0, **common):
        super().__init__(**common)
        self.lambda_intra = lambda_intra

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        y = self.labels_at(labels, student.feat)
        intra_s = self._intra_map(student.feat, y)
        with torch.no_grad():
            intra_t = self._intra_map(teacher.feat.detach(), y)
        valid = valid_pixels(y, self.num_classes, self.ignore_index)
        return {"intra": self.lambda_intra * intra_term(intra_s, intra_t, valid, cirkd_mean=True)}

    def _intra_map(self, feat, y):
        protos, counts = frkd_kernels.prototype_pool(feat, y, self.num_classes, self.ignore_index)
        return frkd_kernels.class_distance_maps(feat, y, protos, counts, self.ignore_index)[0]


class IDD(DistillationLoss):
    """``idd``: λ_inter·mean over present ordered class pairs of (D_S − D_T)², D = 1 − cos(protos)."""

    def __init__(self, *, lambda_inter: float = 20.0, **common):
        super().__init__(**common)
        self.lambda_inter = lambda_inter

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        y = self.labels_at(labels, student.feat)
        protos_s, counts = frkd_kernels.prototype_pool(student.feat, y, self.num_classes, self.ignore_index)
        with torch.no_grad():
            protos_t, _ = frkd_kernels.prototype_pool(teacher.feat.detach(), y, self.num_classes, self.ignore_index)
        return {"inter": self.lambda_inter * inter_term(protos_s, protos_t, counts)}
