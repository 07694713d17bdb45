"""SKD, AT, DSD and CIRKDv2's channel terms and GCN: values and gradients in float64 against naive
references written here from CIRKD's losses/{skd,at,dsd,cirkd_channel,gcn}.py, the channel bank's
rules, the recipes' weights and the terms each logs when trained."""
import json
import math
import os

import pytest
import torch

from frkd.config import build_config
from frkd.losses import build_loss, resolved_loss_options
from frkd.losses.channel import GCN, ChannelContrast
from frkd.losses.structural import (attention_transfer, category_similarity_kd, pairwise_similarity_kd,
                                    pixel_similarity_kd)
from frkd.models import SegOutput
from frkd.pipeline import run

D64 = torch.float64


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=D64).requires_grad_(True)


# --- naive references (loops over images, positions, windows) ----------------------------------------

def unit(v):
    return v / v.norm().clamp_min(1e-12)


def pool(f, k, reduce):
    """k×k window of every (ceil-mode) output position, reduced by ``reduce`` over the positions it covers."""
    B, C, H, W = f.shape
    rows = []
    for i in range(math.ceil(H / k)):
        cols = []
        for j in range(math.ceil(W / k)):
            window = f[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].reshape(B, C, -1)
            cols.append(reduce(window))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def naive_skd(f_s, f_t):
    total, count = 0.0, 0
    for b in range(f_s.shape[0]):
        ps = pool(f_s[b:b + 1], 2, lambda w: w.max(-1).values)[0].flatten(1)
        pt = pool(f_t[b:b + 1], 2, lambda w: w.max(-1).values)[0].flatten(1)
        es = [unit(ps[:, p]) for p in range(ps.shape[1])]
        et = [unit(pt[:, p]) for p in range(pt.shape[1])]
        for p in range(len(es)):
            for q in range(len(es)):
                total = total + (es[p] @ es[q] - et[p] @ et[q]) ** 2
                count += 1
    return total / count


def naive_attention(f):
    return [unit((f[b] ** 2).mean(0).flatten()) for b in range(f.shape[0])]


def naive_at(f_s, f_t):
    a_s, a_t = naive_attention(f_s), naive_attention(f_t)
    return sum(((a_s[b] - a_t[b]) ** 2).sum() for b in range(len(a_s))) / (len(a_s) * a_s[0].numel())


def naive_psd(maps_s, maps_t):
    att_s, att_t = [naive_attention(m) for m in maps_s], [naive_attention(m) for m in maps_t]
    pairs = [(n, m) for n in range(3) for m in range(n + 1, 3)]
    total = 0.0
    for n, m in pairs:
        B = len(att_s[0])
        err = sum(((unit(unit(att_s[m][b] - att_s[n][b])) - unit(unit(att_t[m][b] - att_t[n][b]))) ** 2).sum()
                  for b in range(B))
        total = total + err / (B * att_s[0][0].numel())
    return total / len(pairs)


def naive_csd(z_s, z_t):
    def gram(z):
        p = pool(z, 2, lambda w: w.mean(-1)).flatten(2)
        p = torch.stack([torch.stack([torch.softmax(p[b, k] / 4.0, 0) for k in range(p.shape[1])])
                         for b in range(p.shape[0])])
        return torch.stack([torch.stack([torch.stack([p[b, i] @ p[b, j] for j in range(p.shape[1])])
                                         for i in range(p.shape[1])]) for b in range(p.shape[0])])
    return ((gram(z_s) - gram(z_t)) ** 2).mean()


def kl_rows(t_logits, s_logits):
    """Σ over rows of KL(softmax(t) ‖ softmax(s))."""
    total = 0.0
    for t, s in zip(t_logits, s_logits):
        p, log_q = torch.softmax(t, 0), torch.log_softmax(s, 0)
        total = total + (p * (torch.log(p) - log_q)).sum()
    return total


def naive_channel(head, f_s, f_t, bank, tau=0.1, T=1.0):
    """CIRKD StudentSegChannelContrast: (mini-batch c2c, memory c2c against every bank row, channel MSE)."""
    s = head(pool(f_s, 4, lambda w: w.mean(-1))).flatten(2)
    t = pool(f_t, 4, lambda w: w.mean(-1)).flatten(2)
    B, C, _ = s.shape
    s = torch.stack([torch.stack([unit(s[b, c]) for c in range(C)]) for b in range(B)])
    t = torch.stack([torch.stack([unit(t[b, c]) for c in range(C)]) for b in range(B)])
    minibatch = sum(kl_rows(t[i] @ t[j].T / tau, s[i] @ s[j].T / tau) / C for i in range(B) for j in range(B))
    minibatch = minibatch / (B * B)
    rows_s, rows_t = s.reshape(B * C, -1), t.reshape(B * C, -1)
    memory = T * T * kl_rows(rows_t @ bank.T / tau / T, rows_s @ bank.T / tau / T) / (B * C)
    return minibatch, memory, ((s - t) ** 2).mean()


def naive_gcn(gcn, x):
    B, C, H, W = x.shape
    w = lambda conv: conv.weight[:, :, 0, 0]  # noqa: E731
    outs = []
    for b in range(B):
        X = x[b].reshape(C, -1)  # C×N
        q, k, v = w(gcn.query) @ X, w(gcn.key) @ X, w(gcn.value) @ X  # C/2×N
        A = torch.stack([torch.softmax(torch.stack([q[:, n] @ k[:, m] for m in range(X.shape[1])])
                                       / math.sqrt(C // 2), 0) for n in range(X.shape[1])])  # N×N
        graph = (v @ A.T).reshape(1, C // 2, H, W)
        outs.append(gcn.fuse(torch.cat([x[b:b + 1], gcn.expand(graph)], 1)))
    return torch.cat(outs)


def assert_value_and_grad(ours, naive, inputs):
    torch.testing.assert_close(ours, naive, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(ours, inputs, retain_graph=True),
                         torch.autograd.grad(naive, inputs, retain_graph=True)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


# --- the terms -------------------------------------------------------------------------------------

@pytest.mark.parametrize("H, W", [(4, 6), (5, 7)])  # even, and odd sides (ceil-mode edge windows)
def test_skd_matches_cirkds_pairwise_term(H, W):
    gen = torch.Generator().manual_seed(0)
    f_s, f_t = rand(gen, 2, 3, H, W), rand(gen, 2, 5, H, W)
    assert_value_and_grad(pairwise_similarity_kd(f_s, f_t), naive_skd(f_s, f_t.detach()), [f_s])
    assert torch.autograd.gradcheck(lambda a: pairwise_similarity_kd(a, f_t), (f_s,))


def test_at_matches_cirkds_attention_transfer():
    gen = torch.Generator().manual_seed(1)
    f_s, f_t = rand(gen, 2, 3, 5, 4), rand(gen, 2, 6, 5, 4)
    assert_value_and_grad(attention_transfer(f_s, f_t), naive_at(f_s, f_t.detach()), [f_s])
    assert torch.autograd.gradcheck(lambda a: attention_transfer(a, f_t), (f_s,))


@pytest.mark.parametrize("H, W", [(4, 6), (3, 5)])
def test_dsd_matches_cirkds_pixel_and_category_similarities(H, W):
    gen = torch.Generator().manual_seed(2)
    K = 4
    s = [rand(gen, 2, K, H, W), rand(gen, 2, 3, H, W), rand(gen, 2, K, H, W)]  # aux, feat, logits
    t = [rand(gen, 2, K, H, W).detach(), rand(gen, 2, 5, H, W).detach(), rand(gen, 2, K, H, W).detach()]
    assert_value_and_grad(pixel_similarity_kd(s, t), naive_psd(s, t), s)
    assert_value_and_grad(category_similarity_kd(s[2], t[2]), naive_csd(s[2], t[2]), [s[2]])
    assert torch.autograd.gradcheck(lambda *a: pixel_similarity_kd(list(a), t), tuple(s))
    assert torch.autograd.gradcheck(lambda a: category_similarity_kd(a, t[2]), (s[2],))


def channel_module(C_s=3, C_t=4, S=64, contrast=64, **weights):
    weights = {"lambda_minibatch_channel": 1.0, "lambda_memory_channel": 0.1, "lambda_channel_kd": 100.0, **weights}
    return ChannelContrast(num_classes=3, student_channels=C_s, teacher_channels=C_t, channel_memory_size=S,
                           channel_contrast_size=contrast, contrast_temperature=0.1, contrast_kd_temperature=1.0,
                           **weights).double()


@pytest.mark.parametrize("H, W", [(8, 8), (9, 6)])
def test_channel_terms_match_cirkds_channel_contrast(H, W):
    """Contrast size ≥ bank: every bank row is a negative, whatever the random pick."""
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    module = channel_module()
    f_s, f_t = rand(gen, 2, 3, H, W), rand(gen, 2, 4, H, W).detach()
    student, teacher = SegOutput(None, None, f_s), SegOutput(None, None, f_t)
    out = module(student, teacher, None)
    assert set(out) == {"minibatch_channel", "memory_channel", "channel_kd"}
    minibatch, memory, mse = naive_channel(module.head, f_s, f_t, module.channel_bank.clone())
    for name, want, weight in (("minibatch_channel", minibatch, 1.0), ("memory_channel", memory, 0.1),
                               ("channel_kd", mse, 100.0)):
        assert_value_and_grad(out[name], weight * want, [f_s])


def test_channel_bank_enqueues_before_sampling_at_most_256_rows_and_overwrites_its_last_rows():
    torch.manual_seed(4)
    module = channel_module(S=10)
    assert module.channel_bank.shape == (10, 0)
    rows = torch.nn.functional.normalize(torch.randn(6, 3, dtype=D64), dim=1)
    module.enqueue(rows)  # the first batch sets the row length (3) and writes rows 0..5
    assert module.channel_bank.shape == (10, 3) and int(module.channel_ptr) == 6
    torch.testing.assert_close(module.channel_bank[:6][rows[:, 0].argsort().argsort()].sort(0).values,
                               rows.sort(0).values)
    second = torch.nn.functional.normalize(torch.randn(6, 3, dtype=D64), dim=1)
    module.enqueue(second)  # 6 + 6 ≥ 10: the last 6 rows, pointer back to 0 (CIRKD's rule, no wrap)
    assert int(module.channel_ptr) == 0
    torch.testing.assert_close(module.channel_bank[4:].sort(0).values, second.sort(0).values)
    big = channel_module(S=1000)
    big.enqueue(torch.nn.functional.normalize(torch.randn(300, 3, dtype=D64), dim=1))
    assert int(big.channel_ptr) == 256
    with pytest.raises(ValueError, match="holds rows of 3 pooled positions, this batch has 4"):
        big.enqueue(torch.randn(2, 4, dtype=D64))


def test_memory_channel_sees_this_steps_rows_and_the_bank_survives_a_state_dict():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    module = channel_module(S=8, contrast=8, lambda_minibatch_channel=0.0, lambda_channel_kd=0.0)
    f_s, f_t = rand(gen, 2, 3, 8, 8), rand(gen, 2, 4, 8, 8).detach()
    module(SegOutput(None, None, f_s), SegOutput(None, None, f_t), None)
    teacher_rows = torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(f_t, 4).flatten(2), dim=-1)
    assert torch.cdist(teacher_rows.reshape(8, -1), module.channel_bank).min(1).values.max() < 1e-12
    fresh = channel_module(S=8, contrast=8)
    fresh.load_state_dict(module.state_dict())
    torch.testing.assert_close(fresh.channel_bank, module.channel_bank)


def test_gcn_matches_cirkds_graph_module_and_gradcheck():
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(6)
    gcn = GCN(4).double().eval()
    x = rand(gen, 2, 4, 3, 5)
    assert_value_and_grad(gcn(x).sum(), naive_gcn(gcn, x).sum(), [x])
    assert torch.autograd.gradcheck(gcn, (x,))


def test_cirkdv2_feeds_the_gcn_feature_to_every_feature_term_when_fitnet_is_set():
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    K = 3
    student = SegOutput(rand(gen, 2, K, 8, 8), None, rand(gen, 2, 4, 8, 8))
    teacher = SegOutput(rand(gen, 2, K, 8, 8).detach(), None, rand(gen, 2, 6, 8, 8).detach())
    y = torch.randint(0, K, (2, 8, 8), generator=gen)
    plain = build_loss("cirkdv2", num_classes=K, student_channels=4, teacher_channels=6)
    assert not hasattr(plain, "student_gcn")  # train_cirkdv2.py's defaults: --lambda-fitnet 0, no GCN
    loss = build_loss("cirkdv2", num_classes=K, student_channels=4, teacher_channels=6, lambda_fitnet=1.0,
                      lambda_channel_kd=100.0, pixel_memory_size=16, region_memory_size=4).double().eval()
    through = student._replace(feat=loss.student_gcn(student.feat))
    torch.manual_seed(8)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    out = loss(student, teacher, y)
    loss.load_state_dict(state)
    torch.manual_seed(8)
    direct = {}
    for component in loss.components.values():
        direct.update(component(through, teacher, y))
    assert set(out) == {"kd", "fitnet", "minibatch_pixel", "memory_pixel", "memory_region", "minibatch_channel",
                        "memory_channel", "channel_kd"}
    for name in out:
        torch.testing.assert_close(out[name], direct[name], rtol=1e-12, atol=1e-12)


# --- recipes -----------------------------------------------------------------------------------------

CIRKD_SCRIPTS = {  # scripts/train_kd/train_{skd,at,dsd}.sh; train_cirkdv2.py's argparse defaults
    "skd": {"lambda_kd": 1.0, "lambda_skd": 10.0, "lambda_adv": 0.001, "lambda_d": 0.1},
    "at": {"lambda_kd": 1.0, "lambda_at": 10000.0},
    "dsd": {"lambda_psd": 1000.0, "lambda_csd": 10.0},
    "cirkdv2": {"lambda_kd": 1.0, "lambda_minibatch_pixel": 1.0, "lambda_memory_pixel": 0.1,
                "lambda_memory_region": 0.1, "lambda_minibatch_channel": 1.0, "lambda_memory_channel": 0.1},
}
CIRKDV2_SCRIPTS = {"cityscapes": 1.0, "ade20k": 1.0, "coco_stuff_164k": 10.0, "voc": 10.0}  # --lambda-fitnet


@pytest.mark.parametrize("name", sorted(CIRKD_SCRIPTS))
def test_recipe_weights_are_cirkds(name):
    resolved = resolved_loss_options(name, {})
    assert {k: v for k, v in resolved.items() if k.startswith("lambda_") and k != "lambda_gp" and v != 0} \
        == CIRKD_SCRIPTS[name]


@pytest.mark.parametrize("dataset", sorted(CIRKDV2_SCRIPTS))
def test_cirkdv2_takes_each_datasets_script_weights(dataset):
    o = resolved_loss_options("cirkdv2", {}, dataset)
    assert (o["lambda_fitnet"], o["lambda_minibatch_channel"], o["lambda_memory_channel"], o["lambda_channel_kd"]) \
        == (CIRKDV2_SCRIPTS[dataset], 1.0, 0.1, 100.0)
    assert (o["channel_memory_size"], o["channel_contrast_size"], o["fitnet_gcn"]) == (10000, 2048, True)


def test_dsd_needs_both_weights():
    with pytest.raises(ValueError, match="--lambda-psd and --lambda-csd: DSD needs both"):
        build_loss("dsd", num_classes=3, student_channels=2, teacher_channels=2, lambda_csd=0.0)


TINY_RUN = dict(crop_size=(32, 32), batch_size=2, width=4, teacher_width=4, student_pretrained_base="none",
                teacher_pretrained_base="none", teacher_backbone="resnet18", student_model="pspnet",
                teacher_iterations=1, max_iterations=2, val_per_iters=2, save_per_iters=2, log_per_iters=1,
                val_batch_size=4, workers=0, train_length=8, val_length=4, threads=1)  # tests/test_train.py's TINY, fewer images


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher"))
    run(build_config(method="kd", out_dir=out, **TINY_RUN))
    return os.path.join(out, "teacher.pt")


@pytest.mark.parametrize("method, terms", [
    ("skd", {"kd", "skd", "adv"}), ("at", {"kd", "at"}), ("dsd", {"psd", "csd"}),
    ("cirkdv2", {"kd", "fitnet", "minibatch_pixel", "memory_pixel", "memory_region", "minibatch_channel",
                 "memory_channel"}),
])
def test_each_recipe_trains_and_logs_its_terms(teacher, tmp_path, method, terms):
    options = {"lambda_fitnet": 1.0} if method == "cirkdv2" else {}
    run(build_config(method=method, options=options, teacher_ckpt=teacher, out_dir=str(tmp_path), **TINY_RUN))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    logged = [r for r in rows if r["phase"] == "student" and "lr" in r]
    assert len(logged) == 2 and all(terms <= set(r) and all(math.isfinite(r[t]) for t in terms) for r in logged)
