"""``python -m frkd.compare``: rows, table maths, and one tiny end-to-end run (2 methods, 1 seed)."""
import json
import os
import statistics

import pytest

from frkd import benchmark, compare
from frkd.compare_report import markdown_table, read_results, summarise

TINY = dict(benchmark.QUICK, crop_size=[32, 32], train_length=16, val_length=4, teacher_iterations=2,
            iterations=2, batch_size=2, width=4, teacher_width=4, teacher_backbone="resnet18")


def test_rows_put_none_first_and_ablations_after_frkd():
    rows = compare.table_rows(["kd", "frkd", "none"], ablations=True, frkd_flags=["--tau", "0.5"])
    names = [name for name, _, _ in rows]
    assert names[:3] == ["none", "kd", "frkd"]
    assert names[3:] == list(benchmark.ABLATIONS)
    for name, method, flags in rows[2:]:
        assert method == "frkd" and flags[:2] == ["--tau", "0.5"]
        assert flags[2:] == benchmark.ABLATIONS.get(name, [])
    assert [n for n, _, _ in compare.table_rows(["kd"], ablations=True, frkd_flags=[])] == ["kd"]


def test_baseline_flags_go_to_their_row_only():
    flags = compare.parse_baseline_flags(["ifvd=--lambda-intra 2"])
    rows = dict((name, f) for name, _, f in compare.table_rows(["none", "ifvd", "kd"], False, [], flags))
    assert rows == {"none": [], "ifvd": ["--lambda-intra", "2"], "kd": []}
    for bad in ("ifvd", "frkd=--tau 0.5", "nope=--x 1"):
        with pytest.raises(SystemExit, match="--baseline-flags"):
            compare.parse_baseline_flags([bad])


def test_each_ablation_switches_off_exactly_its_own_part():
    """Each ablation row's flags change one resolved FRKD option, to its 'off' value, and nothing else."""
    from frkd.losses import resolved_loss_options

    off = {"frkd-no-pseudo-filter": ("no_pseudo_filter", True), "frkd-no-fgbg": ("no_fgbg", True),
           "frkd-no-coord-mask": ("no_coord_mask", True), "frkd-no-intra": ("lambda_intra", 0.0),
           "frkd-no-inter": ("lambda_inter", 0.0)}
    assert set(off) == set(benchmark.ABLATIONS)
    tuned = benchmark.options_from_flags("frkd", benchmark.TUNED_FRKD_FLAGS)
    base = resolved_loss_options("frkd", tuned, "synthetic")
    for name, flags in benchmark.ABLATIONS.items():
        ablated = resolved_loss_options("frkd", benchmark.options_from_flags(
            "frkd", benchmark.TUNED_FRKD_FLAGS.split() + flags), "synthetic")
        changed = {k: v for k, v in ablated.items() if base[k] != v}
        assert changed == dict([off[name]]), (name, changed)
    with pytest.raises(ValueError, match="--no-fgbg does not apply to --method kd"):
        benchmark.options_from_flags("kd", ["--no-fgbg"])


def test_summary_means_stds_and_gain():
    records = [{"row": row, "method": row, "flags": [], "seed": s, "miou": m, "s_per_iter": 0.5,
                "peak_mem_mb": 10.0 + s, "peak_mem_kind": "cpu_rss_delta"}
               for row, values in {"none": [0.40, 0.44], "kd": [0.50, 0.47]}.items() for s, m in enumerate(values)]
    rows = summarise(records, ["none", "kd", "cwd"])
    assert [r["row"] for r in rows] == ["none", "kd"]
    kd = rows[1]
    assert kd["mean"] == pytest.approx(statistics.fmean([50, 47]))
    assert kd["std"] == pytest.approx(statistics.stdev([50, 47]))
    assert kd["gain"] == pytest.approx(kd["mean"] - rows[0]["mean"])
    assert kd["peak_mem_mb"] == 11.0
    table = markdown_table(rows, {"name": "t", "miou": 0.6}, {"student": "s", "iterations": 2, "batch_size": 2,
                                                             "device": "cpu"})
    assert f"{kd['mean']:.2f} ± {kd['std']:.2f}" in table
    assert f"{kd['gain']:+.2f}" in table
    assert f"gap: {60 - rows[0]['mean']:.2f}" in table


def test_compare_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "QUICK", TINY)
    out = str(tmp_path / "cmp")
    argv = ["--quick", "--methods", "none", "kd", "--seeds", "7", "--out-dir", out, "--device", "cpu",
            "--threads", "1"]
    assert compare.main(argv) == 0
    records = read_results(os.path.join(out, "results.jsonl"))
    assert sorted((r["row"], r["seed"]) for r in records) == [("kd", 7), ("none", 7)]
    for r in records:
        assert 0.0 <= r["miou"] <= 1.0 and r["iterations"] == TINY["iterations"]
        assert r["s_per_iter"] > 0 and r["peak_mem_kind"] == "cpu_rss_delta"
    table = open(os.path.join(out, "table.md")).read()
    assert "| none |" in table and "| kd |" in table
    with open(os.path.join(out, "miou.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(out, "teacher.pt"))
    assert json.load(open(os.path.join(out, "config.json")))["iterations"] == TINY["iterations"]
    run_summary = json.load(open(os.path.join(out, "runs", "kd-s7", "summary.json")))
    assert run_summary["config"]["loss"]["method"] == "kd" and run_summary["config"]["runtime"]["seed"] == 7

    assert compare.main(argv) == 0  # finished (row, seed) pairs are skipped
    assert len(read_results(os.path.join(out, "results.jsonl"))) == 2
    with pytest.raises(SystemExit, match="another benchmark"):
        compare.main(argv + ["--iterations", "3"])
