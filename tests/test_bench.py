"""Smoke test of the benchmark suite (bench/): one tiny CPU run, checking the JSON and markdown it
writes, and where runs write by default. Not a timed test: only the presence and consistency of
the fields are checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import frkd_kernels
from bench import run as bench_run
from bench import step_share
from bench.measure import MODES
from bench.workloads import WORKLOADS
from frkd.losses import cross_image

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
    assert set(meta["workloads"]) == set(WORKLOADS) | {step_share.NAME}
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


def test_step_share_times_every_part_and_derives_the_shares(tiny_run):
    result, text = tiny_run
    rows = {(r["part"], r["provider"]): r for r in result["step_share"]}
    # the step share runs the FRKD loss on the frkd backends asked for; peers do not apply
    assert set(rows) == {("teacher_forward", None), ("student_step", None), ("student_step+frkd", "torch"),
                         ("frkd_loss", "torch")}
    for r in rows.values():
        assert r["error"] is None, r
        assert r["shape"] == "step-tiny" and 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
    step, frkd, loss = rows[("student_step", None)], rows[("student_step+frkd", "torch")], rows[("frkd_loss", "torch")]
    assert frkd["share_step"] == pytest.approx((frkd["median_ms"] - step["median_ms"]) / step["median_ms"])
    assert frkd["share_loss"] == pytest.approx(loss["median_ms"] / step["median_ms"])
    assert loss["loss_value"] > 0  # the FRKD loss was computed (finite, positive)
    assert f"**{step_share.NAME}**" in text
    assert any(line.startswith("| step-tiny | `torch` |") for line in text.splitlines())


def test_share_is_none_without_a_plain_step():
    rows = [{"part": "student_step+frkd", "provider": "cpu", "median_ms": 2.0},
            {"part": "frkd_loss", "provider": "cpu", "median_ms": 1.0}]
    step_share.add_shares(rows)
    assert rows[0]["share_step"] is None and rows[0]["share_loss"] is None


def test_a_quick_run_leaves_the_committed_results_alone(tmp_path, monkeypatch):
    committed = [REPO / "bench" / "results" / "cpu.json", REPO / "docs" / "performance.md"]
    before = [p.read_bytes() for p in committed]
    monkeypatch.chdir(tmp_path)
    argv = ["--device", "cpu", "--quick", "--shapes", "tiny", "--ops", "teacher_entropy", "--providers", "torch",
            "--warmup", "0"]
    assert bench_run.main(argv) == 0
    assert json.loads((tmp_path / "runs" / "bench" / "cpu-quick.json").read_text())["results"]
    assert [p.read_bytes() for p in committed] == before


def test_only_record_or_named_paths_write_committed_files():
    def paths(*argv):
        return bench_run.output_paths(bench_run.parse_args(["--device", "cpu", *argv]))

    assert paths() == (Path("runs/bench/cpu.json"), None)
    assert paths("--threads", "1") == (Path("runs/bench/cpu-1t.json"), None)
    assert paths("--record") == (REPO / "bench" / "results" / "cpu.json", REPO / "docs" / "performance.md")
    assert paths("--record", "--threads", "1")[0] == REPO / "bench" / "results" / "cpu-1t.json"
    assert paths("--out", "a.json", "--markdown", "b.md") == (Path("a.json"), Path("b.md"))


@pytest.mark.parametrize("partial", [["--quick"], ["--shapes", "tiny"], ["--ops", "ifv"], ["--section", "x"]])
def test_record_refuses_a_partial_run(partial, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_run.parse_args(["--device", "cpu", "--record", *partial])
    assert exit_info.value.code == 2
    assert f"--record: a record is the full default set; drop {partial[0]}" in capsys.readouterr().err


def test_a_partial_run_writes_its_own_section(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text("<!-- bench:cpu:begin -->\nfull run\n<!-- bench:cpu:end -->\n")
    argv = ["--device", "cpu", "--shapes", "tiny", "--ops", "teacher_entropy", "--providers", "torch", "--warmup", "0",
            "--repeats", "1", "--out", str(tmp_path / "r.json"), "--markdown", str(doc), "--section", "cpu-part"]
    assert bench_run.main(argv) == 0
    text = doc.read_text()
    assert "full run" in text and text.count("<!-- bench:cpu-part:begin -->") == 1
    assert "**teacher_entropy**" in text.split("<!-- bench:cpu-part:begin -->")[1]


def test_a_failing_provider_is_reported_and_fails_the_run(tmp_path, monkeypatch, capsys):
    from frkd_kernels import _backend
    from frkd_kernels.ops import teacher_entropy as entropy_op

    original = entropy_op.reference

    def broken_under_the_torch_backend(*args):  # eager calls the same function without use_backend
        if _backend.forced_backend() == "torch":
            raise RuntimeError("planted failure")
        return original(*args)

    monkeypatch.setattr(entropy_op, "reference", broken_under_the_torch_backend)
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--shapes", "tiny", "--ops", "teacher_entropy", "--providers", "torch", "eager",
            "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert bench_run.main(argv) == 1
    rows = json.loads(out.read_text())["results"]
    assert {r["provider"]: r["error"] for r in rows} == {"torch": "RuntimeError: planted failure", "eager": None}
    assert "FAILED RuntimeError: planted failure" in capsys.readouterr().err


def test_script_entry_point_runs():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--providers" in proc.stdout and "--markdown" in proc.stdout


def test_relations_synthetic_shapes_take_the_benchmarks_term_sizes(tmp_path, capsys):
    from bench import relations
    from frkd.losses import DATASET_DEFAULTS

    sizes = relations.term_sizes("synthetic")
    assert sizes["d_width"] == DATASET_DEFAULTS["synthetic"]["cwd"]["d_width"]
    assert sizes["pixel_memory_size"] == DATASET_DEFAULTS["synthetic"]["cirkd"]["pixel_memory_size"]
    assert relations.term_sizes("cirkd") == {}
    out = tmp_path / "rows.json"
    argv = ["--shapes", "synthetic", "--term-sizes", "synthetic", "--terms", "adv (G term + D loss)",
            "--repeats", "0", "--threads", "1", "--json", str(out)]
    assert relations.main(argv) == 0
    row, = json.loads(out.read_text())
    assert (row["B"], row["H"], row["W"]) == (16, 16, 16) and row["state_mb"] < 1  # D of width 8: ≈ 0.2 MB
    assert "batch 16, K 7, C_s 16, C_t 32" in capsys.readouterr().out


def test_relations_chunk_elements_reach_the_measuring_process():
    from bench import relations

    peaks = {}
    for chunk in (1 << 24, 1 << 18):  # B·N = 4 096: one block of 4 096² similarities, or 64 blocks of 64 rows
        row = relations.measure_provider("minibatch_pixel", "frkd chunked (before the op)", 16, 16, 16, 16, 0, "cpu",
                                         threads=1, chunk_elements=chunk)
        peaks[chunk] = row["peak_mb"]
    # one block holds 64 MiB of float32 similarities per network; blocks of 2^18 hold 1 MiB
    assert peaks[1 << 24] > peaks[1 << 18] + 64, peaks
    with pytest.raises(SystemExit):
        relations.main(["--chunk-elements", "0"])


def test_relations_providers_cover_cirkd_the_chunked_term_and_each_live_backend():
    from bench import relations

    for relation, before in (("minibatch_pixel", ["frkd chunked (before the op)"]), ("memory_pixel", [])):
        names = relations.providers(relation, "cpu")
        ops = names[1 + len(before):]
        assert names[: 1 + len(before)] == ["cirkd dense", *before]
        assert ops == [f"op:{b}" for b in frkd_kernels.BACKENDS if frkd_kernels.can_serve(b, "cpu")[0]]
        assert "op:torch" in ops


def test_relations_providers_agree_with_cirkd():
    """The dense CIRKD formulas and the chunked term of the bench give the op's values."""
    from bench import relations

    gen = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(2, 5, 3, 4, generator=gen), torch.randn(2, 6, 3, 4, generator=gen)
    op = cross_image.minibatch_pixel_relation(f_s, f_t, 0.1)
    torch.testing.assert_close(relations.cirkd_minibatch(f_s, f_t, 0.1), op)
    torch.testing.assert_close(relations.chunked_minibatch(f_s, f_t, 0.1, 24 * 5), op)
    s, t, keys = (F.normalize(torch.randn(n, 4, generator=gen), dim=1) for n in (7, 7, 9))
    torch.testing.assert_close(relations.cirkd_memory(s, t, keys, 0.1, 2.0),
                               frkd_kernels.relation_kl(s, t, keys, keys, temperature=0.2) * 4.0)
