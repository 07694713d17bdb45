"""Distillation losses (frkd.losses): values on hand-checkable cases, an independent per-pixel
oracle for the FRKD feature terms, gradient routing (student and φ yes, teacher never), empty
sets without NaN, the registry and the CLI flags. CPU, tiny tensors.
"""
from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import naive
from frkd.losses import LOSSES, add_loss_args, build_loss, feature_terms, loss_options, option_names
from frkd.losses.base import resize_labels
from frkd.losses.frkd import masked_terms, pseudo_knowledge_filter
from frkd.models import SegOutput
from frkd_kernels import reference

TORCH_OPS = SimpleNamespace(
    prototype_pool=lambda feat, labels, num_classes, ignore_index=255:
        reference.prototype_pool(feat, labels, num_classes, ignore_index),
    class_distance_maps=lambda feat, labels, protos, counts, ignore_index=255, eps=1e-8:
        reference.class_distance_maps(feat, labels, protos, counts, ignore_index, eps)[:2],
    masked_feature_mse=reference.masked_feature_mse,
    teacher_entropy=lambda logits, temperature=1.0: reference.teacher_entropy(logits, temperature),
)


def seg(logits, feat) -> SegOutput:
    return SegOutput(logits, None, feat)


def random_pair(seed=0, B=2, K=3, C_s=4, C_t=4, H=3, W=4, grad=True):
    """(student, teacher) SegOutputs; every tensor requires grad when ``grad`` (teacher too, to
    check that none reaches it)."""
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen).requires_grad_(grad)  # noqa: E731
    student, teacher = seg(make(B, K, H, W), make(B, C_s, H, W)), seg(make(B, K, H, W), make(B, C_t, H, W))
    return student._replace(aux=make(B, K, H, W)), teacher._replace(aux=make(B, K, H, W))  # aux: DSD's


def random_labels(seed=0, B=2, H=6, W=8, K=3):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (B, H, W), generator=gen)
    y[torch.rand(B, H, W, generator=gen) < 0.2] = 255
    return y


def identity_phi(loss):
    """Every 1×1 alignment conv (φ, CWD's align) of ``loss`` set to the identity (C_s = C_t)."""
    for module in loss.modules():
        for conv in (getattr(module, "phi", None), getattr(module, "align", None)):
            if conv is not None:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(conv.weight.shape[0])[:, :, None, None])
    return loss


def phi_of(loss):
    """The φ conv of the loss's one component that has one."""
    convs = [m.phi for m in loss.modules() if hasattr(m, "phi")]
    assert len(convs) == 1
    return convs[0]


def total(terms):
    return sum(terms.values(), torch.zeros(()))


# --- hand-checkable values --------------------------------------------------------------------

NOT_ZERO_FOR_IDENTICAL = {"adv", "memory_pixel", "memory_region", "minibatch_channel", "memory_channel",
                          "channel_kd"}  # a critic, a learnt projection head (on the student side only)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_student_and_teacher_give_zero(name):
    student, _ = random_pair(grad=False)
    loss = identity_phi(build_loss(name, num_classes=3, student_channels=4, teacher_channels=4))
    terms = loss(student, student, random_labels())
    assert name == "none" or terms
    for term, value in terms.items():
        if term in NOT_ZERO_FOR_IDENTICAL:
            continue
        assert abs(value.item()) < 1e-5, f"{name}.{term} = {value.item()} for identical networks"


def test_kd_on_one_pixel_pair():
    z_t = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1)  # P_T = (3/4, 1/4)
    z_s = torch.zeros(1, 2, 1, 1)  # P_S = (1/2, 1/2)
    T = 2.0
    z_t, z_s = z_t * T, z_s * T  # the same probabilities at temperature T
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss = build_loss("kd", num_classes=2, student_channels=1, teacher_channels=1, lambda_kd=3.0, kd_temperature=T)
    feat, y = torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long)
    out = loss(seg(z_s, feat), seg(z_t, feat), y)
    assert out["kd"].item() == pytest.approx(3.0 * T * T * expected, rel=1e-5)


def test_cwd_softmax_runs_over_positions_per_channel():
    T = 4.0
    z_t = torch.tensor([[T * math.log(3.0), 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)  # channel 0: (3/4, 1/4)
    z_s = torch.zeros(1, 2, 1, 2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # channel 1 adds 0
    loss = build_loss("kd", num_classes=2, student_channels=1, teacher_channels=1, lambda_kd=0.0, lambda_cwd_logit=3.0)
    feat, y = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long)
    out = loss(seg(z_s, feat), seg(z_t, feat), y)
    assert set(out) == {"cwd_logit"}
    assert out["cwd_logit"].item() == pytest.approx(3.0 * kl / (1 * 2) * T * T, rel=1e-5)


def test_fitnet_is_the_mean_squared_error_after_phi():
    student, teacher = random_pair(grad=False)
    loss = identity_phi(build_loss("fitnet", num_classes=3, student_channels=4, teacher_channels=4, lambda_fitnet=2.0))
    shifted = seg(teacher.logits, teacher.feat - 0.5)
    out = loss(seg(student.logits, teacher.feat), shifted, random_labels())
    assert out["fitnet"].item() == pytest.approx(2.0 * 0.5 ** 2, rel=1e-5)


def two_class_example():
    """One 2×2 image, C = 2: labels [[0, 0], [1, 255]].

    Student: class 0 pixels (1,0), (0,1) -> prototype (½,½), intra 1/√2 each; class 1 pixel (1,0).
    Teacher: class 0 pixels (1,0), (1,0) -> intra 1; class 1 pixel (0,1).
    """
    y = torch.tensor([[[0, 0], [1, 255]]])
    f_s = torch.tensor([[[1.0, 0.0], [1.0, 3.0]], [[0.0, 1.0], [0.0, 3.0]]])[None]
    f_t = torch.tensor([[[1.0, 1.0], [0.0, 2.0]], [[0.0, 0.0], [1.0, 2.0]]])[None]
    return f_s, f_t, y


def test_ifvd_two_class_example_uses_the_cirkd_mean():
    f_s, f_t, y = two_class_example()
    loss = build_loss("ifvd", num_classes=2, student_channels=2, teacher_channels=2)
    out = loss(seg(torch.zeros(1, 2, 2, 2), f_s), seg(torch.zeros(1, 2, 2, 2), f_t), y)
    expected = 20.0 * 2 * (1 - 1 / math.sqrt(2)) ** 2 / 4  # ignored pixel adds 0 but counts
    assert out["ifv"].item() == pytest.approx(expected, rel=1e-5)


def test_idd_two_class_example():
    f_s, f_t, y = two_class_example()
    loss = build_loss("idd", num_classes=3, student_channels=2, teacher_channels=2, lambda_idd=1.0)
    out = loss(seg(torch.zeros(1, 3, 2, 2), f_s), seg(torch.zeros(1, 3, 2, 2), f_t), y)
    d_s = 1 - 1 / math.sqrt(2)  # cos((½,½), (1,0)); teacher: cos((1,0), (0,1)) = 0, D_T = 1
    assert out["idd"].item() == pytest.approx((d_s - 1.0) ** 2, rel=1e-5)  # 2 ordered pairs, class 2 absent


def test_frkd_intra_two_class_example_divides_by_valid_pixels():
    f_s, f_t, y = two_class_example()
    z_t = torch.zeros(1, 2, 2, 2)
    terms = feature_terms(f_s, f_t, z_t, y, num_classes=2)
    cirkd = feature_terms(f_s, f_t, z_t, y, num_classes=2, ifv_cirkd_mean=True)
    assert terms["intra"].item() == pytest.approx(2 * (1 - 1 / math.sqrt(2)) ** 2 / 3, rel=1e-5)
    assert cirkd["intra"].item() == pytest.approx(2 * (1 - 1 / math.sqrt(2)) ** 2 / 4, rel=1e-5)


def filter_example():
    """One 1×4 image, K = 2, labels [0, 0, 0, 255]; teacher: confident right, confident wrong
    (pseudo), uncertain right, ignored."""
    z_t = torch.tensor([[5.0, 0.0, 0.1, 0.0], [0.0, 5.0, 0.0, 0.0]]).reshape(1, 2, 1, 4)
    y = torch.tensor([[[0, 0, 0, 255]]])
    return z_t, y


@pytest.mark.parametrize("options, fg, bg", [
    ({}, [1, 0, 0, 0], [0, 0, 1, 1]),
    ({"pseudo_filter": False}, [1, 1, 0, 0], [0, 0, 1, 1]),
    ({"fgbg": False}, [1, 0, 1, 1], [0, 0, 0, 0]),
    ({"tau": 1.0}, [1, 0, 1, 0], [0, 0, 0, 1]),
])
def test_pseudo_knowledge_filter(options, fg, bg):
    z_t, y = filter_example()
    valid, got_fg, got_bg = pseudo_knowledge_filter(z_t, y, num_classes=2, **options)
    assert valid.flatten().tolist() == [True, True, True, False]
    assert got_fg.flatten().int().tolist() == fg
    assert got_bg.flatten().int().tolist() == bg


def test_entropy_threshold_is_per_image():
    # image 0 is confident everywhere, image 1 uncertain everywhere; each keeps its surer pixel
    gaps = torch.tensor([[5.0, 4.0], [0.2, 0.1]])
    z_t = torch.stack([gaps, torch.zeros_like(gaps)], dim=1)[:, :, None, :]  # B×2×1×2, pred 0
    y = torch.zeros(2, 1, 2, dtype=torch.long)
    _, fg, _ = pseudo_knowledge_filter(z_t, y, num_classes=2)
    assert fg[:, 0].tolist() == [[True, False], [True, False]]


def test_frkd_feature_weight_on_the_filter_example():
    z_t, y = filter_example()
    f_t = torch.zeros(1, 2, 1, 4)
    f_s = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4).expand(1, 2, 1, 4)
    d = [1.0, 4.0, 9.0, 16.0]  # Σ_c (s − t)² / C per pixel
    alpha, beta, gamma = 1.5, 0.25, 2.0
    out = feature_terms(f_s, f_t, z_t, y, num_classes=2, alpha=alpha, beta=beta, gamma=gamma)
    # fg = coord = {0} (one class present: inter_T = −1, margin > 0); bg = {2, 3}; pixel 1 dropped
    assert out["feat"].item() == pytest.approx((alpha + gamma) * d[0] + beta * (d[2] + d[3]) / 2, rel=1e-5)


def test_coordinate_mask_drops_pixels_nearer_another_class():
    # labels [0, 0, 0, 1]; teacher pixel 2 = (0, 1) is labelled 0 but lies on class 1's prototype
    y = torch.tensor([[[0, 0, 0, 1]]])
    f_t = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).reshape(1, 2, 1, 4)
    f_s = f_t + torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    d = torch.tensor([1.0, 4.0, 9.0, 16.0])
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    common = dict(num_classes=2, alpha=0.0, beta=0.0, gamma=1.0, wanted=("feat",))
    masked = masked_terms(f_s, f_t, y, valid, valid, ~valid, **common)["feat"]
    unmasked = masked_terms(f_s, f_t, y, valid, valid, ~valid, coord_mask=False, **common)["feat"]
    assert masked.item() == pytest.approx(d[[0, 1, 3]].mean().item(), rel=1e-5)
    assert unmasked.item() == pytest.approx(d.mean().item(), rel=1e-5)


def test_frkd_kd_covers_foreground_pixels_only():
    z_t, y = filter_example()
    z_s = torch.zeros(1, 2, 1, 4)
    feat = torch.zeros(1, 2, 1, 4)
    loss = build_loss("frkd", num_classes=2, student_channels=2, teacher_channels=2,
                      lambda_feat=0.0, lambda_intra=0.0, lambda_inter=0.0)
    out = loss(seg(z_s, feat), seg(z_t, feat), y)
    p = torch.softmax(z_t[0, :, 0, 0], 0)
    expected = (p * (p.log() - math.log(0.5))).sum()  # pixel 0 is the only fg pixel
    assert set(out) == {"kd"}
    assert out["kd"].item() == pytest.approx(expected.item(), rel=1e-5)


# --- FRKD feature terms against an independent per-pixel oracle -------------------------------

def oracle_feature_terms(f_s, f_t, z_t, y, K, alpha=1.0, beta=0.25, gamma=1.0, delta=0.0):
    """DESIGN §3 steps 1-6 one pixel and one class pair at a time, on tests/naive.py's ops."""
    B, _, H, W = f_s.shape
    ent, pred = naive.teacher_entropy(z_t)
    protos_s, counts = naive.prototype_pool(f_s, y, K)
    protos_t, _ = naive.prototype_pool(f_t, y, K)
    intra_s = naive.class_distance_maps(f_s, y, protos_s, counts)[0]
    intra_t, inter_t, _ = naive.class_distance_maps(f_t, y, protos_t, counts)
    pixels = [(b, i, j) for b in range(B) for i in range(H) for j in range(W)]
    valid = {p: 0 <= int(y[p]) < K for p in pixels}
    fg, bg, coord = set(), set(), set()
    for b in range(B):
        mine = [p for p in pixels if p[0] == b and valid[p]] or [p for p in pixels if p[0] == b]
        tau = sum(float(ent[p]) for p in mine) / len(mine)
        for p in (p for p in pixels if p[0] == b):
            pseudo = valid[p] and int(pred[p]) != int(y[p])
            if valid[p] and not pseudo and float(ent[p]) <= tau:
                fg.add(p)
                if float(intra_t[p] - inter_t[p]) > delta:
                    coord.add(p)
            elif not pseudo:
                bg.add(p)
    d = {(b, i, j): float(((f_s[b, :, i, j].double() - f_t[b, :, i, j].double()) ** 2).mean()) for b, i, j in pixels}
    feat = sum(w * sum(d[p] for p in s) / max(1, len(s)) for w, s in ((alpha, fg), (beta, bg), (gamma, coord)))
    n_valid = sum(valid.values())
    intra = sum(float(intra_s[p] - intra_t[p]) ** 2 for p in pixels if valid[p]) / max(1, n_valid)

    def dist(c, b, i, j):
        return 1.0 - naive._cos(naive._f64(c[b, i]), naive._f64(c[b, j]), 1e-8)[0]

    present = [[k for k in range(K) if counts[b, k] > 0] for b in range(B)]
    pairs = [(b, i, j) for b in range(B) for i in present[b] for j in present[b] if i != j]
    inter = sum((dist(protos_s, *q) - dist(protos_t, *q)) ** 2 for q in pairs) / max(1, len(pairs))
    return {"feat": feat, "intra": intra, "inter": inter}


@pytest.mark.parametrize("seed", [0, 1])
def test_feature_terms_match_the_per_pixel_oracle(seed):
    student, teacher = random_pair(seed, B=2, K=4, C_s=3, C_t=3, H=3, W=4, grad=False)
    y = random_labels(seed, B=2, H=3, W=4, K=4)
    got = feature_terms(student.feat, teacher.feat, teacher.logits, y, num_classes=4, alpha=0.7, gamma=1.3)
    want = oracle_feature_terms(student.feat, teacher.feat, teacher.logits, y, 4, alpha=0.7, gamma=1.3)
    for name in want:
        assert got[name].item() == pytest.approx(want[name], rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("ops", [None, TORCH_OPS], ids=["default_backend", "pure_torch"])
def test_feature_terms_values_and_gradients_match_the_oracle(ops):
    """Each namespace against the per-pixel oracle, never against each other: without the
    extension the default backend is the pure-torch one, and comparing the two proves nothing."""
    student, teacher = random_pair(3, K=4, C_t=4, grad=False)
    y = random_labels(3, H=3, W=4, K=4)
    f_s = student.feat.detach().clone().requires_grad_(True)
    terms = feature_terms(f_s, teacher.feat, teacher.logits, y, num_classes=4, ops=ops)
    total(terms).backward()
    want = oracle_feature_terms(f_s.detach(), teacher.feat, teacher.logits, y, 4)
    assert set(terms) == set(want) == {"feat", "intra", "inter"}
    for name in want:
        assert terms[name].item() == pytest.approx(want[name], rel=1e-4, abs=1e-6), name

    def oracle_total(x):
        return sum(oracle_feature_terms(x, teacher.feat, teacher.logits, y, 4).values())

    step, base = 1e-5, f_s.detach().double()
    numeric = torch.zeros_like(base)
    for i in range(base.numel()):
        delta = torch.zeros_like(base).view(-1)
        delta[i] = step
        delta = delta.view_as(base)
        numeric.view(-1)[i] = (oracle_total(base + delta) - oracle_total(base - delta)) / (2 * step)
    torch.testing.assert_close(f_s.grad.double(), numeric, rtol=1e-3, atol=1e-5)


# --- gradients --------------------------------------------------------------------------------

USES = {"kd": {"logits"}, "cwd": {"logits", "feat"}, "fitnet": {"logits", "feat", "phi"},
        "ifvd": {"logits", "feat"}, "idd": {"feat"}, "frkd": {"logits", "feat", "phi"}, "cirkd": {"logits", "feat"},
        "skd": {"logits", "feat"}, "at": {"logits", "feat"}, "cirkdv2": {"logits", "feat"}}
SMALL_BANKS = dict(pixel_memory_size=32, region_memory_size=8)


@pytest.mark.parametrize("name", sorted(USES))
def test_gradient_reaches_the_student_and_never_the_teacher(name):
    student, teacher = random_pair(4, C_s=3, C_t=5)
    extra = {"lambda_cwd_logit": 1.0} if name == "frkd" else {}
    loss = build_loss(name, num_classes=3, student_channels=3, teacher_channels=5, **SMALL_BANKS, **extra)
    total(loss(student, teacher, random_labels(4))).backward()
    grads = {"logits": student.logits.grad, "feat": student.feat.grad,
             "phi": phi_of(loss).weight.grad if "phi" in USES[name] else None}
    for part in USES[name]:
        assert grads[part] is not None and grads[part].abs().sum() > 0, f"{name}: no gradient on {part}"
    for t in teacher:
        if t is not None:
            assert t.grad is None or not t.grad.any(), f"{name}: gradient reached the teacher"


def test_frkd_trains_in_bfloat16_against_a_float32_teacher():
    student, teacher = random_pair(5, grad=False)
    student = seg(student.logits.bfloat16().requires_grad_(), student.feat.bfloat16().requires_grad_())
    loss = build_loss("frkd", num_classes=3, student_channels=4, teacher_channels=4).bfloat16()
    terms = loss(student, teacher, random_labels(5))
    total(terms).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert student.feat.grad.dtype == torch.bfloat16 and torch.isfinite(student.feat.grad).all()


# --- empty sets -------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", ["all_ignored", "one_class", "out_of_range"])
@pytest.mark.parametrize("name", sorted(USES))
def test_empty_sets_give_finite_terms_and_gradients(name, labels):
    student, teacher = random_pair(6, C_s=3, C_t=5)
    y = {"all_ignored": torch.full((2, 6, 8), 255), "one_class": torch.ones(2, 6, 8, dtype=torch.long),
         "out_of_range": torch.full((2, 6, 8), 7)}[labels]
    loss = build_loss(name, num_classes=3, student_channels=3, teacher_channels=5, **SMALL_BANKS)
    terms = loss(student, teacher, y)
    total(terms).backward()
    for term, value in terms.items():
        assert torch.isfinite(value), f"{name}.{term} = {value} with {labels} labels"
    for t in (student.logits, student.feat):
        assert t.grad is None or torch.isfinite(t.grad).all()
    for term in ("inter", "idd", "memory_pixel", "memory_region"):
        if labels != "one_class" and term in terms:
            assert terms[term].item() == 0.0, term


# --- labels, registry, CLI --------------------------------------------------------------------

def test_labels_are_resized_by_nearest_floor_rule():
    y = torch.arange(7 * 9).reshape(1, 7, 9)
    rows = torch.arange(3) * 7 // 3
    cols = torch.arange(4) * 9 // 4
    assert torch.equal(resize_labels(y, (3, 4)), y[:, rows][:, :, cols])
    assert torch.equal(resize_labels(y, (3, 4)), F.interpolate(y[:, None].float(), (3, 4))[:, 0].long())


def test_unknown_loss_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown loss recipe 'nope'.*frkd"):
        build_loss("nope", num_classes=3, student_channels=4, teacher_channels=4)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown loss option.*lambda_nope.*lambda_kd"):
        build_loss("kd", num_classes=3, student_channels=4, teacher_channels=4, lambda_nope=1.0)


def test_bad_channel_count_is_named():
    with pytest.raises(ValueError, match="student_channels"):
        build_loss("frkd", num_classes=3, student_channels=0, teacher_channels=4)


def parse(*argv):
    return add_loss_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_cli_flags_and_switches_reach_the_frkd_options():
    options = loss_options(parse("--method", "frkd", "--lambda-intra", "5", "--lambda-inter", "6", "--tau", "0.3",
                                 "--no-fgbg", "--frkd-beta", "0.5"))
    assert options == {"lambda_intra": 5.0, "lambda_inter": 6.0, "tau": 0.3, "no_fgbg": True, "frkd_beta": 0.5}
    frkd = build_loss("frkd", num_classes=3, student_channels=4, teacher_channels=4, **options).components["frkd"]
    assert frkd.lambdas["intra"] == 5.0 and frkd.lambdas["inter"] == 6.0 and frkd.tau == 0.3 and not frkd.fgbg


def test_cli_unset_flags_take_the_method_defaults():
    for name in LOSSES:
        assert loss_options(parse("--method", name)) == {}
    loss = build_loss("frkd", num_classes=3, student_channels=4, teacher_channels=4)
    assert list(loss.components) == ["frkd"]
    loss = loss.components["frkd"]
    assert loss.lambdas == {"feat": 1.0, "intra": 20.0, "inter": 20.0}  # docs/method.md defaults
    assert loss.lambda_kd == 1.0
    assert loss.weights == {"alpha": 1.0, "beta": 0.25, "gamma": 1.0, "delta": 0.0}


def test_cli_dataset_defaults_apply_under_the_flags():
    def with_dataset(dataset, *argv):
        args = parse(*argv)
        args.dataset = dataset
        return loss_options(args)

    # voc: CIRKD's VOC scripts lower the memory-relation weights of its recipe (frkd/losses/recipes.py)
    assert with_dataset("voc", "--method", "cirkd") == {"lambda_memory_pixel": 0.01, "lambda_memory_region": 0.01}
    assert with_dataset("voc", "--method", "cirkd", "--lambda-memory-pixel", "0.5") == {
        "lambda_memory_pixel": 0.5, "lambda_memory_region": 0.01}
    assert with_dataset("voc", "--method", "kd") == {}
    assert with_dataset("cityscapes", "--method", "cirkd") == {}


def test_cli_flag_with_method_none_is_an_error():
    with pytest.raises(ValueError, match="--lambda-kd needs a teacher, but --method none"):
        loss_options(parse("--method", "none", "--lambda-kd", "1"))


def test_every_value_flag_is_an_option_of_some_loss():
    args = vars(parse())
    accepted = set().union(*(option_names(name) for name in LOSSES))
    assert set(args) - {"method"} <= accepted
