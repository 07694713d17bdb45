"""Smoke test of the benchmark suite (bench/): one tiny CPU run, checking the JSON and markdown it
writes. Not a timed test: only the presence and consistency of the fields are checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.measure import MODES
from bench.workloads import WORKLOADS

REPO = Path(__file__).resolve().parent.parent
PROVIDERS = ["torch", "eager", "cirkd_loop"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    doc = tmp / "performance.md"
    doc.write_text("# Perf\n\nkept text\n\n<!-- bench:cpu:begin -->\nstale table\n<!-- bench:cpu:end -->\n\ntail\n")
    out = tmp / "cpu.json"
    argv = ["--device", "cpu", "--shapes", "tiny", "--warmup", "0", "--repeats", "1",
            "--providers", *PROVIDERS, "--out", str(out), "--markdown", str(doc)]
    assert bench_run.main(argv) == 0
    return json.loads(out.read_text()), doc.read_text()


def test_every_workload_provider_and_mode_has_a_row(tiny_run):
    result, _ = tiny_run
    assert result["meta"]["skipped_workloads"] == {}
    seen = {(r["workload"], r["provider"], r["mode"]) for r in result["results"]}
    for name, workload in WORKLOADS.items():
        modes = MODES if workload.differentiable else ("forward",)
        providers = PROVIDERS if workload.loop_forward else [p for p in PROVIDERS if p != "cirkd_loop"]
        assert {(name, p, m) for p in providers for m in modes} <= seen, name
    assert not any(r["provider"] == "cirkd_loop" and r["workload"] != "ifv" for r in result["results"])


def test_rows_are_complete_and_consistent(tiny_run):
    result, _ = tiny_run
    meta = result["meta"]
    for key in ("command", "device_name", "torch", "triton", "commit", "timer", "copy_bandwidth_gb_per_s"):
        assert meta[key], key
    assert meta["device"] == "cpu" and meta["copy_bandwidth_gb_per_s"] > 0
    for r in result["results"]:
        assert r["error"] is None, r
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["peak_mem_mib"] is None  # no honest CPU peak: reported as n/a
        assert r["bytes"] > 0
        assert r["gb_per_s"] == pytest.approx(r["bytes"] / (r["median_ms"] * 1e-3) / 1e9)
        assert r["pct_copy_bw"] == pytest.approx(100 * r["gb_per_s"] / meta["copy_bandwidth_gb_per_s"])
        assert r["max_abs_diff_vs_eager"] < 1e-4, r  # every provider computes the same forward


def test_speedups_are_peer_time_over_own_time(tiny_run):
    result, _ = tiny_run
    by_key = {(r["workload"], r["mode"], r["provider"]): r for r in result["results"]}
    for (workload, mode, provider), r in by_key.items():
        expected_peers = {"eager"} | ({"cirkd_loop"} if workload == "ifv" else set())
        expected_peers.discard(provider)
        assert set(r["speedup_vs"]) == expected_peers, (workload, mode, provider)
        for peer, ratio in r["speedup_vs"].items():
            assert ratio == pytest.approx(by_key[(workload, mode, peer)]["median_ms"] / r["median_ms"])


def test_markdown_section_is_rewritten_and_the_rest_kept(tiny_run):
    result, text = tiny_run
    assert text.startswith("# Perf\n\nkept text\n") and text.rstrip().endswith("tail")
    assert "stale table" not in text and text.count("<!-- bench:cpu:begin -->") == 1
    assert result["meta"]["command"] in text
    for name in WORKLOADS:
        assert f"**{name}**: {WORKLOADS[name].description}" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| tiny | `")]
    assert len(table_rows) == len(WORKLOADS) * (len(PROVIDERS) - 1) + 1  # the loop runs the IFV term only


def test_script_entry_point_runs():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--providers" in proc.stdout and "--markdown" in proc.stdout
