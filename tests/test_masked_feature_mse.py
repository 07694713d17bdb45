"""masked_feature_mse's own rules on every backend: mixed student/teacher/weight dtypes, forward
and backward, and gradcheck (docs/ops.md). The checks shared by the four ops (against the naive
oracle over dtypes, layouts and awkward inputs; opcheck, torch.compile, dispatch, errors, an
unneeded gradient not computed) are in tests/test_ops_*.py.
"""
from __future__ import annotations

import pytest
import torch

import frkd_kernels
from naive import random_feat
from test_ops_backward import run_masked_feature_mse_grad
from test_ops_forward import STANDARD, run_masked_feature_mse, seed_for, skip_unsupported


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("student_dtype", (torch.bfloat16, torch.float16), ids=str)
def test_masked_feature_mse_low_precision_student_fp32_teacher(backend_device, student_dtype, layout):
    backend, device = backend_device
    run_masked_feature_mse(backend, device, STANDARD, 11, student_dtype, layout, teacher_dtype=torch.float32)


def test_masked_feature_mse_float64_weight(backend_device):
    backend, device = backend_device
    skip_unsupported(backend, torch.float64)
    run_masked_feature_mse(backend, device, STANDARD, 13, weight_dtype=torch.float64)


@pytest.mark.parametrize("low", (torch.bfloat16, torch.float16), ids=str)
def test_grad_low_precision_student_fp32_teacher_matches_naive(backend_device, low):
    backend, device = backend_device
    seed = seed_for("masked_feature_mse", low)
    run_masked_feature_mse_grad(backend, device, low, "contiguous", seed, teacher_dtype=torch.float32)


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_masked_feature_mse(backend_device, seed):
    backend, device = backend_device
    skip_unsupported(backend, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    student, teacher = (random_feat(gen, 2, 3, 3, 4, dtype=torch.float64).to(device).requires_grad_()
                        for _ in range(2))
    weight = torch.rand(2, 3, 4, generator=gen).to(device)
    with frkd_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda s, t: frkd_kernels.masked_feature_mse(s, t, weight), (student, teacher), fast_mode=True)
