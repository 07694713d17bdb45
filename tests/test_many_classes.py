"""Up to 182 classes (ADE20K 150, COCO-Stuff-164k 182): every op forward and backward on every
backend (the Triton interpreter on tiny shapes) against the naive float64 oracle, and every
recipe's terms at K = 150 and 182."""
import math

import pytest
import torch

import frkd_kernels
import naive
from frkd.losses import LOSSES, build_loss
from frkd.models import SegOutput
from naive import assert_close, random_feat, random_labels
from test_ops_forward import RUNNERS, Case, seed_for
from test_terms import naive_ifv, naive_pixel_kd

KS = (150, 182)


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("op", RUNNERS)
def test_every_op_matches_naive_at_many_classes(backend_device, op, K):
    backend, device = backend_device
    RUNNERS[op](backend, device, Case(B=2, C=3, H=3, W=5, K=K), seed_for(op, K))


@pytest.mark.parametrize("K", KS)
def test_op_gradients_match_naive_at_many_classes(backend_device, K):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(K)
    B, C, H, W = 2, 3, 3, 5
    feat = random_feat(gen, B, C, H, W)
    labels = random_labels(gen, B, H, W, K)
    labels[0, 0, 0], labels[1, 0, 0] = K - 1, 0  # the last class id and the first
    grad_protos = torch.randn(B, K, C, generator=gen)
    x = feat.to(device).requires_grad_()
    with frkd_kernels.use_backend(backend):
        protos, counts = frkd_kernels.prototype_pool(x, labels.to(device), K)
        (got,) = torch.autograd.grad(protos, x, grad_protos.to(device))
    assert_close(got, naive.prototype_pool_grad(grad_protos, feat, labels, K), what="prototype_pool grad")
    want_protos, want_counts = naive.prototype_pool(feat, labels, K)
    assert_close(protos.detach(), want_protos, what="protos")
    p = want_protos.to(torch.float32).to(device).requires_grad_()
    x = feat.to(device).requires_grad_()
    c = want_counts.to(torch.float32).to(device)
    grad_intra, grad_inter = torch.randn(2, B, H, W, generator=gen)
    with frkd_kernels.use_backend(backend):
        intra, inter = frkd_kernels.class_distance_maps(x, labels.to(device), p, c)
        got_feat, got_protos = torch.autograd.grad((intra, inter), (x, p), (grad_intra.to(device),
                                                                            grad_inter.to(device)))
    want_feat, want_p = naive.class_distance_maps_grad(grad_intra, grad_inter, feat, labels,
                                                       want_protos.to(torch.float32), c.cpu())
    assert_close(got_feat, want_feat, what="class_distance_maps grad feat")
    assert_close(got_protos, want_p, what="class_distance_maps grad protos")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"none"}))
def test_every_recipe_runs_at_many_classes(name, K):
    torch.manual_seed(K)
    gen = torch.Generator().manual_seed(K)
    B, H, W = 2, 8, 8
    make = lambda *shape: torch.randn(*shape, generator=gen).requires_grad_()  # noqa: E731
    student = SegOutput(make(B, K, H, W), make(B, K, H, W), make(B, 4, H, W))
    teacher = SegOutput(*(t.detach() for t in (make(B, K, H, W), make(B, K, H, W), make(B, 6, H, W))))
    y = torch.randint(0, K, (B, H, W), generator=gen)
    y[0, 0, :2] = torch.tensor([K - 1, 255])
    loss = build_loss(name, num_classes=K, student_channels=4, teacher_channels=6, pixel_memory_size=16,
                      region_memory_size=4, d_width=8, channel_memory_size=64)
    out = loss(student, teacher, y)
    assert out and all(math.isfinite(v.item()) for v in out.values()), out
    if "kd" in out and name != "frkd":
        assert out["kd"].item() == pytest.approx(loss.options["lambda_kd"] * naive_pixel_kd(student.logits,
                                                                                         teacher.logits), rel=1e-4)
    if "ifv" in out:
        assert out["ifv"].item() == pytest.approx(
            loss.options["lambda_ifv"] * naive_ifv(student.feat, teacher.feat, y, K), rel=1e-4, abs=1e-8)
    sum(out.values()).backward()
    for t in (student.logits, student.feat):
        assert t.grad is None or torch.isfinite(t.grad).all()
