"""The ``triton`` backend: Triton kernels for every frkd op (contract: docs/ops.md).

One module per op family; ``class_sum`` is the segmented per-class reduction that prototype_pool
and the prototype gradient of class_distance_maps share. Kernels take float32, float16 and
bfloat16 inputs of any strides (contiguous and channels_last without a copy) and accumulate in
float32; float64 is left to the ``cpu`` and ``torch`` backends (a clear TypeError says so).
CPU tensors are served only under the Triton interpreter: set ``TRITON_INTERPRET=1`` before this
package is first imported (``frkd_kernels`` imports it lazily, on first use).
The backend object is ``BACKEND`` (a ``TritonBackend``); the kernel modules' entry points are
also importable from here.
"""
from __future__ import annotations

import torch
import triton

from ._common import INTERPRET
from .class_distance_maps import class_distance_maps, class_distance_maps_backward
from .masked_feature_mse import masked_feature_mse, masked_feature_mse_backward
from .prototype_pool import prototype_pool, prototype_pool_backward
from .relation_kl import relation_kl, relation_kl_backward
from .teacher_entropy import teacher_entropy

__all__ = [
    "BACKEND", "TritonBackend", "prototype_pool", "prototype_pool_backward", "class_distance_maps",
    "class_distance_maps_backward", "masked_feature_mse", "masked_feature_mse_backward", "teacher_entropy",
    "relation_kl", "relation_kl_backward",
]


class TritonBackend:
    """The ``triton`` backend: one method per backend function, each running that op's kernels."""

    name = "triton"

    def status(self) -> tuple[bool, str]:
        """Live whenever triton imports (this module would not have imported otherwise)."""
        mode = "interpreter, CPU tensors (TRITON_INTERPRET=1)" if INTERPRET else "compiled kernels, CUDA tensors"
        return True, f"triton {triton.__version__}, {mode}; float32/float16/bfloat16 only"

    def serves(self, device: torch.device) -> tuple[bool, str]:
        """(True, '') for CUDA tensors with a GPU present, or for CPU tensors under the interpreter."""
        device = torch.device(device)
        if device.type == "cuda":
            if INTERPRET:
                return False, ("TRITON_INTERPRET=1 was set when frkd_kernels.triton_ops was imported: "
                               "the triton kernels run on CPU tensors only in this process")
            if not torch.cuda.is_available():
                return False, "no CUDA device is available to torch"
            return True, ""
        if device.type == "cpu":
            if INTERPRET:
                return True, ""
            return False, ("triton runs on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 "
                           "before frkd_kernels.triton_ops is imported")
        return False, f"the triton backend does not run on {device.type} tensors"

    def prototype_pool(self, feat, labels, num_classes, ignore_index):
        return prototype_pool(feat, labels, num_classes, ignore_index)

    def prototype_pool_backward(self, grad_protos, labels, counts, feat, ignore_index):
        return prototype_pool_backward(grad_protos, labels, counts, feat, ignore_index)

    def class_distance_maps(self, feat, labels, protos, counts, ignore_index, eps):
        return class_distance_maps(feat, labels, protos, counts, ignore_index, eps)

    def class_distance_maps_backward(self, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                     ignore_index, eps, need_feat, need_protos):
        return class_distance_maps_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                            ignore_index, eps, need_feat, need_protos)

    def masked_feature_mse(self, student, teacher, weight):
        return masked_feature_mse(student, teacher, weight)

    def masked_feature_mse_backward(self, grad_loss, student, teacher, weight, need_student, need_teacher):
        return masked_feature_mse_backward(grad_loss, student, teacher, weight, need_student, need_teacher)

    def teacher_entropy(self, logits, temperature):
        return teacher_entropy(logits, temperature)

    def relation_kl(self, query_s, query_t, key_s, key_t, groups, temperature):
        return relation_kl(query_s, query_t, key_s, key_t, groups, temperature)

    def relation_kl_backward(self, scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                             need_key):
        return relation_kl_backward(scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                                    need_key)


BACKEND = TritonBackend()
