"""frkd.train / frkd.evaluate end to end on synthetic data with tiny models (CPU, in-process)."""
import contextlib
import io
import json
import math
import os
import signal

import pytest
import torch
from PIL import Image

import frkd.engine as engine
from frkd.config import DATASET_DEFAULTS
from frkd import evaluate as evaluate_cli
from frkd import train as train_cli
from frkd.cli import parse_config
from frkd.sampling import IterationBatchSampler

TINY = ["--crop-size", "32", "32", "--batch-size", "2", "--width", "4", "--teacher-width", "4",
        "--student-pretrained-base", "none", "--teacher-pretrained-base", "none",
        "--teacher-backbone", "resnet18", "--student-model", "pspnet", "--teacher-iterations", "3",
        "--max-iterations", "4", "--val-per-iters", "2", "--log-per-iters", "1", "--save-per-iters", "2",
        "--val-batch-size", "50", "--workers", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models gain nothing from threads; on a shared 2-core runner they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_train(argv):
    """(exit code, stdout, stderr) of frkd.train.main in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def records(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k != "it_per_s"} for r in rows]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("run"))
    code, stdout, stderr = run_train(TINY + ["--out-dir", out_dir])
    assert code == 0, stderr
    return out_dir, stdout


def test_full_run_trains_the_teacher_then_the_student_and_writes_every_output(run_dir):
    out_dir, stdout = run_dir
    assert "no --teacher-pretrained, training deeplabv3-resnet18" in stdout and "teacher.pt" in stdout
    assert "teacher mIoU" in stdout and "student mIoU" in stdout
    for name in ("teacher.pt", "last.pt", "best.pt", "teacher/last.pt", "summary.json",
                 "losses_teacher.png", "losses_student.png", "miou.png"):
        assert os.path.isfile(os.path.join(out_dir, name)), name
    for png in ("losses_teacher.png", "losses_student.png", "miou.png"):
        with Image.open(os.path.join(out_dir, png)) as image:
            assert image.format == "PNG" and min(image.size) >= 200

    rows = records(out_dir)
    logs = {p: [r for r in rows if r["phase"] == p and "lr" in r] for p in ("teacher", "student")}
    evals = {p: [r for r in rows if r["phase"] == p and "miou" in r] for p in ("teacher", "student")}
    assert [r["iteration"] for r in logs["teacher"]] == [1, 2, 3]
    assert [r["iteration"] for r in logs["student"]] == [1, 2, 3, 4]
    assert [r["iteration"] for r in evals["teacher"]] == [2, 3]
    assert [r["iteration"] for r in evals["student"]] == [2, 4]
    assert {"ce", "aux_ce", "loss", "lr"} <= set(logs["teacher"][0])
    assert {"ce", "aux_ce", "feat", "intra", "inter", "kd"} <= set(logs["student"][0])
    first = logs["student"][0]
    assert first["loss"] == pytest.approx(sum(v for k, v in first.items()
                                              if k not in ("phase", "iteration", "lr", "loss", "it_per_s")))
    lrs = [r["lr"] for r in logs["student"]]
    assert lrs[0] == pytest.approx(0.02) and all(a > b for a, b in zip(lrs, lrs[1:]))  # poly decay

    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    assert summary["teacher_miou"] == pytest.approx(evals["teacher"][-1]["miou"])
    assert summary["student_miou"] == pytest.approx(evals["student"][-1]["miou"])
    num_classes = DATASET_DEFAULTS["synthetic"]["num_classes"]
    assert 0.0 <= summary["student_miou"] <= 1.0 and len(summary["student_per_class_iou"]) == num_classes
    assert summary["config"]["loss"]["method"] == "frkd" and summary["wall_time_s"] > 0
    from frkd.losses import option_names, resolved_loss_options
    resolved = summary["config"]["loss"]["resolved"]  # every weight of the run, none left as None
    assert set(resolved) == set(option_names("frkd")) and resolved == resolved_loss_options("frkd", {}, "synthetic")
    assert resolved["lambda_kd"] > 0 and None not in [v for k, v in resolved.items() if k != "tau"]

    last = torch.load(os.path.join(out_dir, "last.pt"), weights_only=False)
    assert last["iteration"] == 4 and last["phase"] == "student"
    assert {"model", "loss", "optimizer", "scaler", "rng", "best_miou", "config", "model_config"} <= set(last)
    assert last["config"]["loss"]["resolved"] == summary["config"]["loss"]["resolved"]
    assert "components.frkd.phi.weight" in last["loss"]  # the frkd recipe's φ
    assert {"python", "numpy", "torch", "cuda"} <= set(last["rng"][0])
    assert not [f for f in os.listdir(out_dir) if f.endswith(".tmp")]


def test_a_second_run_reuses_the_cached_teacher(run_dir):
    out_dir, _ = run_dir
    code, stdout, _ = run_train(TINY + ["--out-dir", out_dir, "--resume", "auto"])
    assert code == 0
    assert "reusing the cached" in stdout and "training deeplabv3" not in stdout
    assert "resumed from" in stdout  # last.pt is at max-iterations: nothing left to train


def test_the_student_is_the_same_whether_its_teacher_was_trained_in_the_run_or_loaded(run_dir, tmp_path):
    # FRKD's φ is initialised after the teacher phase: training the teacher must leave no trace on it
    out_dir, _ = run_dir
    loaded = str(tmp_path / "loaded")
    code, _, stderr = run_train(TINY + ["--out-dir", loaded, "--teacher-ckpt", os.path.join(out_dir, "teacher.pt")])
    assert code == 0, stderr
    student = lambda d: without_timing([r for r in records(d) if r["phase"] == "student"])  # noqa: E731
    assert student(loaded) == student(out_dir)


def run_eval(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evaluate_cli.main(argv) == 0
    return out.getvalue()


def test_evaluate_cli_reproduces_the_training_evaluation(run_dir):
    out_dir, _ = run_dir
    stdout = run_eval(["--checkpoint", os.path.join(out_dir, "last.pt"), "--workers", "0", "--batch-size", "50"])
    result = json.loads(stdout.strip().splitlines()[-1])
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    assert result["miou"] == pytest.approx(summary["student_miou"], abs=1e-9)
    assert "pixel accuracy" in stdout and "background" in stdout

    stdout = run_eval(["--checkpoint", os.path.join(out_dir, "teacher.pt"), "--workers", "0",
                       "--batch-size", "50", "--mode", "slide", "--crop-size", "24", "24", "--flip",
                       "--scales", "0.75", "1.0"])
    result = json.loads(stdout.strip().splitlines()[-1])
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_acc"] <= 1.0


def test_a_run_stopped_and_resumed_reaches_the_same_weights_bit_exactly(run_dir, tmp_path):
    teacher = os.path.join(run_dir[0], "teacher.pt")
    common = TINY + ["--teacher-ckpt", teacher, "--max-iterations", "5", "--save-per-iters", "100"]
    whole, pieces = str(tmp_path / "whole"), str(tmp_path / "pieces")
    assert run_train(common + ["--out-dir", whole])[0] == 0
    code, stdout, _ = run_train(common + ["--out-dir", pieces, "--stop-at-iteration", "3"])
    assert code == 0 and "stopped after iteration 3" in stdout
    assert torch.load(os.path.join(pieces, "last.pt"), weights_only=False)["iteration"] == 3
    assert run_train(common + ["--out-dir", pieces, "--resume", "auto"])[0] == 0

    a = torch.load(os.path.join(whole, "last.pt"), weights_only=False)
    b = torch.load(os.path.join(pieces, "last.pt"), weights_only=False)
    assert a["iteration"] == b["iteration"] == 5
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        differing = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differing, f"{part} tensors differ after resume: {differing[:5]}"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert without_timing(records(whole)) == without_timing(records(pieces))


def test_resuming_a_finished_run_keeps_what_it_recorded(run_dir, tmp_path):
    teacher = os.path.join(run_dir[0], "teacher.pt")
    out_dir = str(tmp_path / "run")
    common = TINY + ["--teacher-ckpt", teacher, "--out-dir", out_dir]
    assert run_train(common)[0] == 0
    with open(os.path.join(out_dir, "summary.json")) as f:
        first = json.load(f)
    assert first["history"] == [] and first["total_wall_time_s"] == first["wall_time_s"]
    assert run_train(common + ["--resume", "auto"])[0] == 0
    with open(os.path.join(out_dir, "summary.json")) as f:
        second = json.load(f)
    assert second["history"] == [{k: v for k, v in first.items() if k != "history"}]
    assert second["total_wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"])
    assert second["student_miou"] == first["student_miou"]


def test_summary_records_what_decides_the_numbers(run_dir):
    with open(os.path.join(run_dir[0], "summary.json")) as f:
        recorded = json.load(f)["provenance"]
    machine = recorded["machine"]
    assert machine["cpu"] and machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["torch"] == torch.__version__ and machine["numpy"] and machine["pillow"]
    # TINY starts from random backbones; the teacher trained in the run is identified by its weights
    assert recorded["student_backbone"] is None and recorded["teacher_backbone"] is None
    from frkd.provenance import file_state_hash
    assert recorded["teacher_state_hash"] == file_state_hash(os.path.join(run_dir[0], "teacher.pt"))


def test_non_finite_loss_stops_naming_the_term_and_iteration(tmp_path, monkeypatch):
    original = engine.task_terms
    calls = []

    def poisoned(*args, **kw):
        terms = original(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            terms["aux_ce"] = terms["aux_ce"] * math.inf
        return terms

    monkeypatch.setattr(engine, "task_terms", poisoned)
    code, _, stderr = run_train(TINY + ["--method", "none", "--out-dir", str(tmp_path)])
    assert code == 1
    assert "loss term 'aux_ce' is inf at iteration 2 (student phase)" in stderr


def test_ctrl_c_saves_last_checkpoint_then_exits(tmp_path, monkeypatch):
    original = engine.task_terms
    calls = []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # lands mid-iteration 2; the loop saves after it
        return original(*args, **kw)

    monkeypatch.setattr(engine, "task_terms", interrupted)
    handler_before = signal.getsignal(signal.SIGINT)
    code, stdout, _ = run_train(TINY + ["--method", "none", "--out-dir", str(tmp_path)])
    assert code == 130 and "interrupted" in stdout
    assert torch.load(tmp_path / "last.pt", weights_only=False)["iteration"] == 2
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_data_stream_is_split_over_ranks_and_resumable():
    def batches(rank, world, start, stop=6):
        return list(IterationBatchSampler(5, 4, rank, world, seed=1, start_iteration=start, stop_iteration=stop))

    single = batches(0, 1, 0)
    two_ranks = [a + b for a, b in zip(batches(0, 2, 0), batches(1, 2, 0))]
    assert single == two_ranks
    assert batches(0, 1, 3) == single[3:]
    seen = [index for batch in single[:5] for index, _ in batch]  # 20 positions = 4 epochs of 5
    assert all(sorted(seen[i:i + 5]) == list(range(5)) for i in range(0, 20, 5))
    seeds = [seed for batch in single for _, seed in batch]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(ValueError, match="--batch-size 4 is not divisible by the world size 3"):
        IterationBatchSampler(5, 4, 0, 3, seed=0, start_iteration=0, stop_iteration=1)


def test_per_dataset_defaults_fill_only_unset_flags():
    config, _ = parse_config(["--dataset", "cityscapes", "--data", "/data/cs", "--lr", "0.05"])
    assert config.data.crop_size == (512, 1024) and config.optim.max_iterations == 40000
    assert config.optim.batch_size == 16 and config.optim.lr == 0.05 and config.model.teacher_backbone == "resnet101"
    assert config.model.align_corners is True and config.model.feature_tap == "post-dropout"
    assert parse_config(["--dataset", "voc", "--data-root", "x"])[0].data.crop_size == (512, 512)
    synthetic = parse_config(["--local_rank", "3"])[0]
    assert synthetic.data.dataset == "synthetic" and synthetic.model.align_corners is False
    assert synthetic.model.feature_tap == "pre-dropout" and synthetic.data.ignore_label == 255


def test_a_bare_state_dict_teacher_is_built_from_the_flags_and_measured(run_dir, tmp_path):
    out_dir, _ = run_dir
    bare = str(tmp_path / "bare_teacher.pth")
    torch.save(torch.load(os.path.join(out_dir, "teacher.pt"), weights_only=False)["model"], bare)
    code, stdout, stderr = run_train(TINY + ["--teacher-ckpt", bare, "--max-iterations", "1",
                                             "--out-dir", str(tmp_path / "run")])
    assert code == 0, stderr
    assert "teacher: mIoU" in stdout
    measured = json.load(open(tmp_path / "run" / "summary.json"))["teacher_miou"]
    assert measured == pytest.approx(json.load(open(os.path.join(out_dir, "summary.json")))["teacher_miou"])


def test_a_teacher_phase_stopped_and_resumed_gives_the_same_teacher(run_dir, tmp_path):
    out_dir = str(tmp_path)
    code, stdout, _ = run_train(TINY + ["--out-dir", out_dir, "--stop-at-iteration", "2"])
    assert code == 0 and "stopped after iteration 2" in stdout and "teacher/last.pt" in stdout
    assert not os.path.exists(os.path.join(out_dir, "teacher.pt"))
    code, stdout, _ = run_train(TINY + ["--out-dir", out_dir, "--resume", "auto", "--max-iterations", "1"])
    assert code == 0 and "[teacher] resumed from" in stdout
    resumed = torch.load(os.path.join(out_dir, "teacher.pt"), weights_only=False)["model"]
    uninterrupted = torch.load(os.path.join(run_dir[0], "teacher.pt"), weights_only=False)["model"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize("align_corners", [False, True])
def test_task_loss_upsamples_as_asked_and_ignores_the_ignore_label(align_corners):
    """CE of the bilinearly upsampled logits over the pixels whose label is not --ignore-label, against a
    float64 reference written here (bilinear weights by hand, log-softmax by hand)."""
    from frkd.models import SegOutput

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 7, 9))
    labels[0, :2] = 9  # the ignore label of this run
    terms = engine.task_terms(SegOutput(logits.float(), None, logits.float()), labels, ignore_index=9,
                              align_corners=align_corners)

    def coords(n_out, n_in):
        i = torch.arange(n_out, dtype=torch.float64)
        src = i * (n_in - 1) / (n_out - 1) if align_corners else ((i + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), src - lo

    (y0, y1, wy), (x0, x1, wx) = coords(7, 3), coords(9, 4)
    up = torch.zeros(2, 3, 7, 9, dtype=torch.float64)
    for i in range(7):
        for j in range(9):
            top = logits[:, :, y0[i], x0[j]] * (1 - wx[j]) + logits[:, :, y0[i], x1[j]] * wx[j]
            bottom = logits[:, :, y1[i], x0[j]] * (1 - wx[j]) + logits[:, :, y1[i], x1[j]] * wx[j]
            up[:, :, i, j] = top * (1 - wy[i]) + bottom * wy[i]
    log_p = up - up.exp().sum(1, keepdim=True).log()
    valid = labels != 9
    picked = log_p.gather(1, labels.clamp(max=2)[:, None])[:, 0]
    expected = -(picked[valid]).mean()
    assert terms["ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"ce"}  # no aux logits, no aux term


def test_frozen_stages_keep_their_weights_and_statistics_while_the_rest_trains(run_dir, tmp_path):
    """--student-frozen-stages 4: the student backbone (stem, layer1-4) leaves training bit-identical, BatchNorm
    running statistics included, while the head learns; --head-lr-mult gives the head its own SGD group."""
    teacher = os.path.join(run_dir[0], "teacher.pt")
    out = str(tmp_path / "frozen")
    code, _, stderr = run_train(TINY + ["--teacher-ckpt", teacher, "--student-frozen-stages", "4",
                                        "--head-lr-mult", "10", "--out-dir", out])
    assert code == 0, stderr
    from frkd.pipeline import build_student

    config, _ = parse_config(TINY + ["--student-frozen-stages", "4", "--out-dir", out])
    initial = build_student(config).state_dict()
    trained = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    backbone = [k for k in initial if k.startswith("backbone.")]
    assert any(k.endswith("running_mean") for k in backbone)
    changed = [k for k in backbone if not torch.equal(initial[k], trained["model"][k])]
    assert not changed, f"frozen backbone tensors changed: {changed[:5]}"
    assert any(not torch.equal(initial[k], trained["model"][k]) for k in initial if k.startswith("head."))
    lrs = [group["lr"] for group in trained["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(10 * lrs[0])


def test_frozen_stages_follow_mmseg(tmp_path):
    from frkd.models import build_model

    model = build_model("deeplabv3", "resnet18", 3, width=4)
    model.backbone.freeze_stages(2)
    model.train()
    frozen = [model.backbone.conv1, model.backbone.bn1, model.backbone.layer1, model.backbone.layer2]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen) and model.backbone.layer3.training
    assert all(p.requires_grad for p in model.backbone.layer3.parameters())
    with pytest.raises(ValueError, match=r"frozen_stages: expected an int in \[-1, 4\], got 5"):
        model.backbone.freeze_stages(5)


def test_resume_with_other_parameter_groups_is_refused(run_dir, tmp_path):
    teacher = os.path.join(run_dir[0], "teacher.pt")
    out = str(tmp_path / "groups")
    assert run_train(TINY + ["--teacher-ckpt", teacher, "--out-dir", out, "--head-lr-mult", "10",
                             "--stop-at-iteration", "2"])[0] == 0
    code, _, stderr = run_train(TINY + ["--teacher-ckpt", teacher, "--out-dir", out, "--resume", "auto",
                                        "--head-lr-mult", "1"])
    assert code == 2
    assert "expected --head-lr-mult 10 as the checkpoint's run (its optimizer holds other parameter groups), got 1" \
        in stderr
