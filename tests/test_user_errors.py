"""User errors of frkd.train / frkd.evaluate: one line naming the flag or file, exit code 2, before any work;
and a run never destroys another run's files."""
import hashlib
import os

import pytest
import torch

from frkd import evaluate as evaluate_cli
from frkd import pipeline
from frkd.cli import build_parser
from frkd.config import DATASET_DEFAULTS, ConfigError, build_config, validate

SYNTHETIC = DATASET_DEFAULTS["synthetic"]
from test_train import TINY, run_train

FAST = ["--teacher-iterations", "1", "--max-iterations", "2"]


def one_line_error(argv, prog="frkd.train", main=None):
    """stderr of a run that must fail with a user error: exit 2, one line, no traceback, nothing written."""
    if main is None:
        code, stdout, stderr = run_train(argv)
    else:
        import contextlib
        import io
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        stderr = err.getvalue()
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher"))
    code, _, stderr = run_train(TINY + FAST + ["--method", "kd", "--out-dir", out])
    assert code == 0, stderr
    return os.path.join(out, "teacher.pt")


def test_missing_data_root_names_the_flag(tmp_path):
    line = one_line_error(["--dataset", "cityscapes", "--data", str(tmp_path / "nope"), "--out-dir", str(tmp_path)])
    assert f"--data {tmp_path / 'nope'}: expected the cityscapes dataset folder, found no such folder" in line
    line = one_line_error(["--dataset", "voc", "--out-dir", str(tmp_path)])
    assert "--data: expected the voc dataset folder, got none" in line
    assert os.listdir(tmp_path) == []


def test_a_data_folder_without_the_dataset_layout_names_it(tmp_path):
    data = tmp_path / "cs"
    data.mkdir()
    line = one_line_error(["--dataset", "cityscapes", "--data", str(data), "--out-dir", str(tmp_path / "run")])
    assert f"--data {data}: cityscapes: no image folder" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tmp_path):
    line = one_line_error(["--device", "cuda", "--out-dir", str(tmp_path)])
    assert "--device cuda: expected a CUDA GPU, found none" in line
    assert "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'" in one_line_error(["--device", "tpu"])


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    (["--lr", "-0.1"], "--lr: expected a finite number > 0, got -0.1"),
    (["--momentum", "1.5"], "--momentum: expected a finite number >= 0 and < 1, got 1.5"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--crop-size", "0", "32"], "--crop-size: expected an integer >= 1, got 0"),
    (["--stop-at-iteration", "0"], "--stop-at-iteration: expected an integer >= 1, got 0"),
    (["--ignore-label", "2"], f"--ignore-label: expected a value outside the class ids 0..{SYNTHETIC['num_classes'] - 1}, "
                              "got 2"),
    (["--method", "kd", "--lambda-kd", "nan"], "--lambda-kd: expected a finite number, got nan"),
    (["--method", "kd", "--lambda-kd", "-1"], "--lambda-kd: expected a weight >= 0, got -1.0"),
    (["--method", "none", "--lambda-kd", "1"], "--lambda-kd needs a teacher, but --method none trains without one"),
    (["--num-classes", "3", "--dataset", "voc", "--data", "."], "--num-classes: applies to --dataset synthetic and folder only"),
    (["--head-lr-mult", "0"], "--head-lr-mult: expected a finite number > 0, got 0.0"),
    (["--student-frozen-stages", "5"], "--student-frozen-stages: expected an integer >= -1 and <= 4, got 5"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, flags, message):
    out = tmp_path / "run"
    assert message in one_line_error(TINY + flags + ["--out-dir", str(out)])
    assert not out.exists()


def test_a_missing_resume_file_fails_at_once(tmp_path):
    line = one_line_error(TINY + ["--resume", "/no/such/file.pt", "--out-dir", str(tmp_path / "run")])
    assert "--resume /no/such/file.pt: expected a readable file, found no such file" in line
    assert not (tmp_path / "run").exists()


def test_a_garbage_teacher_checkpoint_is_named(tmp_path):
    garbage = tmp_path / "teacher.pth"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    line = one_line_error(TINY + ["--teacher-ckpt", str(garbage), "--out-dir", str(tmp_path / "run")])
    assert f"--teacher-pretrained {garbage}: expected a PyTorch checkpoint, found a truncated or foreign file" in line
    assert not (tmp_path / "run").exists()


def test_a_teacher_of_another_architecture_is_named(tmp_path, teacher_file):
    state = torch.load(teacher_file, weights_only=False)
    bare = tmp_path / "bare.pth"
    torch.save(state["model"], bare)
    line = one_line_error(TINY + ["--teacher-ckpt", str(bare), "--teacher-backbone", "resnet50",
                                  "--out-dir", str(tmp_path / "run")])
    assert f"--teacher-pretrained {bare}: expected the weights of a deeplabv3-resnet50 (width 4)" in line


def test_a_truncated_last_checkpoint_names_the_file_and_says_what_to_do(tmp_path, teacher_file):
    out = tmp_path / "run"
    assert run_train(TINY + FAST + ["--teacher-ckpt", teacher_file, "--out-dir", str(out)])[0] == 0
    last = out / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    before = snapshot(out)
    line = one_line_error(TINY + FAST + ["--teacher-ckpt", teacher_file, "--out-dir", str(out), "--resume", "auto"])
    assert f"--resume {last}: expected a PyTorch checkpoint, found a truncated or foreign file" in line
    assert "resume from best.pt instead" in line and "--overwrite" in line
    assert snapshot(out) == before
    code, stdout, _ = run_train(TINY + FAST + ["--teacher-ckpt", teacher_file, "--out-dir", str(out),
                                                "--resume", str(out / "best.pt")])
    assert code == 0 and "resumed from" in stdout


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="--lr: expected a finite number"):
        run_train(TINY + ["--lr", "nan", "--debug", "--out-dir", str(tmp_path)])


def test_a_bug_still_raises(tmp_path, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("a bug in the trainer")

    monkeypatch.setattr(pipeline, "build_distillation", broken)
    with pytest.raises(RuntimeError, match="a bug in the trainer"):
        run_train(TINY + FAST + ["--method", "none", "--out-dir", str(tmp_path)])


def test_evaluate_on_a_bad_file(tmp_path):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"\x00" * 100)
    line = one_line_error(["--checkpoint", str(garbage)], "frkd.evaluate", evaluate_cli.main)
    assert f"--checkpoint {garbage}: expected a PyTorch checkpoint" in line
    line = one_line_error(["--checkpoint", str(tmp_path / "none.pt")], "frkd.evaluate", evaluate_cli.main)
    assert "expected a checkpoint file, found no such file" in line
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    line = one_line_error(["--checkpoint", str(foreign)], "frkd.evaluate", evaluate_cli.main)
    assert "expected a checkpoint written by frkd.train" in line


def snapshot(folder) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def test_a_failing_run_leaves_a_finished_run_byte_identical(tmp_path, teacher_file, monkeypatch):
    out = str(tmp_path / "run")
    common = TINY + FAST + ["--out-dir", out]
    assert run_train(common)[0] == 0  # trains and caches its teacher, then the student
    before = snapshot(out)
    assert {"metrics.jsonl", "summary.json", "last.pt", "best.pt", "teacher.pt", "miou.png"} <= set(before)

    line = one_line_error(common + ["--lr", "nan"])
    assert "--lr: expected a finite number > 0, got nan" in line
    line = one_line_error(common + ["--method", "kd"])
    assert f"--out-dir {out}: expected a folder without a run, found metrics.jsonl, summary.json" in line
    assert "--resume auto" in line and "--overwrite" in line
    assert snapshot(out) == before

    import frkd.engine as engine
    original = engine.task_terms

    def nan_loss(*args, **kw):
        terms = original(*args, **kw)
        terms["ce"] = terms["ce"] * float("nan")
        return terms

    monkeypatch.setattr(engine, "task_terms", nan_loss)  # a NaN in the first step of a continued run
    code, _, stderr = run_train(common + ["--resume", "auto", "--max-iterations", "4"])
    assert code == 1 and "loss term 'ce' is nan at iteration 3" in stderr
    assert snapshot(out) == before


def test_overwrite_replaces_the_run_and_keeps_the_cached_teacher(tmp_path):
    out = str(tmp_path / "run")
    common = TINY + FAST + ["--out-dir", out]
    assert run_train(common)[0] == 0
    before = snapshot(out)
    code, stdout, _ = run_train(common + ["--overwrite", "--seed", "3"])
    assert code == 0 and "reusing the cached" in stdout
    after = snapshot(out)
    assert after["teacher.pt"] == before["teacher.pt"]
    assert after["summary.json"] != before["summary.json"]
    assert not [k for k in after if k.startswith("teacher" + os.sep)]  # the old teacher phase's files are gone


def test_help_shows_each_effective_default_once():
    text = " ".join(build_parser().format_help().split())
    assert (f"default: synthetic {SYNTHETIC['max_iterations']}, cityscapes 40000, voc 40000, ade20k 80000, "
            "coco_stuff_164k 80000, camvid 40000, folder 40000") in text
    height, width = SYNTHETIC["crop_size"]
    assert (f"default: synthetic {height} {width}, cityscapes 512 1024, voc 512 512, ade20k 512 512, "
            "coco_stuff_164k 512 512, camvid 360 360, folder 512 1024") in text
    assert "ade20k 150, coco_stuff_164k 182, camvid 11, folder required" in text
    assert "(default: None)" not in text
    for cirkd in ("--teacher-pretrained", "--student-pretrained-base", "--data", "--lr-d", "--ignore-label"):
        assert f"CIRKD {cirkd}" in text, cirkd


def test_config_round_trips_and_takes_overrides(tmp_path):
    config = build_config(dataset="synthetic", method="kd", options={"lambda_kd": 2.0}, lr=0.05,
                          out_dir=str(tmp_path / "x"))
    assert config.optim.lr == 0.05 and config.optim.max_iterations == SYNTHETIC["max_iterations"]
    assert config.data.crop_size == tuple(SYNTHETIC["crop_size"])
    from frkd.config import RunConfig
    assert RunConfig.from_dict(config.to_dict()) == config
    assert validate(config).loss.options == {"lambda_kd": 2.0}
    with pytest.raises(ConfigError, match="unknown field 'learning_rate'"):
        config.replace(learning_rate=1.0)
    with pytest.raises(ConfigError, match="unknown field"):
        RunConfig.from_dict({"optim": {"lr": 1.0, "bogus": 2}})
