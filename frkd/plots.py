"""PNG plots of a run's ``metrics.jsonl``: loss terms per phase and validation mIoU."""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .run_log import read_records  # noqa: E402

NOT_LOSS_KEYS = {"phase", "iteration", "lr", "it_per_s", "miou", "pixel_acc", "per_class_iou"}


def plot_losses(records: list[dict], phase: str, path: str) -> bool:
    """One small panel per loss term (and the LR) over iterations; returns False when nothing to plot."""
    rows = [r for r in records if r.get("phase") == phase and "lr" in r]
    if not rows:
        return False
    terms = [k for k in rows[-1] if k not in NOT_LOSS_KEYS]
    terms = ["loss"] + [t for t in terms if t != "loss"] + ["lr"]
    cols = min(3, len(terms))
    nrows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.9 * nrows), squeeze=False)
    iterations = [r["iteration"] for r in rows]
    for ax, term in zip(axes.flat, terms):
        values = [r.get(term) for r in rows]
        values = [math.nan if v is None else v for v in values]
        ax.plot(iterations, values, marker="." if len(rows) < 30 else None, color="tab:red" if term == "lr" else None)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    fig.suptitle(f"{phase}: loss terms as summed into the loss (λ applied; mean per log window)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_miou(records: list[dict], path: str) -> bool:
    """Validation mIoU (%) over iterations, one line per phase."""
    evals = [r for r in records if "miou" in r and r.get("miou") is not None]
    if not evals:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for phase in dict.fromkeys(r["phase"] for r in evals):
        rows = [r for r in evals if r["phase"] == phase]
        ax.plot([r["iteration"] for r in rows], [100 * r["miou"] for r in rows], marker="o", label=phase)
        ax.annotate(f"{100 * rows[-1]['miou']:.1f}", (rows[-1]["iteration"], 100 * rows[-1]["miou"]),
                    textcoords="offset points", xytext=(-10, 6), fontsize=8)
    teacher = [r for r in evals if r["phase"] == "teacher"]
    if teacher and any(r["phase"] == "student" for r in evals):
        ax.axhline(100 * teacher[-1]["miou"], color="tab:blue", linestyle="--", linewidth=1, alpha=0.6,
                   label="final teacher")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("validation mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_run(out_dir: str) -> list[str]:
    """Writes losses_<phase>.png and miou.png next to metrics.jsonl; returns the files written."""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        return []
    records = read_records(metrics)
    written = []
    for phase in dict.fromkeys(r.get("phase") for r in records):
        path = os.path.join(out_dir, f"losses_{phase}.png")
        if plot_losses(records, phase, path):
            written.append(path)
    path = os.path.join(out_dir, "miou.png")
    if plot_miou(records, path):
        written.append(path)
    return written
