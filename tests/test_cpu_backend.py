"""The ``cpu`` backend's own paths: several pixel tiles (64 pixels) and channel groups (16) per image,
results independent of the thread count, label values that only wrap in narrower integer types,
entropy with -inf / NaN logits, and the argument checks of the private ``frkd::_cpu_*`` ops.
The shared op suites (test_ops_*.py) cover the contract on small shapes for every backend."""
from __future__ import annotations

import math

import pytest
import torch

import frkd_kernels
import naive
from naive import assert_close, random_feat, random_labels, with_layout

pytestmark = pytest.mark.skipif(not frkd_kernels.can_serve("cpu", "cpu")[0],
                                reason=f"cpu backend off: {frkd_kernels.can_serve('cpu', 'cpu')[1]}")

MULTI_TILE = (2, 37, 9, 17)  # C = 37: three channel groups; N = 153: three pixel tiles, the last partial
K = 5


def _inputs(seed, shape=MULTI_TILE, dtype=torch.float32, layout="contiguous", zero_pixels=True):
    gen = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    feat = random_feat(gen, B, C, H, W, dtype=dtype, zero_pixels=zero_pixels)
    labels = random_labels(gen, B, H, W, K)
    grads = [torch.randn(B, H, W, generator=gen, dtype=torch.float64) for _ in range(2)]
    return with_layout(feat, layout), with_layout(labels, layout), grads


def _stat(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("dtype,layout", [
    (torch.float32, "contiguous"), (torch.float32, "channels_last"), (torch.float32, "sliced"),
    (torch.bfloat16, "channels_last"), (torch.float64, "sliced"),
])
def test_multi_tile_forward_and_backward_match_naive(dtype, layout):
    feat, labels, (g_intra, g_inter) = _inputs(1, dtype=dtype, layout=layout)
    f = feat.detach().requires_grad_()
    with frkd_kernels.use_backend("cpu"):
        protos, counts = frkd_kernels.prototype_pool(f, labels, K)
        p = protos.detach().requires_grad_()
        intra, inter = frkd_kernels.class_distance_maps(f, labels, p, counts)
        torch.autograd.backward([intra, inter], [g_intra.to(intra.dtype), g_inter.to(inter.dtype)])
    exp_protos, exp_counts = naive.prototype_pool(feat, labels, K)
    exp_intra, exp_inter, _ = naive.class_distance_maps(feat, labels, protos, counts)
    exp_gf, exp_gp = naive.class_distance_maps_grad(g_intra, g_inter, feat, labels, protos, counts)
    stat = _stat(dtype)
    assert_close(protos, exp_protos, stat, "protos")
    assert_close(counts, exp_counts, stat, "counts")
    assert_close(intra, exp_intra, stat, "intra")
    assert_close(inter, exp_inter, stat, "inter")
    assert_close(f.grad, exp_gf, dtype, "grad feat")
    assert_close(p.grad, exp_gp, stat, "grad protos")
    assert f.grad.dtype == feat.dtype and f.grad.stride() == torch.empty_like(feat).stride()


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_multi_tile_pool_backward_mse_and_entropy_match_naive(layout):
    feat, labels, _ = _inputs(2, layout=layout)
    gen = torch.Generator().manual_seed(3)
    teacher = with_layout(random_feat(gen, *MULTI_TILE, dtype=torch.bfloat16), layout)
    weight = torch.rand(*labels.shape, generator=gen)
    grad_protos = torch.randn(MULTI_TILE[0], K, MULTI_TILE[1], generator=gen, dtype=torch.float64)
    logits = with_layout(3 * random_feat(gen, MULTI_TILE[0], K, *MULTI_TILE[2:]), layout)
    s = feat.detach().requires_grad_()
    with frkd_kernels.use_backend("cpu"):
        protos, _ = frkd_kernels.prototype_pool(s, labels, K)
        (protos * grad_protos.float()).sum().backward()
        pool_grad, s.grad = s.grad, None
        loss = frkd_kernels.masked_feature_mse(s, teacher, weight)
        loss.backward(torch.tensor(0.7))
        entropy, pred = frkd_kernels.teacher_entropy(logits, 1.5)
    assert_close(pool_grad, naive.prototype_pool_grad(grad_protos, feat, labels, K), torch.float32, "pool grad")
    assert_close(loss, naive.masked_feature_mse(feat, teacher, weight), torch.float32, "mse")
    assert_close(s.grad, naive.masked_feature_mse_grad(0.7, feat, teacher, weight)[0], torch.float32, "mse grad")
    exp_entropy, exp_pred = naive.teacher_entropy(logits, 1.5)
    assert_close(entropy, exp_entropy, torch.float32, "entropy")
    assert torch.equal(pred, exp_pred)


def test_gradcheck_multi_tile_float64():
    # no all-zero pixels: their cos jumps from 0 as soon as a finite difference moves them
    feat, labels, _ = _inputs(4, shape=(1, 18, 5, 15), dtype=torch.float64, zero_pixels=False)
    teacher = torch.randn(feat.shape, dtype=torch.float64)
    weight = torch.rand(labels.shape, dtype=torch.float64)

    def terms(f):
        protos, counts = frkd_kernels.prototype_pool(f, labels, K)
        intra, inter = frkd_kernels.class_distance_maps(f, labels, protos, counts)
        return intra, inter, protos, frkd_kernels.masked_feature_mse(f, teacher, weight)

    with frkd_kernels.use_backend("cpu"):
        assert torch.autograd.gradcheck(terms, (feat.requires_grad_(),), fast_mode=True)


def _all_outputs(feat, labels, logits):
    f = feat.detach().requires_grad_()
    protos, counts = frkd_kernels.prototype_pool(f, labels, K)
    intra, inter = frkd_kernels.class_distance_maps(f, labels, protos, counts)
    loss = frkd_kernels.masked_feature_mse(f, feat.flip(0), intra.detach())
    (intra.sum() + 2 * inter.sum() + protos.sum() + loss).backward()
    return (protos, counts, intra, inter, loss, f.grad, *frkd_kernels.teacher_entropy(logits))


def test_results_do_not_depend_on_thread_count():
    feat, labels, _ = _inputs(5, shape=(3, 40, 12, 30))
    logits = torch.randn(3, K, 12, 30)
    threads = torch.get_num_threads()
    try:
        with frkd_kernels.use_backend("cpu"):
            torch.set_num_threads(1)
            single = _all_outputs(feat, labels, logits)
            torch.set_num_threads(2)
            parallel = _all_outputs(feat, labels, logits)
    finally:
        torch.set_num_threads(threads)
    for i, (a, b) in enumerate(zip(single, parallel)):
        assert torch.equal(a, b), f"output {i} differs between 1 and 2 threads"


def test_wide_labels_are_not_truncated():
    """2**32 + 1 would read as class 1 if narrowed to int32; it is out of range, hence ignored."""
    feat, _, _ = _inputs(6, shape=(1, 3, 2, 3))
    labels = torch.tensor([[[1, 2**32 + 1, -(2**40)], [2, 2**31, 4]]], dtype=torch.int64)
    with frkd_kernels.use_backend("cpu"):
        protos, counts = frkd_kernels.prototype_pool(feat, labels, K)
    assert counts.tolist() == [[0, 1, 1, 0, 1]]
    assert_close(protos, naive.prototype_pool(feat, labels, K)[0], torch.float32, "protos")


def test_entropy_with_minus_inf_and_nan_logits():
    logits = torch.tensor([[0.0, 0.0, -math.inf], [1.0, float("nan"), 5.0]]).T.reshape(1, 3, 1, 2)
    with frkd_kernels.use_backend("cpu"):
        entropy, pred = frkd_kernels.teacher_entropy(logits)
    assert entropy[0, 0, 0].item() == pytest.approx(math.log(2) / math.log(3), rel=1e-6)
    assert pred[0, 0].tolist() == [0, torch.argmax(logits[0, :, 0, 1]).item()] == [0, 1]


@pytest.mark.parametrize("call,argument", [
    (lambda f, y: torch.ops.frkd._cpu_prototype_pool(f, y, 255, torch.empty(2, 3, 4), torch.empty(2, 3)), "protos"),
    (lambda f, y: torch.ops.frkd._cpu_prototype_pool(f, y[:1], 255, torch.empty(2, 3, 5), torch.empty(2, 3)),
     "labels"),
    (lambda f, y: torch.ops.frkd._cpu_masked_feature_mse(f, f, torch.ones(2, 4, 6, dtype=torch.float64),
                                                          torch.empty(())), "weight"),
    (lambda f, y: torch.ops.frkd._cpu_teacher_entropy(f, 1.0, torch.empty(2, 4, 6), torch.empty(2, 4, 6)), "pred"),
])
def test_private_ops_name_the_bad_argument(call, argument):
    feat, labels = torch.randn(2, 5, 4, 6), torch.zeros(2, 4, 6, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=argument):
        call(feat, labels)


def test_backward_routes_inter_gradient_to_the_saved_class():
    """The backward uses the inter_class it is given (the forward's arg-max), never a recomputation;
    a value outside [0, K) means "no class" and is never used as an index."""
    from frkd_kernels import cpu_backend

    feat, labels, _ = _inputs(7, shape=(1, 6, 1, 3), zero_pixels=False)
    labels = torch.tensor([[[0, 1, 255]]])
    protos = torch.randn(1, K, 6)
    counts = torch.ones(1, K)
    saved = torch.tensor([[[3, 2**20, -1]]], dtype=torch.int32)  # pixel 0 -> class 3; the others: none
    zeros, ones = torch.zeros(1, 1, 3), torch.ones(1, 1, 3)
    _, grad_protos = cpu_backend.BACKEND.class_distance_maps_backward(zeros, ones, feat, labels, protos, counts, saved,
                                                              255, 1e-8, False, True)
    touched = grad_protos.abs().sum(2)[0] > 0
    assert touched.tolist() == [k == 3 for k in range(K)]
    expected = naive._d_cos(protos[0, 3].double().numpy(), feat[0, :, 0, 0].double().numpy(), 1e-8)
    assert_close(grad_protos[0, 3], torch.from_numpy(expected), torch.float32, "grad of the saved class")
