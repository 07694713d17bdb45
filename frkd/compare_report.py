"""Per-run results of ``python -m frkd.compare`` (JSON lines) -> tables (markdown), tuning choice, chart.

A result record is one (row, seed) run: ``{"row", "method", "options", "seed", "miou", "per_class_iou",
"curve", "iterations", "weights", "grad_ratio", "term_scales", "s_per_iter", "peak_mem_mb", "peak_mem_kind",
...}`` with mIoU and IoU as fractions in [0, 1]; ``curve`` is [[iteration, mIoU], ...] of the run's
evaluations, the last one the final. Rows are compared pairwise over their shared seeds (``frkd.stats``),
also in convergence: the mIoU at the evaluation nearest one third of training, and the iterations a row
takes to reach ``none``'s final mIoU of the same seed.
"""
from __future__ import annotations

import json
import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .run_log import read_records  # noqa: E402
from .stats import mean_interval, paired_difference  # noqa: E402

PEAK_MEM_KINDS = {"cuda_max_allocated": "torch.cuda.max_memory_allocated",
                  "cpu_rss_delta": "peak RSS minus RSS before training (CPU)"}
# a class whose IoU spans more than this over a row's seeds (points) marks the row as unstable
UNSTABLE_CLASS_RANGE = 25.0


def read_results(path: str) -> list[dict]:
    """The records of a results JSONL file; [] when it does not exist. A torn last line is skipped."""
    return read_records(path) if os.path.exists(path) else []


def append_result(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def by_row(results: list[dict]) -> dict[str, dict[int, dict]]:
    """{row: {seed: record}} (a later record of the same pair wins)."""
    out: dict[str, dict[int, dict]] = {}
    for r in results:
        out.setdefault(r["row"], {})[r["seed"]] = r
    return out


def miou_by_seed(runs: dict[int, dict]) -> dict[int, float]:
    return {seed: 100 * r["miou"] for seed, r in runs.items()}


def class_range(runs: dict[int, dict]) -> float | None:
    """The largest spread (max − min over seeds, IoU points) of any class's IoU in a row; None with one seed."""
    if len(runs) < 2:
        return None
    per_class = list(zip(*(r["per_class_iou"] for r in runs.values())))
    return max(100 * (max(values) - min(values)) for values in per_class)


def curve_of(record: dict) -> dict[int, float]:
    """{iteration: mIoU %} of a run's evaluations ({} for a record without a curve)."""
    return {int(it): 100 * miou for it, miou in record.get("curve") or []}


def third_iteration(results: list[dict]) -> int | None:
    """The evaluation iteration nearest one third of training, shared by every run with a curve; None if none is."""
    curves = [curve_of(r) for r in results if r.get("curve")]
    if not curves:
        return None
    shared = set.intersection(*(set(c) for c in curves))
    third = max(r["iterations"] for r in results if r.get("curve")) / 3
    return min(sorted(shared), key=lambda it: abs(it - third)) if shared else None


def miou_at(runs: dict[int, dict], iteration: int) -> dict[int, float]:
    """{seed: mIoU % at ``iteration``} over the runs evaluated there."""
    return {seed: curve_of(r)[iteration] for seed, r in runs.items() if iteration in curve_of(r)}


def iterations_to_reach(record: dict, target: float) -> int | None:
    """The first evaluation iteration whose mIoU % is at least ``target``; None when never reached."""
    return next((it for it, miou in sorted(curve_of(record).items()) if miou >= target), None)


def reach_by_seed(runs: dict[int, dict], none: dict[int, float]) -> tuple[dict[int, int], list[int]]:
    """({seed: iterations to reach none's final mIoU of that seed}, [seeds where it is not reached])."""
    reached, missed = {}, []
    for seed in sorted(set(runs) & set(none)):
        if not runs[seed].get("curve"):
            continue
        it = iterations_to_reach(runs[seed], none[seed])
        if it is None:
            missed.append(seed)
        else:
            reached[seed] = it
    return reached, missed


def convergence_cells(row_name: str, runs: dict[str, dict[int, dict]], third: int | None) -> tuple[str, str]:
    """The two convergence cells of a row: mIoU at ``third`` and iterations to reach none's final mIoU, each
    the row's mean; paired difference to ``none`` [95% CI] ("not reached" on the seeds where it is not)."""
    if third is None or "none" not in runs:
        return "n/a", "n/a"
    none_final = miou_by_seed(runs["none"])
    mine = miou_at(runs[row_name], third)
    reached, missed = reach_by_seed(runs[row_name], none_final)
    at_third = _fmt(statistics.fmean(mine.values()) if mine else None, ".2f")
    if row_name == "none":
        return at_third, _fmt(statistics.fmean(reached.values()) if reached else None, ".0f")
    none_third = miou_at(runs["none"], third)
    if mine and set(mine) & set(none_third):
        at_third += "; " + paired_difference(mine, none_third).format()
    none_reached, _ = reach_by_seed(runs["none"], none_final)
    if not reached:
        return at_third, "not reached" if missed else "n/a"
    reach = f"{statistics.fmean(reached.values()):.0f}"
    if set(reached) & set(none_reached):
        reach += "; " + paired_difference(reached, none_reached).format("+.0f")
    if missed:
        reach += f" (not reached: seed{'s' if len(missed) > 1 else ''} {', '.join(map(str, missed))})"
    return at_third, reach


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _header(teacher: dict, bench, seeds: list[int], none_mean: float | None, flags: str) -> list[str]:
    """The table's preamble; ``flags`` names the columns that give one run's ``frkd.train`` flags."""
    d, m, o = bench.data, bench.model, bench.optim
    gap = 100 * teacher["miou"] - none_mean if none_mean is not None else None
    trained = f", {teacher['iterations']} iterations" if teacher.get("iterations") else ""
    error = (f", pixel error rate {100 * teacher['train_error']:.2f}% on {teacher.get('train_error_crops', 'the')} "
             "training crops (epoch 0's augmentation, clean labels)") if teacher.get("train_error") is not None else ""
    noise = f" --label-noise {d.label_noise:g}" if d.label_noise else ""
    lines = [f"Teacher {teacher['name']}{trained}: mIoU {100 * teacher['miou']:.2f} on the fixed val set{error}. "
             f"Student {m.student_model}-{m.student_backbone} (width {m.width}), {o.max_iterations} iterations per "
             f"run, batch {o.batch_size}, {d.num_classes} classes, {d.crop_size[0]}×{d.crop_size[1]} crops, device "
             f"{teacher['device']}, seeds {', '.join(map(str, seeds))} (shared by every row). Teacher − none gap: "
             f"{_fmt(gap, '.2f')} mIoU. One run of a row: `python -m frkd.train {flags} --seed <seed>"
             f" --max-iterations {o.max_iterations}{noise} --teacher-ckpt {teacher['path']}` (its `summary.json`, "
             "`student_miou`)."]
    if teacher.get("regime"):
        lines.append(teacher["regime"])
    if teacher.get("command"):
        lines.append(f"This table (rerun to resume): `{teacher['command']}`.")
    return [" ".join(lines), ""]


def table_markdown(results: list[dict], rows, teacher: dict, bench) -> str:
    """The method table: mean ± std mIoU, paired gain over ``none`` and FRKD's paired difference to each
    row with 95% t-intervals, the largest per-class IoU spread over seeds, time and memory."""
    runs = by_row(results)
    present = [row for row in rows if row.name in runs]
    seeds = sorted({s for row in present for s in runs[row.name]})
    none = miou_by_seed(runs["none"]) if "none" in runs else None
    frkd = miou_by_seed(runs["frkd"]) if "frkd" in runs else None
    lines = _header(teacher, bench, seeds, statistics.fmean(none.values()) if none else None, "<flags>")
    third = third_iteration([r for row in present for r in runs[row.name].values()])
    lines += [f"| row | flags (over the synthetic defaults) | mIoU % mean ± std | gain over none [95% CI] | "
              f"frkd − row [95% CI] | mIoU at iteration {_fmt(third, 'd')}; − none [95% CI] | iterations to none's "
              "final mIoU; − none [95% CI] | max class IoU spread | s / iter | peak mem (MB) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    per_seed = []
    for row in present:
        mine = miou_by_seed(runs[row.name])
        values = [mine[s] for s in sorted(mine)]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        gain = "—" if row.name == "none" or not none else paired_difference(mine, none).format()
        versus = "—" if row.name == "frkd" or not frkd else paired_difference(frkd, mine).format()
        records = list(runs[row.name].values())
        mems = [r["peak_mem_mb"] for r in records if r.get("peak_mem_mb") is not None]
        described = row.describe()
        flags = f"--method {row.method}" + ("" if described == "—" else f" {described}")
        at_third, reach = convergence_cells(row.name, runs, third)
        lines.append(f"| {row.name} | {flags} | {statistics.fmean(values):.2f}{spread} | {gain} | {versus} | "
                     f"{at_third} | {reach} | {_fmt(class_range(runs[row.name]), '.1f')} | "
                     f"{statistics.fmean(r['s_per_iter'] for r in records):.3f} | {_fmt(max(mems) if mems else None, '.0f')} |")
        per_seed.append(f"{row.name} " + ", ".join(f"{v:.2f}" for v in values))
    kind = next((r.get("peak_mem_kind") for r in results if r.get("peak_mem_kind")), None)
    lines += ["", "Intervals: mean of the per-seed differences ± t(0.975, n−1)·sd/√n over the shared seeds. "
              f"Convergence: each run is evaluated at fixed iterations (the last its final evaluation); mIoU at "
              f"iteration {_fmt(third, 'd')} (the evaluation nearest one third of training), and the first evaluated "
              "iteration at which a run reaches the final mIoU of `none` on the same seed (`none`: its own final; "
              "paired over the seeds where both reach it, the others listed as not reached). "
              f"Max class IoU spread: the largest max − min over seeds of one class's IoU (points; > "
              f"{UNSTABLE_CLASS_RANGE:g} marks a row whose classes are learnt on some seeds only). Peak memory: "
              f"{PEAK_MEM_KINDS.get(kind, 'n/a')}.", "", "Per-seed mIoU (seeds " + ", ".join(map(str, seeds)) +
              "): " + "; ".join(per_seed) + "."]
    return "\n".join(lines) + "\n"


def tuning_choice(results: list[dict], rows, seeds) -> dict:
    """Per method, the tuning row with the best mean mIoU over ``seeds`` (the tuning seeds) among the rows that
    finished every one of them: {method: {"row", "mean", "options", "grad_ratio", "per_term", "knob", "seeds",
    "by_knob", "unfinished"}}, ``knob`` the chosen row's tuning knob (``frkd.benchmark.KNOBS``), ``by_knob``
    the best row and mean of each knob, ``unfinished`` the candidates left out (a run that failed, e.g.
    diverged, or has not run yet: one such candidate does not shrink the seeds the others are compared on)."""
    runs = by_row(results)
    seeds = sorted(seeds)
    candidates: dict[str, list] = {}
    for row in rows:
        if row.name != "none":
            candidates.setdefault(row.method, []).append(row)
    choice = {}
    for method, cands in candidates.items():
        complete = [row for row in cands if set(seeds) <= set(runs.get(row.name, {}))]
        if not complete:
            continue
        scored = [(statistics.fmean(100 * runs[row.name][s]["miou"] for s in seeds), row) for row in complete]
        by_knob = {}
        for mean, row in scored:
            if row.knob not in by_knob or mean > by_knob[row.knob]["mean"]:
                by_knob[row.knob] = {"row": row.name, "mean": mean}
        mean, row = max(scored, key=lambda x: x[0])
        choice[method] = {"row": row.name, "mean": mean, "options": row.options, "grad_ratio": row.grad_ratio,
                          "per_term": row.per_term, "knob": row.knob, "seeds": seeds, "by_knob": by_knob,
                          "unfinished": [row.name for row in cands if row not in complete]}
    return choice


def tuning_markdown(results: list[dict], rows, choice: dict, teacher: dict, bench) -> str:
    """Mean mIoU (± std) of every tuning row with its knob, the chosen one per method in bold, none for
    reference; then per method the chosen setting, its knob, and the best of every knob."""
    from .benchmark import KNOBS

    runs = by_row(results)
    seeds = sorted({s for r in runs.values() for s in r})
    none = runs.get("none")
    lines = _header(teacher, bench, seeds, statistics.fmean(miou_by_seed(none).values()) if none else None,
                    "--method <method> <weights>")
    lines += ["| row | method | knob | weights / gradient ratio | mIoU % mean ± std | seeds | per seed |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    chosen = {c["row"] for c in choice.values()}
    for row in rows:
        if row.name not in runs:
            continue
        values = [100 * runs[row.name][s]["miou"] for s in sorted(runs[row.name])]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        name = f"**{row.name}**" if row.name in chosen else row.name
        knob = "—" if row.name == "none" else row.knob
        lines.append(f"| {name} | {row.method} | {knob} | {row.describe()} | {statistics.fmean(values):.2f}{spread} | "
                     f"{','.join(map(str, sorted(runs[row.name])))} | {', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", "Knobs: " + "; ".join(f"{k}: {v}" for k, v in KNOBS.items()) + ".", "",
              "Chosen (best mean over the tuning seeds; bold above), with the best of each knob:"]
    lines += [f"- {m}: {c['row']} ({c['mean']:.2f}), knob {c['knob']}; " +
              ", ".join(f"{k} {b['row']} {b['mean']:.2f}" for k, b in c["by_knob"].items()) +
              (f"; not finished on every tuning seed, left out: {', '.join(c['unfinished'])}" if c["unfinished"]
               else "") for m, c in choice.items()]
    return "\n".join(lines) + "\n"


def gains_chart(results: list[dict], rows, teacher: dict, path: str) -> None:
    """Paired gain over ``none`` per row with its 95% interval; the teacher's gap as a dashed line."""
    runs = by_row(results)
    if "none" not in runs:
        return
    none = miou_by_seed(runs["none"])
    shown = [(row, paired_difference(miou_by_seed(runs[row.name]), none)) for row in rows
             if row.name in runs and row.name != "none"]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * len(shown) + 2.5), 4.0))
    x = list(range(len(shown)))
    means = [d.mean for _, d in shown]
    errors = [[d.mean - d.low if d.low is not None else 0 for _, d in shown],
              [d.high - d.mean if d.high is not None else 0 for _, d in shown]]
    colours = ["C3" if row.method == "frkd" and row.name == "frkd" else "salmon" if row.method == "frkd" else "C0"
               for row, _ in shown]
    ax.bar(x, means, yerr=errors, color=colours, capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    gap = 100 * teacher["miou"] - statistics.fmean(none.values())
    ax.axhline(gap, color="0.3", ls="--", lw=1, label=f"teacher − none {gap:.1f}")
    ax.set_xticks(x, [row.name for row, _ in shown], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("mIoU gain over none (points)")
    ax.set_title(f"paired over seeds {', '.join(map(str, sorted(none)))}; bars: 95% t-interval", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_chart(results: list[dict], rows, teacher: dict, path: str) -> bool:
    """Left: mean validation mIoU over the seeds at each evaluated iteration, per row, with its 95% t-interval
    as a band (FRKD's ablations dashed, the teacher dotted). Right: each method's paired difference to ``none``
    at each evaluation (mean over the shared seeds, 95% t-interval band), which the seeds' shared variation
    does not widen. False when no run has a curve."""
    runs = by_row(results)
    shown = [row for row in rows if any(r.get("curve") for r in runs.get(row.name, {}).values())]
    if not shown:
        return False
    from .benchmark import table_rows

    canonical = [row.name for row in table_rows()]  # a row keeps its colour in every table
    fig, (ax, diff) = plt.subplots(1, 2, figsize=(13, 4.8))
    none = {seed: curve_of(r) for seed, r in runs.get("none", {}).items() if r.get("curve")}
    for i, row in enumerate(shown):
        curves = {seed: curve_of(r) for seed, r in runs[row.name].items() if r.get("curve")}
        iterations = sorted(set.intersection(*(set(c) for c in curves.values())))
        stats = [mean_interval([c[it] for c in curves.values()]) for it in iterations]
        main = row.name == row.method
        colour = canonical.index(row.name) if row.name in canonical else len(canonical) + i
        style = dict(color=plt.get_cmap("tab20")(colour % 20), ls="-" if main else "--",
                     lw=1.8 if row.name in ("none", "frkd") else 1.1, marker="o" if main else None, ms=3)
        line, = ax.plot(iterations, [d.mean for d in stats], label=f"{row.name} (n={len(curves)})", **style)
        if len(curves) > 1:
            ax.fill_between(iterations, [d.low for d in stats], [d.high for d in stats], color=line.get_color(),
                            alpha=0.10, lw=0)
        paired = [seed for seed in curves if seed in none]
        if row.name == "none" or not main or not paired:  # the methods only: the ablations overlap FRKD
            continue
        shared = [it for it in iterations if all(it in none[seed] for seed in paired)]
        gaps = [mean_interval([curves[seed][it] - none[seed][it] for seed in paired]) for it in shared]
        diff.plot(shared, [d.mean for d in gaps], **style)
        if len(paired) > 1:
            diff.fill_between(shared, [d.low for d in gaps], [d.high for d in gaps], color=line.get_color(),
                              alpha=0.10, lw=0)
    ax.axhline(100 * teacher["miou"], color="0.3", ls=":", lw=1, label=f"teacher {100 * teacher['miou']:.1f}")
    ax.set_xlabel("student iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("mean over seeds; bands: 95% t-interval of the mean", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    diff.axhline(0, color="k", lw=0.8)
    diff.set_xlabel("student iteration")
    diff.set_ylabel("mIoU − none (points)")
    diff.set_title("each method − none, paired over the shared seeds; bands: 95% t-interval", fontsize=9)
    diff.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
