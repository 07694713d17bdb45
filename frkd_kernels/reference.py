"""The ``torch`` backend: the pure-PyTorch reference of every frkd op, and the last fallback.

Each op's reference lives in its slice (``frkd_kernels/ops/<op>.py``); this module gathers them
under the backend function names (the ``Backend`` protocol of ``_backend``) and as the object
``BACKEND``. Forwards are differentiable by autograd; the explicit backwards serve the ``torch``
backend's ``*_backward`` ops. Inputs arrive validated.
"""
from __future__ import annotations

import torch

from ._library import stat_dtype, valid_labels  # noqa: F401  (the rules, for users of the reference)
from .ops import class_distance_maps as _maps
from .ops import masked_feature_mse as _mse
from .ops import prototype_pool as _pool
from .ops import relation_kl as _relation
from .ops import teacher_entropy as _entropy

prototype_pool = _pool.reference
prototype_pool_backward = _pool.reference_backward
class_distance_maps = _maps.reference
class_distance_maps_backward = _maps.reference_backward
masked_feature_mse = _mse.reference
masked_feature_mse_backward = _mse.reference_backward
teacher_entropy = _entropy.reference
relation_kl = _relation.reference
relation_kl_backward = _relation.reference_backward


class TorchBackend:
    """The ``torch`` backend: every op by its reference, on any device."""

    name = "torch"

    def status(self) -> tuple[bool, str]:
        return True, "pure PyTorch"

    def serves(self, device: torch.device) -> tuple[bool, str]:
        return True, ""

    def prototype_pool(self, feat, labels, num_classes, ignore_index):
        return _pool.reference(feat, labels, num_classes, ignore_index)

    def prototype_pool_backward(self, grad_protos, labels, counts, feat, ignore_index):
        return _pool.reference_backward(grad_protos, labels, counts, feat, ignore_index)

    def class_distance_maps(self, feat, labels, protos, counts, ignore_index, eps):
        return _maps.reference(feat, labels, protos, counts, ignore_index, eps)

    def class_distance_maps_backward(self, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                     ignore_index, eps, need_feat, need_protos):
        return _maps.reference_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                        ignore_index, eps, need_feat, need_protos)

    def masked_feature_mse(self, student, teacher, weight):
        return _mse.reference(student, teacher, weight)

    def masked_feature_mse_backward(self, grad_loss, student, teacher, weight, need_student, need_teacher):
        return _mse.reference_backward(grad_loss, student, teacher, weight, need_student, need_teacher)

    def teacher_entropy(self, logits, temperature):
        return _entropy.reference(logits, temperature)

    def relation_kl(self, query_s, query_t, key_s, key_t, groups, temperature):
        return _relation.reference(query_s, query_t, key_s, key_t, groups, temperature)

    def relation_kl_backward(self, scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                             need_key):
        return _relation.reference_backward(scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups,
                                            temperature, need_key)


BACKEND = TorchBackend()
