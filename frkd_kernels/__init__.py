"""frkd_kernels: fused primitives for feature-refine knowledge distillation (``torch.ops.frkd.*``).

Importing the package registers the ops, one module per op in ``frkd_kernels.ops`` (contract:
docs/ops.md). Functional API (shapes in each docstring): ``prototype_pool``,
``class_distance_maps``, ``masked_feature_mse``, ``teacher_entropy``, ``relation_kl``.
Backend selection: ``use_backend(name)`` > env ``FRKD_BACKEND`` > default (see ``_backend``).
"""
from __future__ import annotations

from . import _extension  # noqa: F401  (loads the C++ kernels)
from ._backend import BACKENDS, backends, can_serve, use_backend
from .ops.class_distance_maps import class_distance_maps
from .ops.masked_feature_mse import masked_feature_mse
from .ops.prototype_pool import prototype_pool
from .ops.relation_kl import relation_kl
from .ops.teacher_entropy import teacher_entropy

__all__ = [
    "BACKENDS", "backends", "can_serve", "use_backend",
    "prototype_pool", "class_distance_maps", "masked_feature_mse", "teacher_entropy", "relation_kl",
]
