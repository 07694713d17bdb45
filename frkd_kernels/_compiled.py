"""``CompiledBackend``: a backend over the compiled private kernel ops ``<namespace>::_cpu_*`` or
``_cuda_*`` (schemas from each op slice's ``KERNELS``, kernels registered by ``frkd_kernels._C``).

Each op slice's ``compiled``/``compiled_backward`` allocate the outputs (``torch.empty*``) and call
``run``; the kernels read features of any float dtype and strides themselves, while small operands
(prototypes, counts, weights, upstream gradients) arrive in the statistics dtype (``as_stat``).
"""
from __future__ import annotations

import torch

from . import _extension, _library
from .ops import class_distance_maps as _maps
from .ops import masked_feature_mse as _mse
from .ops import prototype_pool as _pool
from .ops import relation_kl as _relation
from .ops import teacher_entropy as _entropy


class CompiledBackend:
    """The ``cpu`` or ``cuda`` backend.

    name: "cpu" or "cuda" (the kernels' prefix and dispatch key follow from it); kernels: the op
    namespace holding the kernels (``torch.ops.frkd``; a test harness passes its own, e.g. the
    CUDA host emulation's). In the ``cuda`` backend the class-sum kernels take ``deterministic``
    (``torch.are_deterministic_algorithms_enabled()``).
    """

    def __init__(self, name: str, kernels=None):
        self.name = name
        self.prefix = _library.KERNEL_PREFIXES[name]
        self.dispatch_key = name.upper()
        self.kernels = kernels if kernels is not None else torch.ops.frkd
        self._status: tuple[bool, str] | None = None  # fixed once the extension has loaded

    # --- plumbing the op slices use ---

    def run(self, kernel: str, inputs: tuple, outputs: tuple) -> None:
        """Call the private kernel op ``kernel`` on ``inputs`` (+ ``deterministic`` where its schema
        has the slot) and ``outputs`` (written in place)."""
        flag = ((torch.are_deterministic_algorithms_enabled(),)
                if self.name == "cuda" and "{deterministic}" in _library.KERNEL_SCHEMAS[kernel] else ())
        getattr(self.kernels, self.prefix + kernel)(*inputs, *flag, *outputs)

    @staticmethod
    def as_stat(t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        return t.to(dt).contiguous()

    @staticmethod
    def into(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``result`` with ``like``'s dtype and layout (itself when they already agree)."""
        if result.dtype == like.dtype and result.stride() == like.stride():
            return result
        out = torch.empty_like(like)
        out.copy_(result)
        return out

    # --- the Backend protocol ---

    def status(self) -> tuple[bool, str]:
        """(live, reason), computed on the first call: every op call resolves its backend through it."""
        if self._status is None:
            self._status = self._compute_status()
        return self._status

    def _compute_status(self) -> tuple[bool, str]:
        if not _extension.loaded():
            return False, _extension.reason()
        names = [self.prefix + op for op in _library.KERNEL_SCHEMAS]
        missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(
            f"frkd::{n}", self.dispatch_key)]
        if len(missing) == len(names):
            return False, (f"frkd_kernels._C was built without the {self.name} kernels"
                           + (" (torch is not a CUDA build, nvcc was missing or FRKD_SKIP_CUDA_BUILD=1)"
                              if self.name == "cuda" else ""))
        if missing:
            return False, f"frkd_kernels._C has no {self.dispatch_key} kernel for {', '.join(missing)} (rebuild it)"
        return True, "C++ extension" if self.name == "cpu" else "CUDA C++ extension"

    def serves(self, device: torch.device) -> tuple[bool, str]:
        if device.type != self.name:
            return False, f"the {self.name} backend serves {self.name} tensors only, got {device.type}"
        return True, ""

    def prototype_pool(self, feat, labels, num_classes, ignore_index):
        return _pool.compiled(self, feat, labels, num_classes, ignore_index)

    def prototype_pool_backward(self, grad_protos, labels, counts, feat, ignore_index):
        return _pool.compiled_backward(self, grad_protos, labels, counts, feat, ignore_index)

    def class_distance_maps(self, feat, labels, protos, counts, ignore_index, eps):
        return _maps.compiled(self, feat, labels, protos, counts, ignore_index, eps)

    def class_distance_maps_backward(self, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                     ignore_index, eps, need_feat, need_protos):
        return _maps.compiled_backward(self, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                       ignore_index, eps, need_feat, need_protos)

    def masked_feature_mse(self, student, teacher, weight):
        return _mse.compiled(self, student, teacher, weight)

    def masked_feature_mse_backward(self, grad_loss, student, teacher, weight, need_student, need_teacher):
        return _mse.compiled_backward(self, grad_loss, student, teacher, weight, need_student, need_teacher)

    def teacher_entropy(self, logits, temperature):
        return _entropy.compiled(self, logits, temperature)

    def relation_kl(self, query_s, query_t, key_s, key_t, groups, temperature):
        return _relation.compiled(self, query_s, query_t, key_s, key_t, groups, temperature)

    def relation_kl_backward(self, scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                             need_key):
        return _relation.compiled_backward(self, scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups,
                                           temperature, need_key)
