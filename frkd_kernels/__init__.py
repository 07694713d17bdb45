"""frkd_kernels: fused primitives for feature-refine knowledge distillation (``torch.ops.frkd.*``).

Importing the package registers the ops. Functional API (shapes in each docstring):
``prototype_pool``, ``class_distance_maps``, ``masked_feature_mse``, ``teacher_entropy``.
Backend selection: ``use_backend(name)`` > env ``FRKD_BACKEND`` > default (see ``_backend``).
"""
from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (loads the C++ ops before the schemas route to them)
from . import ops  # noqa: F401  (defines torch.ops.frkd.*)
from ._backend import BACKENDS, backends, can_serve, use_backend

__all__ = [
    "BACKENDS", "backends", "can_serve", "use_backend",
    "prototype_pool", "class_distance_maps", "masked_feature_mse", "teacher_entropy",
]


def prototype_pool(feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """Per-image class means of a feature map.

    feat: B×C×H×W float; labels: B×H×W uint8/int32/int64 (255 or any value outside [0, K) ignored).
    Returns (protos B×K×C, counts B×K), float32 (float64 for float64 feat); protos are 0 for absent
    classes. Differentiable w.r.t. feat.
    """
    return torch.ops.frkd.prototype_pool(feat, labels, num_classes, ignore_index)


def class_distance_maps(feat, labels, protos, counts, ignore_index: int = 255, eps: float = 1e-8):
    """Cosine of each pixel to its own class prototype and to the nearest other present class.

    feat B×C×H×W, labels B×H×W, protos B×K×C, counts B×K (from ``prototype_pool``).
    Returns (intra B×H×W: 1 on ignored pixels, inter B×H×W: -1 where no other class is present),
    float32. Differentiable w.r.t. feat and protos.
    """
    return torch.ops.frkd.class_distance_maps(feat, labels, protos, counts, ignore_index, eps)


def masked_feature_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor):
    """Σ_{b,p} weight[b,p]·Σ_c (student − teacher)² / C as a float32 scalar.

    student, teacher B×C×H×W (dtypes may differ), weight B×H×W. Differentiable w.r.t. both features.
    """
    return torch.ops.frkd.masked_feature_mse(student, teacher, weight)


def teacher_entropy(logits: torch.Tensor, temperature: float = 1.0):
    """Normalised softmax entropy and arg-max of teacher logits B×K×H×W.

    Returns (entropy B×H×W float32 in [0, 1], pred B×H×W int64). Not differentiable.
    """
    return torch.ops.frkd.teacher_entropy(logits, temperature)
