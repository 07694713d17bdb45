"""prototype_pool's own rules on every backend: absent classes and all-ignored images give exact
zeros, gradcheck, and its gradient reaching the features through the prototypes when
class_distance_maps consumes them (the FRKD loss: docs/ops.md). The checks shared by the four
ops (against the naive oracle over dtypes, layouts and awkward inputs; opcheck, torch.compile,
dispatch, errors) are in tests/test_ops_*.py.
"""
from __future__ import annotations

import pytest
import torch

import frkd_kernels
import naive
from naive import assert_close, random_feat, random_labels
from test_ops_backward import K, SHAPE
from test_ops_forward import Case, case_inputs, skip_unsupported


def test_prototype_pool_absent_and_ignored_are_exact(backend_device):
    """Absent classes: protos exactly 0 and counts 0; an all-ignored image: all zeros."""
    backend, device = backend_device
    case = Case(K=5, all_ignored_image=True)
    feat, labels = case_inputs(case, 3, device=device)
    labels[0][labels[0] == 3] = case.ignore_index
    with frkd_kernels.use_backend(backend):
        protos, counts = frkd_kernels.prototype_pool(feat, labels, case.K)
    assert counts[0, 3] == 0 and counts[0, 4] == 0
    assert torch.count_nonzero(protos[0, 3:]) == 0
    assert torch.count_nonzero(counts[-1]) == 0 and torch.count_nonzero(protos[-1]) == 0


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_prototype_pool(backend_device, seed):
    backend, device = backend_device
    skip_unsupported(backend, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    feat = random_feat(gen, 2, 3, 3, 4, dtype=torch.float64).to(device).requires_grad_()
    labels = random_labels(gen, 2, 3, 4, 3).to(device)
    with frkd_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(lambda f: frkd_kernels.prototype_pool(f, labels, 3)[0], (feat,), fast_mode=True)


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_prototypes_into_features(backend_device, seed):
    """prototype_pool -> class_distance_maps: the gradient reaches feat directly and via protos."""
    backend, device = backend_device
    skip_unsupported(backend, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    feat = random_feat(gen, 2, 3, 3, 4, dtype=torch.float64).to(device).requires_grad_()
    labels = random_labels(gen, 2, 3, 4, 3).to(device)

    def maps(f):
        protos, counts = frkd_kernels.prototype_pool(f, labels, 3)
        return frkd_kernels.class_distance_maps(f, labels, protos, counts)

    with frkd_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(maps, (feat,), fast_mode=True)


def test_grad_through_prototypes_matches_naive(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(17)
    B, _, H, W = SHAPE
    feat, labels = random_feat(gen, *SHAPE), random_labels(gen, B, H, W, K)
    grad_intra, grad_inter = torch.randn(2, B, H, W, generator=gen)
    x = feat.to(device).requires_grad_()
    with frkd_kernels.use_backend(backend):
        protos, counts = frkd_kernels.prototype_pool(x, labels.to(device), K)
        intra, inter = frkd_kernels.class_distance_maps(x, labels.to(device), protos, counts)
        (got,) = torch.autograd.grad((intra, inter), x, (grad_intra.to(device), grad_inter.to(device)))
    want_protos, want_counts = naive.prototype_pool(feat, labels, K)
    direct, via_protos = naive.class_distance_maps_grad(grad_intra, grad_inter, feat, labels, want_protos, want_counts)
    assert_close(got, direct + naive.prototype_pool_grad(via_protos, feat, labels, K), what="grad feat")
