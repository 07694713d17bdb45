"""class_distance_maps' own rules on every backend: conventions for ignored pixels and absent
classes, the arg-max rule (ties to the lowest k, a NaN counts as the largest: docs/ops.md),
gradcheck, mixed feature/prototype dtypes. The checks shared by the four ops (against the naive
oracle over dtypes, layouts and awkward inputs; opcheck, torch.compile, dispatch) are in
tests/test_ops_*.py.
"""
from __future__ import annotations

import pytest
import torch

import frkd_kernels
import naive
from naive import assert_close, random_feat, random_labels, random_protos
from test_ops_backward import run_class_distance_maps_grad
from test_ops_forward import STANDARD, run_class_distance_maps, seed_for, skip_unsupported


@pytest.mark.parametrize("layout", ("contiguous", "sliced"))
@pytest.mark.parametrize("feat_dtype", (torch.bfloat16, torch.float16), ids=str)
def test_class_distance_maps_low_precision_feat_fp32_protos(backend_device, feat_dtype, layout):
    backend, device = backend_device
    run_class_distance_maps(backend, device, STANDARD, 7, feat_dtype, layout, protos_dtype=torch.float32)


def test_class_distance_maps_conventions(backend_device):
    """Ignored pixels: intra 1, inter -1; a single present class: inter -1 everywhere."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(5)
    feat = random_feat(gen, 1, 4, 3, 5).to(device)
    labels = torch.full((1, 3, 5), 2, dtype=torch.int64)
    labels[0, 0] = 255
    labels[0, 1, :2] = 9  # outside [0, K)
    labels = labels.to(device)
    counts = torch.tensor([[0.0, 0.0, 9.0, 0.0]], device=device)
    protos = torch.zeros(1, 4, 4, device=device)
    protos[0, 2] = torch.randn(4, generator=gen).to(device)
    with frkd_kernels.use_backend(backend):
        intra, inter = frkd_kernels.class_distance_maps(feat, labels, protos, counts)
    ignored = labels.cpu() != 2
    assert torch.all(intra.cpu()[ignored] == 1)
    assert torch.all(inter.cpu() == -1)
    assert torch.all(intra.cpu()[~ignored].abs() <= 1 + 1e-6)


def test_class_distance_maps_nan_cosine_counts_as_the_largest(backend_device):
    """docs/ops.md arg-max rule: a NaN cosine (here: an inf entry in class 2's prototype) wins over
    every number, and among NaNs the lowest k wins; intra keeps its own class's value."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(seed_for("nan"))
    feat, labels = random_feat(gen, 2, 5, 3, 4), random_labels(gen, 2, 3, 4, 5)
    counts = torch.ones(2, 5)
    protos = random_protos(gen, counts, 5)
    protos[:, 2, 0] = float("inf")
    protos[1, 4, 1] = float("-inf")  # image 1: two NaN classes; class 2 is the lower one
    args = (feat.to(device), labels.to(device), protos.to(device), counts.to(device))
    with frkd_kernels.use_backend(backend):
        intra, inter, inter_class, _ = torch.ops.frkd.class_distance_maps_forward(*args)
    e_intra, e_inter, e_class = naive.class_distance_maps(feat, labels, protos, counts)
    assert torch.equal(inter_class.cpu().long(), e_class)
    assert torch.equal(inter.cpu().isnan(), e_inter.isnan()) and bool(e_inter.isnan().any())
    assert torch.equal(intra.cpu().isnan(), e_intra.isnan())


@pytest.mark.parametrize("low", (torch.bfloat16, torch.float16), ids=str)
def test_grad_low_precision_feat_fp32_protos_matches_naive(backend_device, low):
    backend, device = backend_device
    seed = seed_for("class_distance_maps", low)
    run_class_distance_maps_grad(backend, device, low, "contiguous", seed, protos_dtype=torch.float32)


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_class_distance_maps(backend_device, seed):
    backend, device = backend_device
    skip_unsupported(backend, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    feat = random_feat(gen, 2, 3, 3, 4, dtype=torch.float64)
    labels = random_labels(gen, 2, 3, 4, 3)
    counts = naive.prototype_pool(feat, labels, 3)[1].to(device)
    protos = random_protos(gen, counts, 3, torch.float64).to(device).requires_grad_()
    feat, labels = feat.to(device).requires_grad_(), labels.to(device)
    with frkd_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda f, p: frkd_kernels.class_distance_maps(f, labels, p, counts), (feat, protos), fast_mode=True)


def test_inter_ties_route_the_gradient_to_the_lowest_class(backend_device):
    """Two identical present prototypes: inter is their cosine, and its gradient goes to the lower class."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(8)
    feat = random_feat(gen, 1, 6, 2, 3).to(device)
    labels = torch.zeros(1, 2, 3, dtype=torch.int64, device=device)
    protos = torch.randn(1, 3, 6, generator=gen)
    protos[0, 2] = protos[0, 1]
    protos = protos.to(device).requires_grad_()
    counts = torch.ones(1, 3, device=device)
    with frkd_kernels.use_backend(backend):
        _, inter = frkd_kernels.class_distance_maps(feat, labels, protos, counts)
        (grad,) = torch.autograd.grad(inter.sum(), protos)
    assert_close(inter, naive.class_distance_maps(feat, labels, protos, counts)[1], what="inter")
    assert grad[0, 1].abs().sum() > 0 and torch.all(grad[0, 2] == 0), f"ties go to the lowest class: {grad}"
