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
    """Validation mIoU (%) over iterations: one panel per phase, each on its own iteration axis (the teacher's
    final mIoU dashed in the student's panel); values labelled inside the frame."""
    evals = [r for r in records if "miou" in r and r.get("miou") is not None]
    if not evals:
        return False
    phases = list(dict.fromkeys(r["phase"] for r in evals))
    fig, axes = plt.subplots(1, len(phases), figsize=(4.6 * len(phases), 3.8), squeeze=False, sharey=True)
    teacher = [r for r in evals if r["phase"] == "teacher"]
    for ax, phase in zip(axes.flat, phases):
        rows = [r for r in evals if r["phase"] == phase]
        x, y = [r["iteration"] for r in rows], [100 * r["miou"] for r in rows]
        ax.plot(x, y, marker="o", color="tab:blue" if phase == "teacher" else "tab:orange", label=phase)
        if phase != "teacher" and teacher:
            ax.axhline(100 * teacher[-1]["miou"], color="tab:blue", linestyle="--", linewidth=1, alpha=0.6,
                       label=f"final teacher {100 * teacher[-1]['miou']:.1f}")
        ax.annotate(f"{y[-1]:.1f}", (x[-1], y[-1]), textcoords="offset points", xytext=(-4, -12), ha="right",
                    fontsize=8)
        ax.set_xlim(0, max(x) * 1.05 if max(x) > 0 else 1)
        ax.set_title(f"{phase}: validation mIoU", fontsize=10)
        ax.set_xlabel(f"{phase} iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0, 0].set_ylabel("mIoU (%)")
    top = max(100 * r["miou"] for r in evals)
    axes[0, 0].set_ylim(0, min(100, top * 1.15 + 2))
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
