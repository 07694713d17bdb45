"""The composable terms and CIRKD recipes (frkd.losses): each new term against a naive float64
reference written here from CIRKD's formulas (losses/cwd.py, cirkd_mini_batch.py, cirkd_memory.py,
adv.py, train_kd.py, train_cirkd.py), gradients, each recipe's assembled terms, the CIRKD flags
and composition. CPU, tiny tensors, awkward sizes.
"""
from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import frkd_kernels
import naive
import test_cirkd_terms as cirkd_naive
from frkd.losses import (DATASET_DEFAULTS, LOSSES, RECIPES, add_loss_args, build_loss, loss_options,
                         resolved_loss_options)
from frkd.losses.adversarial import Discriminator
from frkd.losses.cross_image import MemoryContrast, minibatch_pixel_relation
from frkd.models import SegOutput


def f64(t):
    return t.detach().to(torch.float64).numpy()


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(p, q):
    """KL(p ‖ q) of two probability vectors."""
    return float((p * (np.log(p) - np.log(q))).sum())


def unit(v):
    return v / max(np.linalg.norm(v), 1e-12)  # F.normalize's eps


def make(gen, *shape, grad=True):
    return torch.randn(*shape, generator=gen).requires_grad_(grad)


def labels(gen, B, H, W, K, ignore=0.2):
    y = torch.randint(0, K, (B, H, W), generator=gen)
    y[torch.rand(B, H, W, generator=gen) < ignore] = 255
    return y


# --- naive references ---------------------------------------------------------------------------

def naive_pixel_kd(z_s, z_t, T=1.0):
    s, t = f64(z_s), f64(z_t)
    B, K, H, W = s.shape
    return T * T * sum(kl(softmax(t[b, :, i, j] / T), softmax(s[b, :, i, j] / T))
                       for b in range(B) for i in range(H) for j in range(W)) / (B * H * W)


def naive_cwd(f_s, f_t, T, channels):
    """CIRKD CriterionCWD (norm 'channel', KL): Σ_{b,c} KL over H·W / (B·channels) · T²."""
    s, t = f64(f_s), f64(f_t)
    B, C = t.shape[:2]
    total = sum(kl(softmax(t[b, c].ravel() / T), softmax(s[b, c].ravel() / T)) for b in range(B) for c in range(C))
    return total / (B * channels) * T * T


def naive_conv1x1(weight, f):
    return np.einsum("oc,bchw->bohw", f64(weight)[:, :, 0, 0], f64(f))


def naive_ifv(f_s, f_t, y, K):
    y_small = y  # already at the feature size in these tests
    intra_s = naive.class_distance_maps(f_s, y_small, *naive.prototype_pool(f_s, y_small, K))[0]
    intra_t = naive.class_distance_maps(f_t, y_small, *naive.prototype_pool(f_t, y_small, K))[0]
    return float(((intra_s - intra_t) ** 2).mean())  # ignored pixels: 1 − 1 = 0, counted (CIRKD MSE)


def naive_fitnet(weight, f_s, f_t):
    return float(((naive_conv1x1(weight, f_s) - f64(f_t)) ** 2).mean())


def naive_minibatch(f_s, f_t, tau):
    """CIRKD CriterionMiniBatchCrossImagePair: for each (i, j), Σ_rows KL(T_ij ‖ S_ij) / N, mean over B²."""
    s, t = f64(f_s), f64(f_t)
    B, N = s.shape[0], s.shape[2] * s.shape[3]
    emb_s = [np.stack([unit(v) for v in s[b].reshape(s.shape[1], N).T]) for b in range(B)]
    emb_t = [np.stack([unit(v) for v in t[b].reshape(t.shape[1], N).T]) for b in range(B)]
    total = 0.0
    for i in range(B):
        for j in range(B):
            for p in range(N):
                sim_s = np.array([emb_s[i][p] @ emb_s[j][q] for q in range(N)]) / tau
                sim_t = np.array([emb_t[i][p] @ emb_t[j][q] for q in range(N)]) / tau
                total += kl(softmax(sim_t), softmax(sim_s)) / N
    return total / (B * B)


def naive_memory_relation(s_rows, t_rows, bank_rows, tau, T):
    """Σ over anchors of T²·KL(softmax(t·m/τ/T) ‖ softmax(s·m/τ/T)) / #anchors."""
    if len(s_rows) == 0:
        return 0.0
    total = 0.0
    for s, t in zip(s_rows, t_rows):
        ls = np.array([s @ m for m in bank_rows]) / tau / T
        lt = np.array([t @ m for m in bank_rows]) / tau / T
        total += T * T * kl(softmax(lt), softmax(ls))
    return total / len(s_rows)


def naive_enqueue(pixel_bank, pixel_ptr, region_bank, region_ptr, t_emb, y, K):
    """CIRKD _dequeue_and_enqueue, image by image and class by class, with every pixel of a class
    (≤ 16 per image here, so CIRKD's random pick takes them all; their slot order is free)."""
    P, R = pixel_bank.shape[1], region_bank.shape[1]
    e, lab = f64(t_emb), y.numpy()
    for b in range(e.shape[0]):
        feats, ys = e[b].reshape(e.shape[1], -1).T, lab[b].ravel()
        for k in sorted(set(int(v) for v in ys if 0 <= v < K)):
            rows = feats[ys == k]
            region_bank[k, region_ptr[k]] = unit(rows.mean(0))
            region_ptr[k] = (region_ptr[k] + 1) % R
            n, ptr = len(rows), pixel_ptr[k]
            if ptr + n >= P:
                pixel_bank[k, P - n:] = [unit(r) for r in rows]
                pixel_ptr[k] = 0
            else:
                pixel_bank[k, ptr:ptr + n] = [unit(r) for r in rows]
                pixel_ptr[k] = ptr + n


def sorted_rows(a):
    return a[np.lexsort(a.T[::-1])]


# --- CWD on features ----------------------------------------------------------------------------

@pytest.mark.parametrize("C_s, C_t", [(3, 5), (4, 4)])
def test_feature_cwd_matches_cirkd_formula(C_s, C_t):
    gen = torch.Generator().manual_seed(0)
    f_s, f_t = make(gen, 2, C_s, 3, 5), make(gen, 2, C_t, 3, 5, grad=False)
    loss = build_loss("kd", num_classes=3, student_channels=C_s, teacher_channels=C_t,
                      lambda_kd=0.0, lambda_cwd_fea=50.0)
    z = torch.zeros(2, 3, 3, 5)
    out = loss(SegOutput(z, None, f_s), SegOutput(z, None, f_t), torch.zeros(2, 3, 5, dtype=torch.long))
    cwd = loss.components["cwd_fea"]
    aligned = naive_conv1x1(cwd.align.weight, f_s) if C_s != C_t else f64(f_s)
    assert hasattr(cwd, "align") == (C_s != C_t)  # CIRKD convolves only when the channels differ
    expected = 50.0 * naive_cwd(torch.from_numpy(aligned), f_t, 4.0, channels=C_s)
    assert out["cwd_fea"].item() == pytest.approx(expected, rel=1e-5)


def test_feature_cwd_gradcheck():
    gen = torch.Generator().manual_seed(1)
    loss = build_loss("kd", num_classes=2, student_channels=3, teacher_channels=2, lambda_kd=0.0,
                      lambda_cwd_fea=1.0).double()
    f_t = torch.randn(2, 2, 2, 3, generator=gen, dtype=torch.float64)
    z = torch.zeros(2, 2, 2, 3, dtype=torch.float64)
    y = torch.zeros(2, 2, 3, dtype=torch.long)
    f_s = torch.randn(2, 3, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: loss(SegOutput(z, None, f), SegOutput(z, None, f_t), y)["cwd_fea"], (f_s,))


# --- CIRKD mini-batch pixel relation --------------------------------------------------------------

# the backends of frkd_kernels.relation_kl that take float64 CPU tensors in this process
RELATION_BACKENDS = [b for b in ("cpu", "torch") if frkd_kernels.can_serve(b, "cpu")[0]]


@pytest.mark.parametrize("backend", RELATION_BACKENDS)
@pytest.mark.parametrize("B, C_s, C_t, H, W", [(1, 3, 3, 2, 3), (3, 2, 5, 3, 2)])
def test_minibatch_pixel_relation_matches_the_pairwise_loops(B, C_s, C_t, H, W, backend):
    gen = torch.Generator().manual_seed(B)
    f_s, f_t = make(gen, B, C_s, H, W, grad=False), make(gen, B, C_t, H, W, grad=False)
    with frkd_kernels.use_backend(backend):
        got = minibatch_pixel_relation(f_s, f_t, 0.1)
    assert got.item() == pytest.approx(naive_minibatch(f_s, f_t, 0.1), rel=1e-4)


@pytest.mark.parametrize("backend", RELATION_BACKENDS)
def test_minibatch_pixel_relation_gradcheck_and_teacher_untouched(backend):
    gen = torch.Generator().manual_seed(2)
    f_s = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, 4, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    with frkd_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(lambda f: minibatch_pixel_relation(f, f_t, 0.5), (f_s,))
        minibatch_pixel_relation(f_s, f_t, 0.5).backward()
    assert f_t.grad is None


@pytest.mark.parametrize("backend", RELATION_BACKENDS)
def test_minibatch_pixel_relation_gradient_equals_the_dense_autograd_one(backend):
    """The op's backward (p_S − p_T recomputed per tile) against autograd through the whole
    B·N×B·N similarity, written here in float64."""
    gen = torch.Generator().manual_seed(3)
    f_s = torch.randn(3, 4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(3, 5, 3, 2, generator=gen, dtype=torch.float64)
    B, N = 3, 6
    s = F.normalize(f_s, dim=1).flatten(2).transpose(1, 2).reshape(B * N, -1)
    t = F.normalize(f_t, dim=1).flatten(2).transpose(1, 2).reshape(B * N, -1)
    log_s = F.log_softmax((s @ s.T / 0.1).view(B * N, B, N), -1)
    log_t = F.log_softmax((t @ t.T / 0.1).view(B * N, B, N), -1)
    dense, = torch.autograd.grad((log_t.exp() * (log_t - log_s)).sum() / (N * B * B), f_s)
    with frkd_kernels.use_backend(backend):
        tiled, = torch.autograd.grad(minibatch_pixel_relation(f_s, f_t, 0.1), f_s)
    torch.testing.assert_close(tiled, dense)


# --- CIRKD memory banks -------------------------------------------------------------------------

def memory_module(K=3, C_s=3, C_t=4, P=40, R=5):
    return MemoryContrast(num_classes=K, student_channels=C_s, teacher_channels=C_t, lambda_memory_pixel=0.1,
                          lambda_memory_region=0.2, contrast_temperature=0.1, contrast_kd_temperature=1.5,
                          pixel_memory_size=P, region_memory_size=R, pixel_contrast_size=K * P,
                          region_contrast_size=K * R)


def test_enqueue_matches_cirkd_ring_buffers():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    K, P, R = 3, 40, 5
    mem = memory_module(K=K, P=P, R=R)
    pixel_bank, region_bank = f64(mem.pixel_bank).copy(), f64(mem.region_bank).copy()
    pixel_ptr, region_ptr = [0] * K, [0] * K
    for step in range(4):  # enough steps to wrap both rings
        t_emb = F.normalize(torch.randn(2, 4, 3, 4, generator=gen), dim=1)
        y = labels(gen, 2, 3, 4, K)
        before = f64(mem.pixel_bank).copy()
        mem.enqueue(t_emb, y)
        naive_enqueue(pixel_bank, pixel_ptr, region_bank, region_ptr, t_emb, y, K)
        np.testing.assert_allclose(f64(mem.region_bank), region_bank, rtol=1e-6, atol=1e-6)
        assert mem.region_ptr.tolist() == region_ptr and mem.pixel_ptr.tolist() == pixel_ptr
        for k in range(K):  # same rows in the same slots, up to their order within one write
            changed = np.nonzero(np.any(f64(mem.pixel_bank)[k] != before[k], axis=1) |
                                 np.any(pixel_bank[k] != before[k], axis=1))[0]
            np.testing.assert_allclose(sorted_rows(f64(mem.pixel_bank)[k, changed]),
                                       sorted_rows(pixel_bank[k, changed]), rtol=1e-6, atol=1e-6)


def test_pixel_bank_keeps_at_most_16_pixels_per_class_and_image():
    torch.manual_seed(1)
    mem = memory_module(K=2, P=40)
    t_emb = F.normalize(torch.randn(1, 4, 5, 5), dim=1)
    y = torch.zeros(1, 5, 5, dtype=torch.long)  # 25 pixels of class 0
    before = mem.pixel_bank.clone()
    mem.enqueue(t_emb, y)
    written = (mem.pixel_bank[0] != before[0]).any(1)
    assert written.tolist() == [True] * 16 + [False] * 24 and mem.pixel_ptr.tolist() == [16, 0]
    pixels = t_emb[0].flatten(1).T
    dist = torch.cdist(mem.pixel_bank[0, :16], pixels)
    assert (dist.min(1).values < 1e-6).all() and dist.argmin(1).unique().numel() == 16  # 16 distinct pixels


@pytest.mark.parametrize("cirkd_enqueue", [False, True])
def test_pixel_bank_takes_the_class_pixels_or_cirkds_raster_positions(cirkd_enqueue):
    """Class 1 fills the bottom 2 rows of a 6×4 image (8 pixels, raster positions 16..23). frkd enqueues
    those 8 pixels; CIRKD's code (``this_feat[:, perm[:K]]``, K = min(8, 16)) takes positions 0..7,
    which are class 0's."""
    torch.manual_seed(4)
    mem = MemoryContrast(num_classes=2, student_channels=3, teacher_channels=4, lambda_memory_pixel=0.1,
                         lambda_memory_region=0.1, contrast_temperature=0.1, contrast_kd_temperature=1.0,
                         pixel_memory_size=40, region_memory_size=5, pixel_contrast_size=8, region_contrast_size=8,
                         pixel_memory_cirkd_enqueue=cirkd_enqueue)
    t_emb = F.normalize(torch.randn(1, 4, 6, 4), dim=1)
    y = torch.zeros(1, 6, 4, dtype=torch.long)
    y[0, 4:] = 1
    mem.enqueue(t_emb, y)
    pixels = t_emb[0].flatten(1).T  # 24×4 in raster order
    assert mem.pixel_ptr.tolist() == [16, 8]
    expected = pixels[:8] if cirkd_enqueue else pixels[16:]
    np.testing.assert_allclose(sorted_rows(f64(mem.pixel_bank[1, :8])), sorted_rows(f64(expected)), atol=1e-6)
    class0 = torch.cdist(mem.pixel_bank[0, :16], pixels).argmin(1)  # 16 distinct positions among 0..15 (CIRKD)
    assert class0.unique().numel() == 16 and (class0 < 16).all()


def test_memory_terms_match_naive_contrast_over_the_whole_bank():
    """With contrast sizes ≥ the banks, every slot is a negative (their order does not matter)."""
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(4)
    K = 3
    mem = memory_module(K=K).double()
    f_s = make(gen, 2, 3, 3, 4, grad=False).double().requires_grad_(True)
    f_t = make(gen, 2, 4, 3, 4, grad=False).double()
    y = labels(gen, 2, 3, 4, K)
    pixel_bank, region_bank = f64(mem.pixel_bank).copy(), f64(mem.region_bank).copy()
    head = copy.deepcopy(mem.head)
    out = mem(SegOutput(None, None, f_s), SegOutput(None, None, f_t), y)
    t_emb = F.normalize(f_t, dim=1)
    naive_enqueue(pixel_bank, [0] * K, region_bank, [0] * K, t_emb, y, K)
    s_proj = f64(head(f_s))
    anchors = [(b, i, j) for b in range(2) for i in range(3) for j in range(4) if 0 <= y[b, i, j] < K]
    s_rows = [unit(s_proj[b, :, i, j]) for b, i, j in anchors]
    t_rows = [unit(f64(f_t)[b, :, i, j]) for b, i, j in anchors]
    want_pixel = 0.1 * naive_memory_relation(s_rows, t_rows, pixel_bank.reshape(-1, 4), 0.1, 1.5)
    want_region = 0.2 * naive_memory_relation(s_rows, t_rows, region_bank.reshape(-1, 4), 0.1, 1.5)
    assert out["memory_pixel"].item() == pytest.approx(want_pixel, rel=1e-6)
    assert out["memory_region"].item() == pytest.approx(want_region, rel=1e-6)
    (out["memory_pixel"] + out["memory_region"]).backward()
    assert f_s.grad.abs().sum() > 0 and all(p.grad is not None for p in mem.head.parameters())


def test_memory_relation_gradcheck():
    torch.manual_seed(3)
    mem = memory_module().double()
    gen = torch.Generator().manual_seed(5)
    s = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=1).requires_grad_(True)
    t = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=1)
    negatives = mem.pixel_bank[:, :7].reshape(-1, 4)
    assert torch.autograd.gradcheck(lambda a: mem.relation(a, t, negatives), (s,))


# --- adversarial term ---------------------------------------------------------------------------

def test_discriminator_shape_follows_cirkd():
    d = Discriminator(19)
    assert d(torch.randn(2, 19, 64, 128)).shape == (2, 1, 1, 5)  # 64×128 / 16 = 4×8, then a 4×4 conv
    assert d(torch.randn(2, 19, 8, 8)).shape == (2, 1, 1, 1)  # toy logits are upsampled to 64


def test_discriminator_width_is_an_option_and_the_synthetic_benchmark_narrows_it():
    def first_and_last_widths(loss):
        convs = [m for m in loss.components["adversarial"].discriminator.body if isinstance(m, torch.nn.Conv2d)]
        return convs[0].out_channels, convs[-1].out_channels

    common = dict(num_classes=3, student_channels=2, teacher_channels=2, lambda_adv=0.001, lambda_d=0.1)
    assert first_and_last_widths(build_loss("kd", **common)) == (64, 512)  # CIRKD's
    assert first_and_last_widths(build_loss("kd", d_width=8, **common)) == (8, 64)
    assert resolved_loss_options("cwd", {}, "synthetic")["d_width"] == 8
    assert resolved_loss_options("cwd", {}, "citys")["d_width"] == 64
    with pytest.raises(ValueError, match="--d-width must be an integer >= 8"):
        build_loss("kd", d_width=4, **common)


@pytest.mark.parametrize("adv_type", ["hinge", "wgan-gp"])
def test_adversarial_terms_follow_the_formulas(adv_type):
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(6)
    K = 3
    loss = build_loss("kd", num_classes=K, student_channels=2, teacher_channels=2, lambda_kd=0.0,
                      lambda_adv=0.001, lambda_d=0.1, adv_type=adv_type).eval()  # eval: D is a fixed function
    z_s, z_t = make(gen, 2, K, 4, 4), make(gen, 2, K, 4, 4, grad=False)
    feat = torch.zeros(2, 2, 4, 4)
    student, teacher = SegOutput(z_s, None, feat), SegOutput(z_t, None, feat)
    D = loss.components["adversarial"].discriminator = Discriminator(K, width=8).eval()  # CIRKD's is 64 wide: slow
    out = loss(student, teacher, torch.zeros(2, 4, 4, dtype=torch.long))
    assert set(out) == {"adv"}
    assert out["adv"].item() == pytest.approx(-0.001 * D(z_s).mean().item(), rel=1e-5)
    out["adv"].backward()
    assert z_s.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator_parameters())  # the student step leaves D alone
    assert {id(p) for p in loss.discriminator_parameters()} == {id(p) for p in D.parameters()}

    torch.manual_seed(7)
    d_loss = loss.discriminator_loss(student, teacher)
    real, fake = D(z_t).detach(), D(z_s).detach()
    if adv_type == "hinge":  # CIRKD CriterionAdv('hinge')
        expected = 0.1 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    else:  # IFVD: WGAN critic + 10·gradient penalty at a random mix per image
        torch.manual_seed(7)
        a = torch.rand(2, 1, 1, 1)
        mixed = (a * z_t + (1 - a) * z_s.detach()).requires_grad_(True)
        g, = torch.autograd.grad(D(mixed).sum(), mixed)
        gp = sum((g[b].norm() - 1) ** 2 for b in range(2)) / 2
        expected = 0.1 * (fake.mean() - real.mean() + 10.0 * gp)
    assert d_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    z_s.grad = None
    d_loss.backward()
    assert z_s.grad is None  # the discriminator step sees detached student logits
    assert all(p.grad is not None for p in loss.discriminator_parameters())


def test_losses_without_a_discriminator_say_so():
    loss = build_loss("kd", num_classes=3, student_channels=2, teacher_channels=2)
    assert loss.discriminator_parameters() == []
    with pytest.raises(RuntimeError, match="has no discriminator"):
        loss.discriminator_loss(None, None)


# --- recipes: terms and totals ---------------------------------------------------------------------

CIRKD_SCRIPTS = {  # the weights of CIRKD's scripts (train_scripts/train_kd/*.sh, train_cirkd.py defaults)
    "kd": {"lambda_kd": 1.0},
    "ifvd": {"lambda_kd": 1.0, "lambda_ifv": 20.0, "lambda_adv": 0.001, "lambda_d": 0.1},
    "cwd": {"lambda_kd": 1.0, "lambda_cwd_fea": 50.0, "lambda_cwd_logit": 3.0, "lambda_adv": 0.001, "lambda_d": 0.1},
    "fitnet": {"lambda_kd": 1.0, "lambda_fitnet": 10.0},
    "cirkd": {"lambda_kd": 1.0, "lambda_minibatch_pixel": 1.0, "lambda_memory_pixel": 0.1,
              "lambda_memory_region": 0.1},
}


@pytest.mark.parametrize("name", sorted(CIRKD_SCRIPTS))
def test_recipe_weights_are_cirkds(name):
    resolved = resolved_loss_options(name, {})
    weights = {k: v for k, v in resolved.items() if k.startswith("lambda_") and k != "lambda_gp" and v != 0}
    assert weights == CIRKD_SCRIPTS[name]
    assert resolved["kd_temperature"] == 1.0 and resolved["cwd_temperature"] == 4.0
    assert resolved["contrast_temperature"] == 0.1 and resolved["adv_type"] == "hinge"


def test_per_dataset_overrides():
    assert resolved_loss_options("cirkd", {}, "voc")["lambda_memory_pixel"] == 0.01  # train_cirkd/voc/*.sh
    assert resolved_loss_options("cirkd", {}, "voc")["lambda_memory_region"] == 0.01
    assert resolved_loss_options("cirkd", {}, "cityscapes")["lambda_memory_pixel"] == 0.1
    assert resolved_loss_options("frkd", {"lambda_intra": 3.0}, "synthetic")["lambda_intra"] == 3.0
    assert set(DATASET_DEFAULTS) == {"voc", "synthetic", "cityscapes", "ade20k", "coco_stuff_164k"}
    assert set(DATASET_DEFAULTS["cityscapes"]) == {"cirkdv2"}  # scripts/train_cirkdv2 only


EXPECTED_TERMS = {
    "none": set(), "kd": {"kd"}, "ifvd": {"kd", "ifv", "adv"}, "cwd": {"kd", "cwd_fea", "cwd_logit", "adv"},
    "fitnet": {"kd", "fitnet"}, "cirkd": {"kd", "minibatch_pixel", "memory_pixel", "memory_region"},
    "idd": {"idd"}, "frkd": {"feat", "intra", "inter", "kd"}, "skd": {"kd", "skd", "adv"}, "at": {"kd", "at"},
    "dsd": {"psd", "csd"},
    "cirkdv2": {"kd", "minibatch_pixel", "memory_pixel", "memory_region", "minibatch_channel", "memory_channel"},
}


def recipe_case(seed=8, B=2, K=3, C_s=3, C_t=4, H=3, W=5):
    gen = torch.Generator().manual_seed(seed)
    student = SegOutput(make(gen, B, K, H, W, grad=False), None, make(gen, B, C_s, H, W, grad=False))
    teacher = SegOutput(make(gen, B, K, H, W, grad=False), None, make(gen, B, C_t, H, W, grad=False))
    y = labels(gen, B, H, W, K)
    aux_s, aux_t = make(gen, B, K, H, W, grad=False), make(gen, B, K, H, W, grad=False)  # DSD's aux logits
    return student._replace(aux=aux_s), teacher._replace(aux=aux_t), y


def naive_terms(name, loss, student, teacher, y, K):
    """The recipe's terms from the naive references, weighted by the recipe's λ."""
    o = resolved_loss_options(name, {})
    parts = loss.components
    want = {}
    if "kd" in EXPECTED_TERMS[name] and name != "frkd":
        want["kd"] = o["lambda_kd"] * naive_pixel_kd(student.logits, teacher.logits)
    if name == "ifvd":
        want["ifv"] = o["lambda_ifv"] * naive_ifv(student.feat, teacher.feat, y, K)
    if name == "cwd":
        aligned = torch.from_numpy(naive_conv1x1(parts["cwd_fea"].align.weight, student.feat))
        want["cwd_fea"] = o["lambda_cwd_fea"] * naive_cwd(aligned, teacher.feat, 4.0, channels=student.feat.shape[1])
        want["cwd_logit"] = o["lambda_cwd_logit"] * naive_cwd(student.logits, teacher.logits, 4.0, channels=K)
    if "adv" in EXPECTED_TERMS[name]:
        want["adv"] = -o["lambda_adv"] * parts["adversarial"].discriminator(student.logits).mean().item()
    if name == "fitnet":
        want["fitnet"] = o["lambda_fitnet"] * naive_fitnet(parts["fitnet"].phi.weight, student.feat, teacher.feat)
    if name in ("cirkd", "cirkdv2"):
        want["minibatch_pixel"] = o["lambda_minibatch_pixel"] * naive_minibatch(student.feat, teacher.feat, 0.1)
    d = lambda out: [t.double() for t in (out.aux, out.feat, out.logits)]  # noqa: E731
    if name == "skd":
        want["skd"] = o["lambda_skd"] * float(cirkd_naive.naive_skd(d(student)[1], d(teacher)[1]))
    if name == "at":
        want["at"] = o["lambda_at"] * float(cirkd_naive.naive_at(d(student)[1], d(teacher)[1]))
    if name == "dsd":
        want["psd"] = o["lambda_psd"] * float(cirkd_naive.naive_psd(d(student), d(teacher)))
        want["csd"] = o["lambda_csd"] * float(cirkd_naive.naive_csd(d(student)[2], d(teacher)[2]))
    if name == "idd":
        protos_s, counts = naive.prototype_pool(student.feat, y, K)
        protos_t, _ = naive.prototype_pool(teacher.feat, y, K)
        pairs = [(b, i, j) for b in range(y.shape[0]) for i in range(K) for j in range(K)
                 if i != j and counts[b, i] > 0 and counts[b, j] > 0]
        d = lambda c, b, i, j: 1 - float(c[b, i] @ c[b, j]) / float(c[b, i].norm() * c[b, j].norm())  # noqa: E731
        want["idd"] = o["lambda_idd"] * sum((d(protos_s, *q) - d(protos_t, *q)) ** 2 for q in pairs) / len(pairs)
    return want


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_recipe_terms_are_the_weighted_naive_terms(name):
    torch.manual_seed(9)
    student, teacher, y = recipe_case()
    loss = build_loss(name, num_classes=3, student_channels=3, teacher_channels=4, pixel_memory_size=32,
                      region_memory_size=8).eval()
    out = loss(student, teacher, y)
    assert set(out) == EXPECTED_TERMS[name]
    for term, value in naive_terms(name, loss, student, teacher, y, 3).items():
        assert out[term].item() == pytest.approx(value, rel=1e-4, abs=1e-7), f"{name}.{term}"


# --- CLI: CIRKD flags and composition ---------------------------------------------------------------

def parse(*argv):
    return add_loss_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_cirkd_flags_parse_to_options():
    args = parse("--method", "cwd", "--lambda-kd", "1.0", "--lambda-d", "0.1", "--lambda-adv", "0.001",
                 "--lambda-cwd-fea", "50.", "--lambda-cwd-logit", "3.", "--lambda-memory-pixel", "0.01",
                 "--lambda-memory-region", "0.02", "--lambda-minibatch-pixel", "1", "--contrast-temperature", "0.2",
                 "--pixel-memory-size", "100", "--adv-type", "wgan-gp")
    assert loss_options(args) == {"lambda_kd": 1.0, "lambda_d": 0.1, "lambda_adv": 0.001, "lambda_cwd_fea": 50.0,
                                  "lambda_cwd_logit": 3.0, "lambda_memory_pixel": 0.01, "lambda_memory_region": 0.02,
                                  "lambda_minibatch_pixel": 1.0, "contrast_temperature": 0.2,
                                  "pixel_memory_size": 100, "adv_type": "wgan-gp"}
    assert loss_options(parse("--method", "kd", "--lambda-cwd", "2"))["lambda_cwd_logit"] == 2.0  # old name


def test_flags_add_terms_to_a_recipe():
    options = loss_options(parse("--method", "kd", "--lambda-ifv", "20"))
    assert options == {"lambda_ifv": 20.0}
    loss = build_loss("kd", num_classes=3, student_channels=3, teacher_channels=4, **options)
    student, teacher, y = recipe_case()
    assert set(loss(student, teacher, y)) == {"kd", "ifv"}
    assert resolved_loss_options("kd", options)["lambda_ifv"] == 20.0
    no_kd = build_loss("ifvd", num_classes=3, student_channels=3, teacher_channels=4, lambda_kd=0.0, lambda_adv=0.0,
                       lambda_d=0.0)
    assert set(no_kd(student, teacher, y)) == {"ifv"} and no_kd.discriminator_parameters() == []


def test_frkd_recipe_with_cirkd_terms_keeps_its_fg_kd():
    loss = build_loss("frkd", num_classes=3, student_channels=3, teacher_channels=4, lambda_cwd_logit=3.0)
    assert list(loss.components) == ["frkd", "cwd_logit"] and loss.components["frkd"].lambda_kd == 1.0
    plain = build_loss("frkd", num_classes=3, student_channels=3, teacher_channels=4, kd_pixels="all")
    assert list(plain.components) == ["kd", "frkd"] and plain.components["frkd"].lambda_kd == 0.0


@pytest.mark.parametrize("argv, message", [
    (("--method", "kd", "--lambda-ifv", "-1"), "--lambda-ifv must be >= 0, got -1.0"),
    (("--method", "frkd", "--tau", "1.5"), "--tau must lie in \\[0, 1\\], got 1.5"),
])
def test_bad_option_values_are_named(argv, message):
    args = parse(*argv)
    with pytest.raises(ValueError, match=message):
        build_loss(args.method, num_classes=3, student_channels=3, teacher_channels=4, **loss_options(args))


def test_help_names_the_cirkd_flag_and_the_recipe_defaults():
    text = add_loss_args(argparse.ArgumentParser()).format_help()
    assert "CIRKD --lambda-cwd-fea" in " ".join(text.split())
    assert "cwd 50" in " ".join(text.split()) and "cirkd on voc 0.01" in " ".join(text.split())
    assert set(RECIPES) == set(LOSSES)
