"""Backend functions over the compiled private ops ``frkd::_cpu_*`` / ``frkd::_cuda_*``.

Same functions and signatures as ``reference.py``. Outputs are allocated here (``torch.empty*``)
and written by the kernels as out-arguments; the kernels read features of any float dtype and
strides themselves, while small operands (prototypes, counts, weights, upstream gradients) are
converted here to the statistics dtype (float32, or float64 when an input is float64).
"""
from __future__ import annotations

import torch

from . import _extension
from .reference import stat_dtype

OP_NAMES = ("prototype_pool", "prototype_pool_backward", "class_distance_maps", "class_distance_maps_backward",
            "masked_feature_mse", "masked_feature_mse_backward", "teacher_entropy")


def _as_stat(t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return t.to(dt).contiguous()


def _into(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``result`` with ``like``'s dtype and layout (itself when they already agree)."""
    if result.dtype == like.dtype and result.stride() == like.stride():
        return result
    out = torch.empty_like(like)
    out.copy_(result)
    return out


class CompiledOps:
    """The backend functions of one compiled backend.

    prefix: private op prefix ("_cpu_"); dispatch_key: "CPU" or "CUDA"; deterministic_flag: the
    class-sum ops take a ``deterministic`` argument (``torch.are_deterministic_algorithms_enabled()``).
    """

    def __init__(self, name: str, prefix: str, dispatch_key: str, deterministic_flag: bool):
        self.name, self.prefix, self.dispatch_key = name, prefix, dispatch_key
        self.deterministic_flag = deterministic_flag
        self.library = None  # the op namespace; None means torch.ops.frkd (an emulation may swap it)
        self._status: tuple[bool, str] | None = None  # fixed once the extension has loaded

    def _op(self, name: str):
        return getattr(self.library or torch.ops.frkd, self.prefix + name)

    def _deterministic(self) -> tuple[bool, ...]:
        return (torch.are_deterministic_algorithms_enabled(),) if self.deterministic_flag else ()

    def status(self) -> tuple[bool, str]:
        """(live, reason), computed on the first call: every op call resolves its backend through it."""
        if self._status is None:
            self._status = self._compute_status()
        return self._status

    def _compute_status(self) -> tuple[bool, str]:
        if not _extension.loaded():
            return False, _extension.reason()
        if not hasattr(torch.ops.frkd, self.prefix + OP_NAMES[0]):
            return False, (f"frkd_kernels._C was built without the {self.name} kernels"
                           + (" (torch is not a CUDA build, nvcc was missing or FRKD_SKIP_CUDA_BUILD=1)"
                              if self.dispatch_key == "CUDA" else ""))
        missing = [self.prefix + op for op in OP_NAMES
                   if not torch._C._dispatch_has_kernel_for_dispatch_key(f"frkd::{self.prefix}{op}", self.dispatch_key)]
        if missing:
            return False, f"frkd_kernels._C has no {self.dispatch_key} kernel for {', '.join(missing)} (rebuild it)"
        return True, "C++ extension" if self.dispatch_key == "CPU" else "CUDA C++ extension"

    def serves(self, device: torch.device) -> tuple[bool, str]:
        if device.type != self.dispatch_key.lower():
            return False, f"the {self.name} backend serves {self.dispatch_key.lower()} tensors only, got {device.type}"
        return True, ""

    def prototype_pool(self, feat, labels, num_classes: int, ignore_index: int):
        B, C = feat.shape[:2]
        dt = stat_dtype(feat)
        protos = feat.new_empty(B, num_classes, C, dtype=dt)
        counts = feat.new_empty(B, num_classes, dtype=dt)
        self._op("prototype_pool")(feat, labels, ignore_index, *self._deterministic(), protos, counts)
        return protos, counts

    def prototype_pool_backward(self, grad_protos, labels, counts, feat, ignore_index: int):
        dt = stat_dtype(counts, feat)
        grad_feat = torch.empty_like(feat)
        self._op("prototype_pool_backward")(_as_stat(grad_protos, dt), labels, _as_stat(counts, dt), ignore_index,
                                            grad_feat)
        return grad_feat

    def class_distance_maps(self, feat, labels, protos, counts, ignore_index: int, eps: float):
        B, _, H, W = feat.shape
        dt = stat_dtype(feat, protos)
        intra = feat.new_empty(B, H, W, dtype=dt)
        inter = feat.new_empty(B, H, W, dtype=dt)
        inter_class = feat.new_empty(B, H, W, dtype=torch.int32)
        self._op("class_distance_maps")(feat, labels, _as_stat(protos, dt), _as_stat(counts, dt), ignore_index, eps,
                                        intra, inter, inter_class)
        return intra, inter, inter_class

    def class_distance_maps_backward(self, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                     ignore_index: int, eps: float, need_feat: bool, need_protos: bool):
        dt = stat_dtype(feat, protos)
        grad_feat = torch.empty_like(feat) if need_feat else feat.new_empty(0)
        grad_protos = feat.new_empty(protos.shape, dtype=dt) if need_protos else protos.new_empty(0)
        self._op("class_distance_maps_backward")(
            _as_stat(grad_intra, dt), _as_stat(grad_inter, dt), feat, labels, _as_stat(protos, dt),
            inter_class.to(torch.int32).contiguous(), ignore_index, eps, need_feat, need_protos,
            *self._deterministic(), grad_feat, grad_protos)
        return grad_feat, _into(grad_protos, protos) if need_protos else grad_protos

    def masked_feature_mse(self, student, teacher, weight):
        dt = stat_dtype(student, teacher, weight)
        loss = student.new_empty((), dtype=dt)
        self._op("masked_feature_mse")(student, teacher, _as_stat(weight, dt), loss)
        return loss

    def masked_feature_mse_backward(self, grad_loss, student, teacher, weight, need_student: bool,
                                    need_teacher: bool):
        dt = stat_dtype(student, teacher, weight)
        grad_student = torch.empty_like(student) if need_student else student.new_empty(0)
        grad_teacher = torch.empty_like(teacher) if need_teacher else teacher.new_empty(0)
        self._op("masked_feature_mse_backward")(
            _as_stat(grad_loss, dt).reshape(()), student, teacher, _as_stat(weight, dt), need_student, need_teacher,
            grad_student, grad_teacher)
        return grad_student, grad_teacher

    def teacher_entropy(self, logits, temperature: float):
        B, _, H, W = logits.shape
        entropy = logits.new_empty(B, H, W, dtype=stat_dtype(logits))
        pred = logits.new_empty(B, H, W, dtype=torch.int64)
        self._op("teacher_entropy")(logits, temperature, entropy, pred)
        return entropy, pred

    def export(self, namespace: dict) -> None:
        """Bind status, serves and every backend function as module-level names of ``namespace``."""
        for name in ("status", "serves") + OP_NAMES:
            namespace[name] = getattr(self, name)
