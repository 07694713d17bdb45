"""Per-run results of ``python -m frkd.compare`` (JSON lines) -> tables (markdown), tuning choice, chart.

A result record is one (row, seed) run: ``{"row", "method", "options", "seed", "miou", "per_class_iou",
"weights", "grad_ratio", "term_scales", "s_per_iter", "peak_mem_mb", "peak_mem_kind", ...}`` with mIoU
and IoU as fractions in [0, 1]. Rows are compared pairwise over their shared seeds (``frkd.stats``).
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
from .stats import paired_difference  # noqa: E402

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


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _header(teacher: dict, bench, seeds: list[int], none_mean: float | None, flags: str) -> list[str]:
    """The table's preamble; ``flags`` names the columns that give one run's ``frkd.train`` flags."""
    d, m, o = bench.data, bench.model, bench.optim
    gap = 100 * teacher["miou"] - none_mean if none_mean is not None else None
    return [f"Teacher {teacher['name']}: mIoU {100 * teacher['miou']:.2f} on the fixed val set. Student "
            f"{m.student_model}-{m.student_backbone} (width {m.width}), {o.max_iterations} iterations per run, "
            f"batch {o.batch_size}, {d.num_classes} classes, {d.crop_size[0]}×{d.crop_size[1]} crops, device "
            f"{teacher['device']}, seeds {', '.join(map(str, seeds))} (shared by every row). Teacher − none gap: "
            f"{_fmt(gap, '.2f')} mIoU. One run of a row: `python -m frkd.train {flags} --seed <seed>"
            f" --max-iterations {o.max_iterations} --teacher-ckpt {teacher['path']}` (its `summary.json`, "
            "`student_miou`).", ""]


def table_markdown(results: list[dict], rows, teacher: dict, bench) -> str:
    """The method table: mean ± std mIoU, paired gain over ``none`` and FRKD's paired difference to each
    row with 95% t-intervals, the largest per-class IoU spread over seeds, time and memory."""
    runs = by_row(results)
    present = [row for row in rows if row.name in runs]
    seeds = sorted({s for row in present for s in runs[row.name]})
    none = miou_by_seed(runs["none"]) if "none" in runs else None
    frkd = miou_by_seed(runs["frkd"]) if "frkd" in runs else None
    lines = _header(teacher, bench, seeds, statistics.fmean(none.values()) if none else None, "<flags>")
    lines += ["| row | flags (over the synthetic defaults) | mIoU % mean ± std | gain over none [95% CI] | "
              "frkd − row [95% CI] | max class IoU spread | s / iter | peak mem (MB) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
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
        lines.append(f"| {row.name} | {flags} | {statistics.fmean(values):.2f}{spread} | {gain} | {versus} | "
                     f"{_fmt(class_range(runs[row.name]), '.1f')} | "
                     f"{statistics.fmean(r['s_per_iter'] for r in records):.3f} | {_fmt(max(mems) if mems else None, '.0f')} |")
        per_seed.append(f"{row.name} " + ", ".join(f"{v:.2f}" for v in values))
    kind = next((r.get("peak_mem_kind") for r in results if r.get("peak_mem_kind")), None)
    lines += ["", "Intervals: mean of the per-seed differences ± t(0.975, n−1)·sd/√n over the shared seeds. "
              f"Max class IoU spread: the largest max − min over seeds of one class's IoU (points; > "
              f"{UNSTABLE_CLASS_RANGE:g} marks a row whose classes are learnt on some seeds only). Peak memory: "
              f"{PEAK_MEM_KINDS.get(kind, 'n/a')}.", "", "Per-seed mIoU (seeds " + ", ".join(map(str, seeds)) +
              "): " + "; ".join(per_seed) + "."]
    return "\n".join(lines) + "\n"


def tuning_choice(results: list[dict], rows) -> dict:
    """Per method, the tuning row with the best mean mIoU over the seeds every candidate finished:
    {method: {"row", "mean", "options", "grad_ratio"}}; for a method tuned with and without
    calibration also ``<method>-uncalibrated`` and ``<method>-calibrated`` (the best row of each variant)."""
    runs = by_row(results)
    candidates: dict[str, list] = {}
    for row in rows:
        if row.name != "none":
            candidates.setdefault(row.method, []).append(row)
    choice = {}
    for method, cands in candidates.items():
        finished = [runs.get(row.name, {}) for row in cands]
        if not all(finished):
            continue
        seeds = set.intersection(*(set(f) for f in finished))
        if not seeds:
            continue

        def best(pool):
            scored = [(statistics.fmean(100 * runs[row.name][s]["miou"] for s in seeds), row) for row in pool]
            mean, row = max(scored, key=lambda x: x[0])
            return {"row": row.name, "mean": mean, "options": row.options, "grad_ratio": row.grad_ratio,
                    "seeds": sorted(seeds)}

        choice[method] = best(cands)
        plain = [row for row in cands if not row.grad_ratio]
        calibrated = [row for row in cands if row.grad_ratio]
        if plain and calibrated:
            choice[f"{method}-uncalibrated"], choice[f"{method}-calibrated"] = best(plain), best(calibrated)
    return choice


def tuning_markdown(results: list[dict], rows, choice: dict, teacher: dict, bench) -> str:
    """Mean mIoU (± std) of every tuning row, the chosen one per method in bold, none for reference."""
    runs = by_row(results)
    seeds = sorted({s for r in runs.values() for s in r})
    none = runs.get("none")
    lines = _header(teacher, bench, seeds, statistics.fmean(miou_by_seed(none).values()) if none else None,
                    "--method <method> <weights>")
    lines += ["| row | method | weights / gradient ratio | mIoU % mean ± std | seeds | per seed |",
              "| --- | --- | --- | --- | --- | --- |"]
    chosen = {c["row"] for c in choice.values()}
    for row in rows:
        if row.name not in runs:
            continue
        values = [100 * runs[row.name][s]["miou"] for s in sorted(runs[row.name])]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        name = f"**{row.name}**" if row.name in chosen else row.name
        lines.append(f"| {name} | {row.method} | {row.describe()} | {statistics.fmean(values):.2f}{spread} | "
                     f"{','.join(map(str, sorted(runs[row.name])))} | {', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", "Chosen (best mean over the tuning seeds; bold above): " +
              "; ".join(f"{m}: {c['row']} ({c['mean']:.2f})" for m, c in choice.items()) + "."]
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
