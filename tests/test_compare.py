"""``python -m frkd.compare``: rows, the tuning grid, the paired table maths, and tiny end-to-end runs."""
import json
import os
import re
import statistics

import pytest

from frkd import benchmark, compare, train
from frkd.config import DATASET_DEFAULTS
from frkd.losses import resolved_loss_options
from frkd.benchmark import Row
from frkd.compare_report import by_row, class_range, read_results, table_markdown, tuning_choice
from frkd.stats import paired_difference

TINY = dict(benchmark.QUICK, crop_size=(32, 32), train_length=16, val_length=4, teacher_iterations=2,
            student_pretrained_base="none", teacher_pretrained_base="none",
            max_iterations=2, batch_size=2, width=4, teacher_width=4, teacher_backbone="resnet18")


def test_rows_put_none_first_and_ablations_after_frkd():
    rows = benchmark.table_rows(["kd", "frkd", "none"])
    names = [r.name for r in rows]
    assert names[:3] == ["none", "kd", "frkd"]
    assert names[3:3 + len(benchmark.ABLATIONS)] == [r.name for r in benchmark.ABLATIONS]
    assert all(r.method == "frkd" for r in rows[2:])
    assert [r.name for r in benchmark.table_rows(["kd"])] == ["kd"]


@pytest.mark.parametrize("grad_ratio, name", [(0.0, "frkd-no-calibration"), (0.3, "frkd-calibrated")])
def test_the_calibration_ablation_is_the_tuned_other_variant(monkeypatch, grad_ratio, name):
    from frkd.losses import recipes

    other = {"options": {"lambda_kd": 0.5}, "grad_ratio": grad_ratio}
    monkeypatch.setitem(recipes.TUNED_OTHER_CALIBRATION, "synthetic", {"frkd": other})
    row = benchmark.table_rows(["none", "frkd"])[-1]
    assert (row.name, row.method, row.options, row.grad_ratio) == (name, "frkd", {"lambda_kd": 0.5}, grad_ratio)
    monkeypatch.setitem(recipes.TUNED_OTHER_CALIBRATION, "synthetic", {})
    assert benchmark.table_rows(["none", "frkd"])[-1].name == benchmark.ABLATIONS[-1].name


def test_each_ablation_switches_off_exactly_its_own_part():
    """Each ablation row changes one resolved FRKD option, to its 'off' value, and nothing else."""
    from frkd.losses import resolved_loss_options

    off = {"frkd-no-pseudo-filter": ("no_pseudo_filter", True), "frkd-no-fgbg": ("no_fgbg", True),
           "frkd-no-coord-mask": ("no_coord_mask", True), "frkd-no-intra": ("lambda_intra", 0.0),
           "frkd-no-inter": ("lambda_inter", 0.0), "frkd-no-kd": ("lambda_kd", 0.0)}
    assert set(off) == {r.name for r in benchmark.ABLATIONS}
    base = resolved_loss_options("frkd", {}, "synthetic")
    for row in benchmark.ABLATIONS:
        ablated = resolved_loss_options("frkd", row.options, "synthetic")
        changed = {k: v for k, v in ablated.items() if base[k] != v}
        assert changed == dict([off[row.name]]), (row.name, changed)


def test_tuning_rows_scale_every_distillation_weight_of_the_recipe():
    from frkd.losses.recipes import recipe_options

    rows = benchmark.tuning_rows(["ifvd", "frkd"], scales=(0.1, 3.0))
    by_name = {r.name: r for r in rows}
    assert rows[0].name == "none"
    ifvd = recipe_options("ifvd")
    scaled = by_name["ifvd@x0.1"].options
    assert scaled == pytest.approx({k: 0.1 * ifvd[k] for k in ("lambda_kd", "lambda_ifv", "lambda_adv")})
    assert "lambda_d" not in scaled  # the discriminator's own loss weight is not a distillation weight
    assert by_name["ifvd@x3"].grad_ratio == 0.0 and "ifvd-calibrated@rho3" not in by_name
    calibrated = by_name["frkd-calibrated@rho0.1"]
    assert calibrated.grad_ratio == 0.1 and calibrated.options == benchmark.scaled_weights("frkd", 1.0)


def test_tuning_refuses_the_table_seeds(tmp_path):
    assert compare.main(["--tune", "--seeds", "100", "3", "--out-dir", str(tmp_path)]) == 2


def _record(row, seed, miou, classes=(0.9, 0.5)):
    return {"row": row, "method": row.split("@")[0].replace("-calibrated", ""), "seed": seed, "miou": miou,
            "per_class_iou": list(classes), "s_per_iter": 0.5, "peak_mem_mb": 10.0, "peak_mem_kind": "cpu_rss_delta"}


def test_table_reports_paired_intervals_and_class_spread():
    none = {0: 0.40, 1: 0.44, 2: 0.41}
    kd = {0: 0.45, 1: 0.47, 2: 0.44}
    frkd = {0: 0.46, 1: 0.49, 2: 0.47}
    results = [_record("none", s, m) for s, m in none.items()] + [_record("kd", s, m) for s, m in kd.items()]
    results += [_record("frkd", s, m, classes=(0.9, 0.1 + 0.2 * s)) for s, m in frkd.items()]
    rows = [Row("none", "none"), Row("kd", "kd"), Row("frkd", "frkd")]
    bench = benchmark.run_config(Row("none", "none"), seed=0, out_dir=".", **TINY)
    text = table_markdown(results, rows, {"name": "t", "miou": 0.6, "device": "cpu", "path": "/t.pt"}, bench)
    pct = lambda d: {s: 100 * v for s, v in d.items()}  # noqa: E731
    assert paired_difference(pct(kd), pct(none)).format() in text
    assert paired_difference(pct(frkd), pct(kd)).format() in text
    assert f"{statistics.fmean(pct(kd).values()):.2f} ± {statistics.stdev(pct(kd).values()):.2f}" in text
    assert class_range(by_row(results)["frkd"]) == pytest.approx(40.0)
    assert f"gap: {60 - statistics.fmean(pct(none).values()):.2f}" in text


def test_tuning_choice_takes_the_best_mean_over_shared_seeds():
    rows = benchmark.tuning_rows(["kd", "frkd"], scales=(0.1, 1.0))
    values = {"kd@x0.1": 0.5, "kd@x1": 0.6, "frkd@x0.1": 0.55, "frkd@x1": 0.52,
              "frkd-calibrated@rho0.1": 0.58, "frkd-calibrated@rho1": 0.57}
    results = [_record(name, s, v + 0.01 * (s - 100)) for name, v in values.items() for s in (100, 101)]
    choice = tuning_choice(results, rows)
    assert choice["kd"]["row"] == "kd@x1" and choice["kd"]["mean"] == pytest.approx(60.5)
    assert choice["frkd"]["row"] == "frkd-calibrated@rho0.1" and choice["frkd"]["grad_ratio"] == 0.1
    assert choice["frkd-uncalibrated"]["row"] == "frkd@x0.1"
    assert choice["frkd-calibrated"]["row"] == "frkd-calibrated@rho0.1"
    assert "kd-uncalibrated" not in choice and "kd-calibrated" not in choice
    # a method with an unfinished candidate is not chosen yet
    assert "kd" not in tuning_choice([r for r in results if r["row"] != "kd@x0.1"], rows)


def test_compare_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "QUICK", TINY)
    out = str(tmp_path / "cmp")
    argv = ["--quick", "--methods", "none", "kd", "--seeds", "7", "--out-dir", out, "--device", "cpu", "--jobs", "2"]
    assert compare.main(argv) == 0
    records = read_results(os.path.join(out, "results.jsonl"))
    assert sorted((r["row"], r["seed"]) for r in records) == [("kd", 7), ("none", 7)]
    for r in records:
        assert 0.0 <= r["miou"] <= 1.0 and r["iterations"] == TINY["max_iterations"]
        assert r["s_per_iter"] > 0 and r["peak_mem_kind"] == "cpu_rss_delta"
        assert len(r["per_class_iou"]) == DATASET_DEFAULTS["synthetic"]["num_classes"]
        assert r["weights"] == resolved_loss_options(r["method"], {}, "synthetic")
    table = open(os.path.join(out, "table.md")).read()
    assert "| none |" in table and "| kd |" in table
    with open(os.path.join(out, "gains.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(out, "teacher.pt"))
    assert json.load(open(os.path.join(out, "config.json")))["max_iterations"] == TINY["max_iterations"]
    run_summary = json.load(open(os.path.join(out, "runs", "kd-s7", "summary.json")))
    assert run_summary["config"]["loss"]["method"] == "kd" and run_summary["config"]["runtime"]["seed"] == 7

    # the table's own command reruns a (row, seed) to the same number
    for name, value in TINY.items():  # the CLI has no flags for the data sizes: shrink its defaults as QUICK did
        monkeypatch.setitem(DATASET_DEFAULTS["synthetic"], name, value)
    command = re.search(r"`python -m frkd.train (<flags> --seed <seed> [^`]*)`", table).group(1)
    flags = re.search(r"\| kd \| ([^|]*) \|", table).group(1).strip()
    rerun = str(tmp_path / "rerun")
    argv_kd = command.replace("<flags>", flags).replace("<seed>", "7").split() + ["--out-dir", rerun, "--device", "cpu"]
    assert train.main(argv_kd) == 0
    kd = next(r for r in records if r["row"] == "kd")
    assert json.load(open(os.path.join(rerun, "summary.json")))["student_miou"] == kd["miou"]

    def last_student_losses(run_dir):  # the distillation terms depend on the teacher: same terms, same teacher
        lines = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        return [r for r in lines if r.get("phase") == "student" and "loss" in r][-1]

    rerun_losses, table_losses = last_student_losses(rerun), last_student_losses(os.path.join(out, "runs", "kd-s7"))
    assert rerun_losses["kd"] > 0
    assert {k: rerun_losses[k] for k in ("iteration", "loss", "ce", "kd")} == \
        {k: table_losses[k] for k in ("iteration", "loss", "ce", "kd")}

    assert compare.main(argv) == 0  # finished (row, seed) pairs are skipped
    assert len(read_results(os.path.join(out, "results.jsonl"))) == 2
    monkeypatch.setattr(benchmark, "QUICK", dict(TINY, max_iterations=3))
    assert compare.main(argv) == 2  # another benchmark in the same out dir: refused


def test_tune_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "QUICK", TINY)
    out = str(tmp_path / "tune")
    argv = ["--tune", "--quick", "--methods", "kd", "--scales", "0.5", "2", "--seeds", "100", "--out-dir", out,
            "--device", "cpu"]
    assert compare.main(argv) == 0
    records = {r["row"]: r for r in read_results(os.path.join(out, "results.jsonl"))}
    assert set(records) == {"none", "kd@x0.5", "kd@x2"}
    assert records["kd@x2"]["weights"]["lambda_kd"] == 2.0
    choice = json.load(open(os.path.join(out, "tuned.json")))
    assert choice["kd"]["row"] in ("kd@x0.5", "kd@x2")
    assert "kd@x2" in open(os.path.join(out, "tuning.md")).read()
