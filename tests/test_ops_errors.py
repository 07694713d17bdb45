"""Bad inputs to the frkd ops raise a clear error: the op, the argument, and what was given (docs/ops.md)."""
from __future__ import annotations

import re

import pytest
import torch

import frkd_kernels

B, C, H, W, K = 2, 3, 4, 5, 3


def _feat(*shape, **kw):
    return torch.randn(*(shape or (B, C, H, W)), **kw)


def _labels(*shape, dtype=torch.int64, **kw):
    return torch.zeros(*(shape or (B, H, W)), dtype=dtype, **kw)


def _protos(*shape, **kw):
    return torch.randn(*(shape or (B, K, C)), **kw)


def _counts(*shape, dtype=torch.float32, **kw):
    return torch.ones(*(shape or (B, K)), dtype=dtype, **kw)


def _weight(*shape, dtype=torch.float32, **kw):
    return torch.ones(*(shape or (B, H, W)), dtype=dtype, **kw)


pool = frkd_kernels.prototype_pool
maps = frkd_kernels.class_distance_maps
mse = frkd_kernels.masked_feature_mse
entropy = frkd_kernels.teacher_entropy

# (op, argument named in the error, what the message must show was given, call)
BAD_CALLS = {
    "feat_rank": ("prototype_pool", "feat", r"\(2, 3, 4\)", lambda: pool(_feat(B, C, H), _labels(), K)),
    "feat_int": ("prototype_pool", "feat", "int64", lambda: pool(_feat().long(), _labels(), K)),
    "labels_rank": ("prototype_pool", "labels", r"\(2, 1, 4, 5\)", lambda: pool(_feat(), _labels(B, 1, H, W), K)),
    "labels_batch": ("prototype_pool", "labels", r"\(1, 4, 5\)", lambda: pool(_feat(), _labels(1, H, W), K)),
    "labels_height": ("prototype_pool", "labels", r"\(2, 8, 5\)", lambda: pool(_feat(), _labels(B, 2 * H, W), K)),
    "labels_width": ("prototype_pool", "labels", r"\(2, 4, 4\)", lambda: pool(_feat(), _labels(B, H, W - 1), K)),
    "labels_float": ("prototype_pool", "labels", "float32", lambda: pool(_feat(), _labels().float(), K)),
    "labels_int16": ("prototype_pool", "labels", "int16", lambda: pool(_feat(), _labels(dtype=torch.int16), K)),
    "num_classes_zero": ("prototype_pool", "num_classes", "0", lambda: pool(_feat(), _labels(), 0)),
    "num_classes_negative": ("prototype_pool", "num_classes", "-2", lambda: pool(_feat(), _labels(), -2)),
    "pool_devices": ("prototype_pool", "labels", "meta", lambda: pool(_feat(), _labels(device="meta"), K)),
    "maps_labels_shape": ("class_distance_maps", "labels", r"\(2, 5, 4\)",
                          lambda: maps(_feat(), _labels(B, W, H), _protos(), _counts())),
    "protos_rank": ("class_distance_maps", "protos", r"\(2, 3\)",
                    lambda: maps(_feat(), _labels(), _protos(B, C), _counts())),
    "protos_channels": ("class_distance_maps", "protos", r"\(2, 3, 7\)",
                        lambda: maps(_feat(), _labels(), _protos(B, K, 7), _counts())),
    "protos_batch": ("class_distance_maps", "protos", r"\(1, 3, 3\)",
                     lambda: maps(_feat(), _labels(), _protos(1, K, C), _counts())),
    "protos_int": ("class_distance_maps", "protos", "int64",
                   lambda: maps(_feat(), _labels(), _protos().long(), _counts())),
    "counts_classes": ("class_distance_maps", "counts", r"\(2, 4\)",
                       lambda: maps(_feat(), _labels(), _protos(), _counts(B, K + 1))),
    "counts_rank": ("class_distance_maps", "counts", r"\(2, 3, 1\)",
                    lambda: maps(_feat(), _labels(), _protos(), _counts(B, K, 1))),
    "counts_int": ("class_distance_maps", "counts", "int64",
                   lambda: maps(_feat(), _labels(), _protos(), _counts(dtype=torch.int64))),
    "maps_devices": ("class_distance_maps", "protos", "meta",
                     lambda: maps(_feat(), _labels(), _protos(device="meta"), _counts())),
    "eps_zero": ("class_distance_maps", "eps", "0", lambda: maps(_feat(), _labels(), _protos(), _counts(), 255, 0.0)),
    "student_rank": ("masked_feature_mse", "student", r"\(3, 4, 5\)", lambda: mse(_feat(C, H, W), _feat(), _weight())),
    "teacher_shape": ("masked_feature_mse", "teacher", r"\(2, 6, 4, 5\)",
                      lambda: mse(_feat(), _feat(B, 2 * C, H, W), _weight())),
    "weight_shape": ("masked_feature_mse", "weight", r"\(2, 4, 6\)",
                     lambda: mse(_feat(), _feat(), _weight(B, H, W + 1))),
    "weight_rank": ("masked_feature_mse", "weight", r"\(2, 1, 4, 5\)",
                    lambda: mse(_feat(), _feat(), _weight(B, 1, H, W))),
    "weight_bool": ("masked_feature_mse", "weight", "bool", lambda: mse(_feat(), _feat(), _weight(dtype=torch.bool))),
    "mse_devices": ("masked_feature_mse", "teacher", "meta", lambda: mse(_feat(), _feat(device="meta"), _weight())),
    "logits_rank": ("teacher_entropy", "logits", r"\(2, 4, 5\)", lambda: entropy(_feat(B, H, W))),
    "logits_int": ("teacher_entropy", "logits", "int64", lambda: entropy(_feat().long())),
    "temperature_zero": ("teacher_entropy", "temperature", "0", lambda: entropy(_feat(), 0.0)),
    "temperature_negative": ("teacher_entropy", "temperature", "-1", lambda: entropy(_feat(), -1.0)),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_input_names_the_argument(case):
    op, argument, given, call = BAD_CALLS[case]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert f"frkd.{op}" in message, f"the error must name the op: {message!r}"
    assert argument in message, f"the error must name {argument!r}: {message!r}"
    assert re.search(given, message), f"the error must show what was given ({given}): {message!r}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_tensors_do_not_mix():
    with pytest.raises(ValueError, match="frkd.prototype_pool: .*labels on cpu"):
        pool(_feat(device="cuda"), _labels(), K)
    with pytest.raises(ValueError, match="frkd.masked_feature_mse: .*weight on cpu"):
        mse(_feat(device="cuda"), _feat(device="cuda"), _weight())
