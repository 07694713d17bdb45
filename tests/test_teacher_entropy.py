"""teacher_entropy's own rules on every backend: the arg-max tie rule (lowest k: docs/ops.md),
uniform logits at entropy 1, stability for large logit gaps, temperature, and no gradient (a
teacher-only op). The checks shared by the four ops (against the naive oracle over dtypes,
layouts and awkward shapes; opcheck, torch.compile, dispatch, errors) are in tests/test_ops_*.py.
"""
from __future__ import annotations

import pytest
import torch

import frkd_kernels
import naive
from naive import assert_close, random_feat
from test_ops_forward import Case, run_teacher_entropy


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_teacher_entropy_ties_take_lowest_class(backend_device, dtype):
    backend, device = backend_device
    logits = torch.tensor([[2.0, 5.0, 5.0, 1.0], [7.0, 7.0, 7.0, 7.0]]).T.reshape(1, 4, 1, 2).to(dtype).to(device)
    with frkd_kernels.use_backend(backend):
        entropy, pred = frkd_kernels.teacher_entropy(logits)
    assert pred.cpu().tolist() == [[[1, 0]]]
    assert abs(float(entropy[0, 0, 1]) - 1.0) < 1e-5, "uniform logits have entropy 1"


@pytest.mark.parametrize("gap", (50.0, 1e4))
def test_teacher_entropy_stable_for_large_logit_gaps(backend_device, gap):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 3, 4, generator=gen)
    logits[:, 3] += gap
    with frkd_kernels.use_backend(backend):
        entropy, pred = frkd_kernels.teacher_entropy(logits.to(device), temperature=0.5)
    assert torch.isfinite(entropy).all(), "entropy must stay finite for large logit gaps"
    assert (entropy >= 0).all() and (entropy <= 1).all()
    assert torch.all(pred == 3)
    assert float(entropy.max()) < 1e-3, "a near one-hot softmax has entropy ~0"


@pytest.mark.parametrize("temperature", (0.25, 4.0))
def test_teacher_entropy_temperature(backend_device, temperature):
    backend, device = backend_device
    run_teacher_entropy(backend, device, Case(K=6), 21, temperature=temperature)


def test_teacher_entropy_on_logits_requiring_grad(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(6)
    logits = random_feat(gen, 2, 5, 3, 4).to(device).requires_grad_()
    with frkd_kernels.use_backend(backend):
        entropy, pred = frkd_kernels.teacher_entropy(logits)
    assert not entropy.requires_grad and not pred.requires_grad, "teacher_entropy outputs carry no gradient"
    want_entropy, want_pred = naive.teacher_entropy(logits)
    assert_close(entropy, want_entropy, what="entropy")
    assert torch.equal(pred.cpu(), want_pred)


def test_teacher_entropy_nan_logit_counts_as_the_largest(backend_device):
    """docs/ops.md arg-max rule: a NaN logit wins over every number (here over +inf), and among NaNs
    the lowest k wins, as in torch.argmax."""
    backend, device = backend_device
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[1.0, nan, 5.0, inf], [nan, 2.0, nan, 0.0], [0.0, 3.0, 3.0, nan]]).T.reshape(1, 4, 1, 3)
    with frkd_kernels.use_backend(backend):
        _, pred = frkd_kernels.teacher_entropy(logits.to(device))
    want = torch.argmax(logits, dim=1)
    assert want.tolist() == [[[1, 0, 3]]]
    assert torch.equal(pred.cpu(), want), f"pred {pred.tolist()}, expected {want.tolist()}"
    # K = 70 spans two class chunks of the Triton kernel: a NaN in the later chunk still beats the
    # earlier +inf, and a NaN in the earlier chunk is not displaced by a later one
    many = torch.zeros(1, 70, 1, 2)
    many[0, 3, 0, 0], many[0, 66, 0, 0], many[0, 68, 0, 0] = inf, nan, nan
    many[0, 5, 0, 1], many[0, 69, 0, 1] = nan, nan
    with frkd_kernels.use_backend(backend):
        _, pred = frkd_kernels.teacher_entropy(many.to(device))
    assert pred.cpu().tolist() == torch.argmax(many, dim=1).tolist() == [[[66, 5]]]
