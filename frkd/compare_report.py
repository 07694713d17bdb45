"""Per-run results of ``python -m frkd.compare`` (JSON lines) -> markdown table and PNG bar chart.

A result record is one (row, seed) run: ``{"row", "method", "flags", "seed", "miou", "pixel_acc",
"s_per_iter", "peak_mem_mb", "peak_mem_kind", ...}`` with mIoU as a fraction in [0, 1].
"""
from __future__ import annotations

import json
import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PEAK_MEM_KINDS = {"cuda_max_allocated": "torch.cuda.max_memory_allocated",
                  "cpu_rss_delta": "peak RSS minus RSS before training (CPU)"}


def read_results(path: str) -> list[dict]:
    """The records of a results JSONL file; [] when it does not exist. A torn last line is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def append_result(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarise(records: list[dict], row_order: list[str]) -> list[dict]:
    """One summary per row (in ``row_order``, rows without results left out): mean/std mIoU in %, seeds,
    mean s/iter, max peak memory, gain over the ``none`` row."""
    by_row: dict[str, list[dict]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    rows = []
    for name in row_order:
        runs = sorted(by_row.get(name, []), key=lambda r: r["seed"])
        if not runs:
            continue
        mious = [100 * r["miou"] for r in runs]
        mems = [r["peak_mem_mb"] for r in runs if r.get("peak_mem_mb") is not None]
        rows.append({
            "row": name, "method": runs[0]["method"], "flags": runs[0]["flags"],
            "seeds": [r["seed"] for r in runs], "mious": mious,
            "mean": statistics.fmean(mious), "std": statistics.stdev(mious) if len(mious) > 1 else None,
            "s_per_iter": statistics.fmean(r["s_per_iter"] for r in runs),
            "peak_mem_mb": max(mems) if mems else None, "peak_mem_kind": runs[0].get("peak_mem_kind"),
        })
    baseline = next((r for r in rows if r["row"] == "none"), None)
    for r in rows:
        r["gain"] = r["mean"] - baseline["mean"] if baseline else None
    return rows


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown_table(rows: list[dict], teacher: dict, config: dict) -> str:
    """The method table: teacher line, then one line per row; numbers in mIoU %."""
    gap = None
    baseline = next((r for r in rows if r["row"] == "none"), None)
    if baseline and teacher.get("miou") is not None:
        gap = 100 * teacher["miou"] - baseline["mean"]
    kind = next((r["peak_mem_kind"] for r in rows if r.get("peak_mem_kind")), None)
    lines = [
        f"Teacher {teacher['name']}: mIoU {_fmt(100 * teacher['miou'] if teacher.get('miou') is not None else None, '.2f')}"
        f" on the fixed val set; student {config['student']}, {config['iterations']} iterations per run, "
        f"batch {config['batch_size']}, device {config['device']}. Teacher − none gap: {_fmt(gap, '.2f')} mIoU.",
        "",
        "| row | flags | mIoU % (mean ± std) | seeds | gain over none | gap closed | s / iter | peak mem (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        spread = f" ± {r['std']:.2f}" if r["std"] is not None else ""
        closed = 100 * r["gain"] / gap if gap and r["gain"] is not None and r["row"] != "none" else None
        gain = "—" if r["row"] == "none" else _fmt(r["gain"], "+.2f")
        closed = "—" if r["row"] == "none" else _fmt(closed, ".0f") + ("%" if closed is not None else "")
        lines.append(f"| {r['row']} | {' '.join(r['flags']) or '—'} | {r['mean']:.2f}{spread} | "
                     f"{','.join(map(str, r['seeds']))} | {gain} | {closed} "
                     f"| {r['s_per_iter']:.3f} | {_fmt(r['peak_mem_mb'], '.0f')} |")
    lines += ["", f"Peak memory: {PEAK_MEM_KINDS.get(kind, 'n/a')}. Per-seed mIoU: " +
              "; ".join(f"{r['row']} " + ", ".join(f"{m:.2f}" for m in r["mious"]) for r in rows) + "."]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], teacher: dict, path: str) -> None:
    """Mean mIoU per row with ±std error bars, dashed lines at the teacher and the ``none`` student."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(rows) + 2), 3.8))
    x = range(len(rows))
    colours = ["0.6" if r["row"] == "none" else ("C3" if r["method"] == "frkd" else "C0") for r in rows]
    ax.bar(x, [r["mean"] for r in rows], yerr=[r["std"] or 0 for r in rows], color=colours, capsize=3)
    if teacher.get("miou") is not None:
        ax.axhline(100 * teacher["miou"], color="k", ls="--", lw=1, label=f"teacher {100 * teacher['miou']:.1f}")
    baseline = next((r for r in rows if r["row"] == "none"), None)
    if baseline:
        ax.axhline(baseline["mean"], color="0.4", ls=":", lw=1, label=f"none {baseline['mean']:.1f}")
    low = min([r["mean"] - (r["std"] or 0) for r in rows])
    ax.set_ylim(max(0.0, low - 5), None)
    ax.set_xticks(list(x), [r["row"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
