"""frkd.train under torchrun: 2 CPU processes with gloo (teacher phase + FRKD student)."""
import json
import os
import subprocess
import sys

import torch

from test_discriminator import ADVERSARIAL_FLAGS
from test_train import TINY, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(args, timeout=600, entry=("-m", "frkd.train")):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry, *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_gloo_run_trains_teacher_and_student_and_writes_once(tmp_path):
    out_dir = str(tmp_path / "ddp")
    flags = list(TINY)
    flags[flags.index("--batch-size") + 1] = "4"  # global: 2 per rank
    result = torchrun(flags + ["--out-dir", out_dir, "--device", "cpu"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("student mIoU") == 1  # only rank 0 prints and writes
    assert "world size 2" in result.stdout

    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    assert summary["world_size"] == 2 and 0.0 <= summary["student_miou"] <= 1.0
    assert summary["teacher_miou"] is not None
    rows = records(out_dir)
    student_logs = [r for r in rows if r["phase"] == "student" and "lr" in r]
    assert [r["iteration"] for r in student_logs] == [1, 2, 3, 4]  # one record per step, not per rank
    last = torch.load(os.path.join(out_dir, "last.pt"), weights_only=False)
    assert last["iteration"] == 4 and len(last["rng"]) == 2  # every rank's RNG state for the resume
    assert not any(k.startswith("module.") for k in last["model"])
    assert os.path.isfile(os.path.join(out_dir, "teacher.pt"))


def test_global_batch_must_divide_over_ranks(tmp_path):
    flags = list(TINY)
    flags[flags.index("--batch-size") + 1] = "3"
    result = torchrun(flags + ["--method", "none", "--out-dir", str(tmp_path), "--device", "cpu"], timeout=300)
    assert result.returncode != 0
    assert "--batch-size 3 (global) is not divisible by the world size 2" in result.stdout + result.stderr


def test_a_discriminator_stays_in_sync_over_ranks(tmp_path):
    """Each rank sees other images; the engine averages the discriminator's gradients, so both ranks end
    with the same discriminator (the student's DDP wrapper leaves those parameters alone)."""
    teacher_dir = str(tmp_path / "teacher")
    flags = list(TINY)
    flags[flags.index("--batch-size") + 1] = "4"
    result = torchrun(flags + ["--method", "kd", "--max-iterations", "1", "--out-dir", teacher_dir, "--device", "cpu"])
    assert result.returncode == 0, result.stderr[-3000:]
    out_dir = str(tmp_path / "adv")
    result = torchrun(flags + ADVERSARIAL_FLAGS + ["--teacher-pretrained", os.path.join(teacher_dir, "teacher.pt"),
                               "--out-dir", out_dir, "--device", "cpu"],
                      entry=(os.path.join(REPO, "tests", "ddp_save_critic.py"),))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(os.path.join(out_dir, f"critic_rank{r}.pt")) for r in (0, 1)]
    initial = torch.load(os.path.join(out_dir, "last.pt"), weights_only=False)["loss"]
    differ = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not differ, differ
    assert all(torch.equal(ranks[0][k], initial[k]) for k in ranks[0])  # rank 0 saved what it trained
