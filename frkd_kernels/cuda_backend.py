"""The ``cuda`` backend: CUDA C++ kernels (``csrc/cuda``) behind the private ops ``frkd::_cuda_*``.

Same functions and signatures as ``reference.py``. Outputs are allocated here (``torch.empty*``)
and written by the kernels as out-arguments; the kernels read features of any float dtype and
strides themselves, while small operands (prototypes, counts, weights, upstream gradients) are
converted here to the statistics dtype (float32, or float64 when an input is float64). Class sums
use atomics unless ``torch.are_deterministic_algorithms_enabled()``, which selects an atomic-free
path with a fixed reduction order.
"""
from __future__ import annotations

import torch

from . import _extension
from .reference import stat_dtype

_OPS = ("_cuda_prototype_pool", "_cuda_prototype_pool_backward", "_cuda_class_distance_maps",
        "_cuda_class_distance_maps_backward", "_cuda_masked_feature_mse", "_cuda_masked_feature_mse_backward",
        "_cuda_teacher_entropy")


def status() -> tuple[bool, str]:
    if not _extension.loaded():
        return False, _extension.reason()
    if not hasattr(torch.ops.frkd, "_cuda_prototype_pool"):
        return False, ("frkd_kernels._C was built without CUDA kernels (torch is not a CUDA build, nvcc was missing "
                       "or FRKD_SKIP_CUDA_BUILD=1)")
    missing = [op for op in _OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"frkd::{op}", "CUDA")]
    if missing:
        return False, f"frkd_kernels._C has no CUDA kernel for {', '.join(missing)} (rebuild the extension)"
    return True, "CUDA C++ extension"


def serves(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"the cuda backend serves cuda tensors only, got {device.type}"
    return True, ""


def _deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def _as_stat(t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return t.to(dt).contiguous()


def _into(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``result`` with ``like``'s dtype and layout (itself when they already agree)."""
    if result.dtype == like.dtype and result.stride() == like.stride():
        return result
    out = torch.empty_like(like)
    out.copy_(result)
    return out


# --- prototype_pool -------------------------------------------------------------------------

def prototype_pool(feat, labels, num_classes: int, ignore_index: int):
    """feat B×C×H×W, labels B×H×W -> (protos B×K×C, counts B×K)."""
    B, C = feat.shape[:2]
    dt = stat_dtype(feat)
    protos = feat.new_empty(B, num_classes, C, dtype=dt)
    counts = feat.new_empty(B, num_classes, dtype=dt)
    torch.ops.frkd._cuda_prototype_pool(feat, labels, ignore_index, _deterministic(), protos, counts)
    return protos, counts


def prototype_pool_backward(grad_protos, labels, counts, feat, ignore_index: int):
    """grad_protos B×K×C -> grad_feat like feat."""
    dt = stat_dtype(counts, feat)
    grad_feat = torch.empty_like(feat)
    torch.ops.frkd._cuda_prototype_pool_backward(_as_stat(grad_protos, dt), labels, _as_stat(counts, dt),
                                                 ignore_index, grad_feat)
    return grad_feat


# --- class_distance_maps --------------------------------------------------------------------

def class_distance_maps(feat, labels, protos, counts, ignore_index: int, eps: float):
    """-> (intra B×H×W, inter B×H×W, inter_class B×H×W int32; -1 where inter has no class)."""
    B, _, H, W = feat.shape
    dt = stat_dtype(feat, protos)
    intra = feat.new_empty(B, H, W, dtype=dt)
    inter = feat.new_empty(B, H, W, dtype=dt)
    inter_class = feat.new_empty(B, H, W, dtype=torch.int32)
    torch.ops.frkd._cuda_class_distance_maps(feat, labels, _as_stat(protos, dt), _as_stat(counts, dt), ignore_index,
                                             eps, intra, inter, inter_class)
    return intra, inter, inter_class


def class_distance_maps_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                 ignore_index: int, eps: float, need_feat: bool, need_protos: bool):
    """-> (grad_feat like feat or empty, grad_protos like protos or empty)."""
    dt = stat_dtype(feat, protos)
    grad_feat = torch.empty_like(feat) if need_feat else feat.new_empty(0)
    grad_protos = feat.new_empty(protos.shape, dtype=dt) if need_protos else protos.new_empty(0)
    torch.ops.frkd._cuda_class_distance_maps_backward(
        _as_stat(grad_intra, dt), _as_stat(grad_inter, dt), feat, labels, _as_stat(protos, dt),
        inter_class.to(torch.int32).contiguous(), ignore_index, eps, need_feat, need_protos, _deterministic(),
        grad_feat, grad_protos)
    return grad_feat, _into(grad_protos, protos) if need_protos else grad_protos


# --- masked_feature_mse ---------------------------------------------------------------------

def masked_feature_mse(student, teacher, weight):
    """student, teacher B×C×H×W, weight B×H×W -> Σ_{b,p} w·Σ_c (s - t)^2 / C (0-dim)."""
    dt = stat_dtype(student, teacher, weight)
    loss = student.new_empty((), dtype=dt)
    torch.ops.frkd._cuda_masked_feature_mse(student, teacher, _as_stat(weight, dt), loss)
    return loss


def masked_feature_mse_backward(grad_loss, student, teacher, weight, need_student: bool, need_teacher: bool):
    """-> (grad_student like student or empty, grad_teacher like teacher or empty)."""
    dt = stat_dtype(student, teacher, weight)
    grad_student = torch.empty_like(student) if need_student else student.new_empty(0)
    grad_teacher = torch.empty_like(teacher) if need_teacher else teacher.new_empty(0)
    torch.ops.frkd._cuda_masked_feature_mse_backward(
        _as_stat(grad_loss, dt).reshape(()), student, teacher, _as_stat(weight, dt), need_student, need_teacher,
        grad_student, grad_teacher)
    return grad_student, grad_teacher


# --- teacher_entropy ------------------------------------------------------------------------

def teacher_entropy(logits, temperature: float):
    """logits B×K×H×W -> (normalised entropy B×H×W in [0, 1], pred B×H×W int64)."""
    B, _, H, W = logits.shape
    entropy = logits.new_empty(B, H, W, dtype=stat_dtype(logits))
    pred = logits.new_empty(B, H, W, dtype=torch.int64)
    torch.ops.frkd._cuda_teacher_entropy(logits, temperature, entropy, pred)
    return entropy, pred
