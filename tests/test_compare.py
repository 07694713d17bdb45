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
from frkd.compare_report import (by_row, class_range, convergence_cells, read_results, table_markdown,
                                 third_iteration, tuning_choice, tuning_markdown)
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

    rows = benchmark.tuning_rows(["ifvd", "frkd"], scales=(0.1, 3.0), rhos=(0.1, 1.0))
    by_name = {r.name: r for r in rows}
    assert rows[0].name == "none"
    ifvd = recipe_options("ifvd")
    scaled = by_name["ifvd@x0.1"].options
    assert scaled == pytest.approx({k: 0.1 * ifvd[k] for k in ("lambda_kd", "lambda_ifv", "lambda_adv")})
    assert "lambda_d" not in scaled  # the discriminator's own loss weight is not a distillation weight
    assert by_name["ifvd@x3"].grad_ratio == 0.0 and by_name["ifvd@x3"].knob == "scale"
    calibrated = by_name["frkd-calibrated@rho0.1"]
    assert calibrated.grad_ratio == 0.1 and calibrated.options == benchmark.scaled_weights("frkd", 1.0)
    assert not calibrated.per_term and calibrated.knob == "rho"


def test_every_method_gets_the_same_knobs_and_multi_term_recipes_a_rho_per_term():
    rows = benchmark.tuning_rows(["kd", "cwd", "frkd"], scales=(0.1, 1.0), rhos=(0.3, 3.0))
    knobs = {}
    for row in rows[1:]:
        knobs.setdefault(row.method, []).append((row.knob, row.grad_ratio if row.grad_ratio else None))
    for method in ("kd", "cwd", "frkd"):
        assert knobs[method][:4] == [("scale", None), ("scale", None), ("rho", 0.3), ("rho", 3.0)]
    assert knobs["kd"][4:] == []  # one term: a ρ per term is the shared ρ
    assert knobs["cwd"][4:] == knobs["frkd"][4:] == [("rho-per-term", 0.3), ("rho-per-term", 3.0)]
    per_term = next(r for r in rows if r.name == "cwd-per-term@rho3")
    assert per_term.describe().endswith("--distill-grad-ratio 3 --distill-grad-per-term")
    config = benchmark.run_config(per_term, seed=100, out_dir=".")
    assert config.loss.grad_per_term and config.loss.grad_ratio == 3.0


def test_table_runs_evaluate_at_six_fixed_points_ending_at_the_last_iteration():
    for iterations in (20, 300, 301):
        config = benchmark.run_config(Row("none", "none"), seed=0, out_dir=".", max_iterations=iterations)
        points = [i for i in range(1, iterations + 1) if i % config.runtime.val_per_iters == 0 or i == iterations]
        assert len(points) >= benchmark.EVAL_POINTS and points[-1] == iterations
    assert DATASET_DEFAULTS["synthetic"]["val_per_iters"] == benchmark.eval_every(
        DATASET_DEFAULTS["synthetic"]["max_iterations"])


def test_robustness_regimes_change_the_teacher_or_the_student_labels_only():
    main = benchmark.run_config(Row("kd", "kd"), seed=0, out_dir=".")
    weak, weak_teacher = (benchmark.run_config(Row("kd", "kd"), seed=0, out_dir=".", regime="weak-teacher"),
                          benchmark.teacher_config(out_dir=".", regime="weak-teacher"))
    assert weak_teacher.optim.teacher_iterations == round(main.optim.teacher_iterations / 4)
    assert weak.data == main.data and weak.loss == main.loss
    noisy = benchmark.run_config(Row("kd", "kd"), seed=0, out_dir=".", regime="noisy-labels")
    assert noisy.data.label_noise == benchmark.NOISY_LABEL_FRACTION
    assert benchmark.teacher_config(out_dir=".", regime="noisy-labels").data.label_noise == 0.0
    names = [r.name for r in benchmark.table_rows(regime="noisy-labels")]
    assert names == ["none", "kd", "cwd", "fitnet", "cirkd", "frkd", "frkd-no-pseudo-filter", "frkd-no-fgbg",
                     "frkd-no-coord-mask"]


def test_help_shows_each_default_once():
    text = compare.build_parser().format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in re.split(r"\n  -", text):
        assert option.count("(default:") <= 1, option


def test_tuning_refuses_the_table_seeds(tmp_path):
    assert compare.main(["--tune", "--seeds", "100", "3", "--out-dir", str(tmp_path)]) == 2


def test_regimes_refuse_tuning_and_a_given_weak_teacher(tmp_path, capsys):
    assert compare.main(["--tune", "--regime", "noisy-labels", "--out-dir", str(tmp_path)]) == 2
    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"")
    assert compare.main(["--regime", "weak-teacher", "--teacher-ckpt", str(teacher), "--out-dir", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("frkd.compare: error: --regime noisy-labels: tuning runs on the main benchmark only")
    assert errors[1].startswith("frkd.compare: error: --teacher-ckpt: the weak-teacher regime trains its own")


def _record(row, seed, miou, classes=(0.9, 0.5), curve=None):
    return {"row": row, "method": row.split("@")[0].replace("-calibrated", "").replace("-per-term", ""), "seed": seed,
            "miou": miou, "per_class_iou": list(classes), "s_per_iter": 0.5, "peak_mem_mb": 10.0,
            "peak_mem_kind": "cpu_rss_delta", "iterations": 60, "curve": curve or [[60, miou]]}


def _curve(*values):  # mIoU (fractions) at iterations 10, 20, ..., 60
    return [[10 * (i + 1), v] for i, v in enumerate(values)]


def test_convergence_columns_pair_each_row_with_none():
    none = {0: _curve(.1, .2, .3, .4, .5, .6), 1: _curve(.1, .2, .3, .4, .5, .62), 2: _curve(.1, .2, .3, .4, .6, .6)}
    kd = {0: _curve(.2, .3, .6, .6, .6, .6), 1: _curve(.2, .4, .5, .6, .63, .64), 2: _curve(.1, .3, .5, .6, .6, .61)}
    bad = {0: _curve(.1, .1, .1, .1, .1, .1), 1: _curve(.1, .2, .3, .7, .7, .7), 2: _curve(.1, .2, .3, .3, .3, .3)}
    results = [_record(name, s, c[-1][1], curve=c) for name, runs in (("none", none), ("kd", kd), ("bad", bad))
               for s, c in runs.items()]
    runs = by_row(results)
    third = third_iteration(results)
    assert third == 20
    at_third, reach = convergence_cells("kd", runs, third)
    # mIoU at iteration 20: kd 30, 40, 30 against none's 20, 20, 20
    assert at_third == f"{100 / 3:.2f}; " + paired_difference({0: 30, 1: 40, 2: 30}, {0: 20, 1: 20, 2: 20}).format()
    # none reaches its own final at 60, 60, 50; kd reaches none's final (60, 62, 60) at 30, 50, 40
    assert reach == "40; " + paired_difference({0: 30, 1: 50, 2: 40}, {0: 60, 1: 60, 2: 50}).format("+.0f")
    assert convergence_cells("none", runs, third)[1] == f"{170 / 3:.0f}"
    assert convergence_cells("bad", runs, third)[1] == "40; -20 (not reached: seeds 0, 2)"
    results = [r for r in results if not (r["row"] == "bad" and r["seed"] == 1)]
    assert convergence_cells("bad", by_row(results), third)[1] == "not reached"


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


def test_tuning_choice_takes_the_best_mean_over_the_tuning_seeds():
    rows = benchmark.tuning_rows(["kd", "frkd"], scales=(0.1, 1.0), rhos=(0.1, 1.0))
    values = {"kd@x0.1": 0.5, "kd@x1": 0.6, "kd-calibrated@rho0.1": 0.55, "kd-calibrated@rho1": 0.59,
              "frkd@x0.1": 0.55, "frkd@x1": 0.52, "frkd-calibrated@rho0.1": 0.58, "frkd-calibrated@rho1": 0.57,
              "frkd-per-term@rho0.1": 0.59, "frkd-per-term@rho1": 0.4}
    results = [_record(name, s, v + 0.01 * (s - 100)) for name, v in values.items() for s in (100, 101)]
    choice = tuning_choice(results, rows, (100, 101))
    assert choice["kd"]["row"] == "kd@x1" and choice["kd"]["mean"] == pytest.approx(60.5)
    assert choice["kd"]["knob"] == "scale" and choice["kd"]["by_knob"]["rho"]["row"] == "kd-calibrated@rho1"
    assert choice["frkd"]["row"] == "frkd-per-term@rho0.1" and choice["frkd"]["grad_ratio"] == 0.1
    assert choice["frkd"]["per_term"] and choice["frkd"]["knob"] == "rho-per-term"
    assert {k: b["row"] for k, b in choice["frkd"]["by_knob"].items()} == {
        "scale": "frkd@x0.1", "rho": "frkd-calibrated@rho0.1", "rho-per-term": "frkd-per-term@rho0.1"}
    text = tuning_markdown(results, rows, choice, {"name": "t", "miou": 0.6, "device": "cpu", "path": "/t.pt"},
                           benchmark.run_config(Row("none", "none"), seed=0, out_dir=".", **TINY))
    assert "- frkd: frkd-per-term@rho0.1 (59.50), knob rho-per-term;" in text
    # a candidate that failed on one seed (diverged) is left out and named; the others keep every seed
    failed = [r for r in results if (r["row"], r["seed"]) != ("frkd-per-term@rho0.1", 101)]
    frkd = tuning_choice(failed, rows, (100, 101))["frkd"]
    assert frkd["row"] == "frkd-calibrated@rho0.1" and frkd["mean"] == pytest.approx(58.5)
    assert frkd["seeds"] == [100, 101] and frkd["unfinished"] == ["frkd-per-term@rho0.1"]
    assert "left out: frkd-per-term@rho0.1" in tuning_markdown(failed, rows, tuning_choice(failed, rows, (100, 101)),
                                                               {"name": "t", "miou": 0.6, "device": "cpu",
                                                                "path": "/t.pt"},
                                                               benchmark.run_config(Row("none", "none"), seed=0,
                                                                                    out_dir=".", **TINY))
    # a method none of whose candidates finished every seed is not chosen
    assert "kd" not in tuning_choice([r for r in results if r["row"].startswith("frkd")], rows, (100, 101))


def test_compare_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "QUICK", TINY)
    out = str(tmp_path / "cmp")
    argv = ["--quick", "--methods", "none", "kd", "--seeds", "7", "--out-dir", out, "--device", "cpu", "--jobs", "2"]
    assert compare.main(argv) == 0
    records = read_results(os.path.join(out, "results.jsonl"))
    assert sorted((r["row"], r["seed"]) for r in records) == [("kd", 7), ("none", 7)]
    for r in records:
        assert 0.0 <= r["miou"] <= 1.0 and r["iterations"] == TINY["max_iterations"]
        assert r["curve"][-1] == [TINY["max_iterations"], r["miou"]]
        assert r["s_per_iter"] > 0 and r["peak_mem_kind"] == "cpu_rss_delta"
        assert len(r["per_class_iou"]) == DATASET_DEFAULTS["synthetic"]["num_classes"]
        assert r["weights"] == resolved_loss_options(r["method"], {}, "synthetic")
    table = open(os.path.join(out, "table.md")).read()
    assert "| none |" in table and "| kd |" in table
    for chart in ("gains.png", "curves.png"):
        with open(os.path.join(out, chart), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"`python -m frkd.compare {' '.join(argv)}`" in table and f"on {TINY['train_length']} training crops" in table
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
    argv = ["--tune", "--quick", "--methods", "kd", "--scales", "0.5", "2", "--rhos", "1", "--seeds", "100",
            "--out-dir", out, "--device", "cpu"]
    assert compare.main(argv) == 0
    records = {r["row"]: r for r in read_results(os.path.join(out, "results.jsonl"))}
    assert set(records) == {"none", "kd@x0.5", "kd@x2", "kd-calibrated@rho1"}
    assert records["kd@x2"]["weights"]["lambda_kd"] == 2.0
    assert records["kd-calibrated@rho1"]["grad_ratio"] == 1.0 and records["kd-calibrated@rho1"]["term_scales"]
    choice = json.load(open(os.path.join(out, "tuned.json")))
    assert choice["kd"]["row"] in ("kd@x0.5", "kd@x2", "kd-calibrated@rho1")
    assert set(choice["kd"]["by_knob"]) == {"scale", "rho"}
    assert "kd@x2" in open(os.path.join(out, "tuning.md")).read()
