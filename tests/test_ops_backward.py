"""Gradients of the differentiable frkd ops on every backend, the checks all of them share.

Every backend against the naive float64 gradient with a random upstream gradient (the op is not
the last layer); the ``*_backward`` ops' output dtypes and layouts; teacher-side inputs that need
no gradient; double backward refused. Each op's own gradient rules (gradcheck, ties, mixed
dtypes, ...) are in tests/test_<op>.py, which call the ``run_<op>_grad`` runners below.
"""
from __future__ import annotations

import pytest
import torch

import frkd_kernels
import naive
from frkd_kernels import _backend
from naive import FLOAT_DTYPES, LAYOUTS, assert_close, random_feat, random_labels, random_protos, with_layout
from test_ops_forward import seed_for

K = 4
SHAPE = (2, 5, 4, 7)  # B, C, H, W


def _labels(gen):
    B, _, H, W = SHAPE
    return random_labels(gen, B, H, W, K)


def _counts(feat, labels):
    return naive.prototype_pool(feat, labels, K)[1].to(torch.float32).to(feat.device)


def _leaf(t: torch.Tensor, layout: str = "contiguous") -> torch.Tensor:
    return with_layout(t, layout).requires_grad_()


# --- every backend against the naive gradient -------------------------------------------------

def run_prototype_pool_grad(backend, device, dtype, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    feat, labels = random_feat(gen, *SHAPE, dtype=dtype), _labels(gen)
    grad_protos = torch.randn(SHAPE[0], K, SHAPE[1], generator=gen)
    x = _leaf(feat.to(device), layout)
    with frkd_kernels.use_backend(backend):
        protos, _ = frkd_kernels.prototype_pool(x, with_layout(labels.to(device), layout), K)
        (got,) = torch.autograd.grad(protos, x, grad_protos.to(device))
    assert_close(got, naive.prototype_pool_grad(grad_protos, feat, labels, K), what="grad feat")


def run_class_distance_maps_grad(backend, device, dtype, layout, seed, protos_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    feat, labels = random_feat(gen, *SHAPE, dtype=dtype, zero_pixels=True), _labels(gen)
    counts = _counts(feat, labels).to(device)
    protos = random_protos(gen, counts, SHAPE[1], protos_dtype or dtype)
    grad_intra, grad_inter = torch.randn(2, SHAPE[0], SHAPE[2], SHAPE[3], generator=gen)
    x, p = _leaf(feat.to(device), layout), _leaf(protos.to(device), layout)
    with frkd_kernels.use_backend(backend):
        intra, inter = frkd_kernels.class_distance_maps(x, with_layout(labels.to(device), layout), p, counts)
        upstream = (grad_intra.to(device), grad_inter.to(device))
        got_feat, got_protos = torch.autograd.grad((intra, inter), (x, p), upstream)
    want_feat, want_protos = naive.class_distance_maps_grad(grad_intra, grad_inter, feat, labels, protos, counts)
    assert_close(got_feat, want_feat, what="grad feat")
    assert_close(got_protos, want_protos, what="grad protos")
    zero = feat.flatten(2).abs().sum(1) == 0
    assert torch.all(got_feat.cpu().flatten(2).transpose(1, 2)[zero] == 0), "a zero feature must get no gradient"
    assert torch.all(got_protos.cpu()[counts.cpu() == 0] == 0), "an absent class's prototype must get no gradient"


def run_masked_feature_mse_grad(backend, device, dtype, layout, seed, teacher_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = random_feat(gen, *SHAPE, dtype=dtype), random_feat(gen, *SHAPE, dtype=teacher_dtype or dtype)
    weight = torch.rand(SHAPE[0], *SHAPE[2:], generator=gen)
    s, t = _leaf(student.to(device), layout), _leaf(teacher.to(device), layout)
    with frkd_kernels.use_backend(backend):
        loss = frkd_kernels.masked_feature_mse(s, t, with_layout(weight.to(device), layout))
        got_s, got_t = torch.autograd.grad(loss, (s, t), torch.tensor(0.37, device=device))
    want_s, want_t = naive.masked_feature_mse_grad(0.37, student, teacher, weight)
    assert_close(got_s, want_s, what="grad student")
    assert_close(got_t, want_t, what="grad teacher")


GRAD_CASES = {
    "prototype_pool": run_prototype_pool_grad,
    "class_distance_maps": run_class_distance_maps_grad,
    "masked_feature_mse": run_masked_feature_mse_grad,
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("op", GRAD_CASES)
def test_grad_matches_naive(backend_device, op, dtype, layout):
    backend, device = backend_device
    GRAD_CASES[op](backend, device, dtype, layout, seed_for(op, dtype, layout))


# --- the backward ops: dtype and layout of each gradient --------------------------------------

def _assert_like(grad: torch.Tensor, inp: torch.Tensor, what: str):
    assert grad.dtype == inp.dtype, f"{what}: dtype {grad.dtype}, expected the input's {inp.dtype}"
    assert grad.shape == inp.shape, f"{what}: shape {tuple(grad.shape)}, expected {tuple(inp.shape)}"
    layout = torch.empty_like(inp).stride()
    assert grad.stride() == layout, f"{what}: strides {grad.stride()}, expected empty_like(input)'s {layout}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_backward_ops_return_input_dtype_and_layout(backend_device, dtype, layout):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(seed_for(dtype, layout))
    feat = with_layout(random_feat(gen, *SHAPE, dtype=dtype).to(device), layout)
    labels = _labels(gen).to(device)
    protos = with_layout(torch.randn(SHAPE[0], K, SHAPE[1], generator=gen).to(device), layout)  # fp32 meets dtype
    counts = _counts(feat, labels)
    maps = torch.randn(3, SHAPE[0], *SHAPE[2:], generator=gen).to(device)
    ops = torch.ops.frkd
    with frkd_kernels.use_backend(backend):
        _, _, inter_class, recorded = ops.class_distance_maps_forward(feat, labels, protos, counts)
        grad_feat = ops.prototype_pool_backward(torch.randn(SHAPE[0], K, SHAPE[1], device=device), labels, counts, feat,
                                                255, recorded)
        _assert_like(grad_feat, feat, "prototype_pool_backward")
        assert inter_class.dtype == torch.int32, f"inter_class: expected int32, got {inter_class.dtype}"
        grad_feat, grad_protos = ops.class_distance_maps_backward(
            maps[0], maps[1], feat, labels, protos, counts, inter_class, 255, 1e-8, True, True, recorded)
        _assert_like(grad_feat, feat, "class_distance_maps_backward feat")
        _assert_like(grad_protos, protos, "class_distance_maps_backward protos")
        teacher = with_layout(random_feat(gen, *SHAPE).to(device), layout)  # float32 teacher
        grad_s, grad_t = ops.masked_feature_mse_backward(torch.tensor(1.5, device=device), feat, teacher, maps[2],
                                                         True, True, recorded)
        _assert_like(grad_s, feat, "masked_feature_mse_backward student")
        _assert_like(grad_t, teacher, "masked_feature_mse_backward teacher")


# --- what needs no gradient -------------------------------------------------------------------

@pytest.fixture
def backward_calls(monkeypatch):
    """[(backend, function name, args)] of every backend function run through ``_backend.implementation``."""
    calls = []
    real = _backend.implementation

    def logged(name, func):
        fn = real(name, func)

        def call(*args):
            calls.append((name, func, args))
            return fn(*args)
        return call

    monkeypatch.setattr(_backend, "implementation", logged)
    return calls


def test_teacher_side_needs_no_grad(backend_device, backward_calls):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(4)
    student = random_feat(gen, *SHAPE).to(device).requires_grad_()
    teacher, labels = random_feat(gen, *SHAPE).to(device), _labels(gen).to(device)
    weight = torch.rand(SHAPE[0], *SHAPE[2:], generator=gen).to(device)
    with frkd_kernels.use_backend(backend):
        t_protos, t_counts = frkd_kernels.prototype_pool(teacher, labels, K)
        t_intra, t_inter = frkd_kernels.class_distance_maps(teacher, labels, t_protos, t_counts)
        assert not (t_protos.requires_grad or t_intra.requires_grad or t_inter.requires_grad)
        s_intra, _ = frkd_kernels.class_distance_maps(student, labels, t_protos, t_counts)
        loss = frkd_kernels.masked_feature_mse(student, teacher, weight) + (s_intra - t_intra).square().sum()
        loss.backward()
    assert teacher.grad is None and student.grad is not None
    needs = {func: args[-2:] for _, func, args in backward_calls if func.endswith("_backward")}
    assert needs == {"masked_feature_mse_backward": (True, False), "class_distance_maps_backward": (True, False)}


def _first_grads(op, backend, device):
    """(output, inputs) of one op, on inputs that require grad."""
    gen = torch.Generator().manual_seed(9)
    feat, labels = random_feat(gen, *SHAPE).to(device).requires_grad_(), _labels(gen).to(device)
    with frkd_kernels.use_backend(backend):
        if op == "prototype_pool":
            return frkd_kernels.prototype_pool(feat, labels, K)[0], (feat,)
        if op == "class_distance_maps":
            protos, counts = frkd_kernels.prototype_pool(feat, labels, K)
            return frkd_kernels.class_distance_maps(feat, labels, protos, counts)[1], (feat,)
        teacher = random_feat(gen, *SHAPE).to(device).requires_grad_()
        weight = torch.ones_like(labels, dtype=torch.float32)
        return frkd_kernels.masked_feature_mse(feat, teacher, weight), (feat, teacher)


@pytest.mark.parametrize("op", GRAD_CASES)
def test_double_backward_raises(backend_device, op):
    backend, device = backend_device
    out, inputs = _first_grads(op, backend, device)
    grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        sum(g.square().sum() for g in grads).backward()
