"""scripts/gpu_check.sh, the prepared GPU run, as its dry run on a machine without a GPU: the script
parses, GPU-only steps are skipped with a reason, the CPU-capable steps run, a failing step does not
stop the others, and the summary says what happened. The whole dry run (about 3 minutes here) is
left to the script itself; these tests run its cheap steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script is the real run, not a test")


def run_script(out: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO)


def steps(out: Path) -> dict[str, tuple[str, str]]:
    """{step: (status, note)} from steps.tsv."""
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    return {name: (status, note) for name, status, _, _, note in rows}


def test_the_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_without_outdir_it_prints_the_usage():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: bash scripts/gpu_check.sh OUTDIR" in proc.stderr


def test_dry_run_skips_the_gpu_steps_and_runs_the_cpu_ones(tmp_path):
    proc = run_script(tmp_path, GPU_CHECK_ONLY="env backends ops")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = steps(tmp_path)
    expected = ["env", "build", "backends", "tests", "memcheck", "racecheck", "ops", "torchrun", "bench-cs",
                "step-share", "main-job", "bench-voc"]
    assert list(result) == expected
    for name in ("env", "backends", "ops"):
        assert result[name][0] == "PASS", (name, (tmp_path / f"{name}.log").read_text())
    for name in ("build", "tests", "memcheck", "racecheck", "bench-voc"):
        assert result[name][0] == "SKIP" and result[name][1].startswith("no GPU here (dry run)"), name
    for name in ("torchrun", "bench-cs", "step-share", "main-job"):
        assert result[name] == ("SKIP", "not selected by GPU_CHECK_ONLY"), name
    cases = json.loads((tmp_path / "ops.json").read_text())["cases"]
    assert cases and all(case["backend"] == "cpu" and not case["problems"] for case in cases)
    assert json.loads((tmp_path / "backends.json").read_text())["cpu"].startswith("live")
    summary = (tmp_path / "summary.md").read_text()
    assert "| ops | PASS |" in summary and "gpu_sanitize_ops: 2 passed, 0 failed" in summary
    assert summary.rstrip().endswith("gpu_check: 3 passed, 0 failed, 9 skipped")
    assert "missing packages:" in (tmp_path / "env.md").read_text()


def test_a_failing_step_does_not_stop_the_others(tmp_path):
    proc = run_script(tmp_path, PYTHON="false", GPU_CHECK_ONLY="env backends ops")
    assert proc.returncode == 1
    result = steps(tmp_path)
    assert [result[name][0] for name in ("env", "backends", "ops")] == ["FAIL", "FAIL", "FAIL"]
    assert result["main-job"][0] == "SKIP" and len(result) == 12  # every later step still had its turn


def test_summary_reports_this_runs_results_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check_summary

    (tmp_path / "steps.tsv").write_text("bench-cs\tPASS\t3\t90\t\nstep-share\tFAIL\t9\t75\texit 1\n"
                                        "main-job\tSKIP\t0\t-\tbudget of 420s spent\n")
    step = {"part": "student_step+frkd", "provider": "cuda", "error": None, "share_step": 0.031, "share_loss": 0.02}
    (tmp_path / "step-share.json").write_text(json.dumps({"results": [], "step_share": [step, {"error": "OOM"}]}))
    (tmp_path / "step-share.md").write_text("# Performance\n<!-- bench:cuda:begin -->\n| a table |\n")
    stale = tmp_path / "bench-tiny.json"
    stale.write_text(json.dumps({"results": [], "step_share": []}))
    os.utime(stale, (1000, 1000))
    text = gpu_check_summary.summary(tmp_path, gpu=True, budget=420, started=2000)
    assert "| bench-cs | PASS | 3 | 90 |  |" in text  # the earlier run's bench-tiny.json is not this run's
    assert ("| step-share | FAIL | 9 | 75 | exit 1; step-share.json: 2 rows, 1 failed; FRKD share of a student step: "
            "`cuda` 3.1 % (loss alone 2.0 %) |") in text
    assert "## step-share\n\n| a table |" in text and "# Performance" not in text
    assert text.rstrip().endswith("gpu_check: 1 passed, 1 failed, 1 skipped")
