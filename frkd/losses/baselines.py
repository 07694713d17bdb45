"""Single distillation terms with CIRKD semantics: pixel KD, CWD on logits and on features, FitNet,
IFV and IDD. Each is one component of a recipe (``frkd.losses.recipes``).

Each ``forward(student: SegOutput, teacher: SegOutput, labels B×Hin×Win int64)`` returns its
term already multiplied by its λ. Teacher tensors are used detached.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import frkd_kernels

from .base import DistillationLoss, check_same_grid, valid_pixels
from .logits import channel_wise_kd, pixel_kd
from .relations import inter_term, intra_term


class PixelKD(DistillationLoss):
    """``kd``: λ_kd·T²·mean over B·H·W pixels of KL(P_T ‖ P_S) (CIRKD ``CriterionKD``)."""

    def __init__(self, *, lambda_kd: float, kd_temperature: float, **common):
        super().__init__(**common)
        self.lambda_kd, self.kd_temperature = lambda_kd, kd_temperature

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_logits=student.logits, teacher_logits=teacher.logits)
        return {"kd": self.lambda_kd * pixel_kd(student.logits, teacher.logits, self.kd_temperature)}


class LogitCWD(DistillationLoss):
    """``cwd_logit``: λ·CWD on the logits at T (CIRKD ``CriterionCWD``, norm 'channel', KL)."""

    def __init__(self, *, lambda_cwd_logit: float, cwd_temperature: float, **common):
        super().__init__(**common)
        self.lambda_cwd_logit, self.cwd_temperature = lambda_cwd_logit, cwd_temperature

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_logits=student.logits, teacher_logits=teacher.logits)
        return {"cwd_logit": self.lambda_cwd_logit
                * channel_wise_kd(student.logits, teacher.logits, self.cwd_temperature)}


class FeatureCWD(DistillationLoss):
    """``cwd_fea``: λ·CWD between conv(F_S) and F_T at T, divided by B·C_s (CIRKD ``CriterionCWD`` on
    features: the 1×1 conv C_s→C_t, without bias, exists only when C_s ≠ C_t)."""

    def __init__(self, *, lambda_cwd_fea: float, cwd_temperature: float, **common):
        super().__init__(**common)
        self.lambda_cwd_fea, self.cwd_temperature = lambda_cwd_fea, cwd_temperature
        self.student_channels = common["student_channels"]
        if common["student_channels"] != common["teacher_channels"]:
            self.align = nn.Conv2d(common["student_channels"], common["teacher_channels"], 1, bias=False)

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        f_s = self.align(student.feat) if hasattr(self, "align") else student.feat
        return {"cwd_fea": self.lambda_cwd_fea * channel_wise_kd(f_s, teacher.feat, self.cwd_temperature,
                                                                 channels=self.student_channels)}


class FitNet(DistillationLoss):
    """``fitnet``: λ_fitnet·mean over all B·C_t·H·W elements of (φ(F_S) − F_T)², φ a 1×1 conv."""

    def __init__(self, *, lambda_fitnet: float, **common):
        super().__init__(**common)
        self.lambda_fitnet = lambda_fitnet
        self.phi = nn.Conv2d(common["student_channels"], common["teacher_channels"], 1, bias=False)

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        H, W = check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        f_t = teacher.feat.detach()
        weight = torch.full((f_t.shape[0], H, W), 1.0 / f_t[:, 0].numel(), device=f_t.device)
        return {"fitnet": self.lambda_fitnet * frkd_kernels.masked_feature_mse(self.phi(student.feat), f_t, weight)}


class IFV(DistillationLoss):
    """``ifv``: λ_ifv·MSE over all B·H·W pixels of the intra-class cosine maps of the raw features
    (CIRKD ``CriterionIFV``)."""

    def __init__(self, *, lambda_ifv: float, **common):
        super().__init__(**common)
        self.lambda_ifv = lambda_ifv

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        y = self.labels_at(labels, student.feat)
        intra_s = self._intra_map(student.feat, y)
        with torch.no_grad():
            intra_t = self._intra_map(teacher.feat.detach(), y)
        valid = valid_pixels(y, self.num_classes, self.ignore_index)
        return {"ifv": self.lambda_ifv * intra_term(intra_s, intra_t, valid, cirkd_mean=True)}

    def _intra_map(self, feat, y):
        protos, counts = frkd_kernels.prototype_pool(feat, y, self.num_classes, self.ignore_index)
        return frkd_kernels.class_distance_maps(feat, y, protos, counts, self.ignore_index)[0]


class IDD(DistillationLoss):
    """``idd``: λ_idd·mean over present ordered class pairs of (D_S − D_T)², D = 1 − cos(protos),
    on the raw features."""

    def __init__(self, *, lambda_idd: float, **common):
        super().__init__(**common)
        self.lambda_idd = lambda_idd

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        check_same_grid(student_feat=student.feat, teacher_feat=teacher.feat)
        y = self.labels_at(labels, student.feat)
        protos_s, counts = frkd_kernels.prototype_pool(student.feat, y, self.num_classes, self.ignore_index)
        with torch.no_grad():
            protos_t, _ = frkd_kernels.prototype_pool(teacher.feat.detach(), y, self.num_classes, self.ignore_index)
        return {"idd": self.lambda_idd * inter_term(protos_s, protos_t, counts)}
