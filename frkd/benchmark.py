"""The synthetic method benchmark of ``python -m frkd.compare`` (docs/method.md, "Synthetic benchmark").

The benchmark is the synthetic dataset's defaults: data, models and schedule in
``frkd.config.DATASET_DEFAULTS["synthetic"]``, loss weights in
``frkd.losses.recipes.DATASET_DEFAULTS["synthetic"]`` (chosen by the tuning protocol below), so
``python -m frkd.train`` with no flags runs the benchmark's FRKD row. A ``Row`` is a recipe plus the
loss options and gradient calibration that differ from those defaults; ``run_config`` makes the
``RunConfig`` of one (row, seed) student run.

Tuning protocol (``python -m frkd.compare --tune``): every method's distillation weights, all
scaled together by each factor of ``TUNING_SCALES`` from the recipe's own (CIRKD) weights, on the
``TUNING_SEEDS``; FRKD's calibrated variant scales its gradient ratio instead. The best mean is kept.
The table's seeds (``TABLE_SEEDS``) are never used for tuning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import RunConfig, build_config

TABLE_SEEDS = (0, 1, 2, 3, 4)
TUNING_SEEDS = (100, 101, 102)
TUNING_SCALES = (0.03, 0.1, 0.3, 1.0, 3.0)
TABLE_METHODS = ("none", "kd", "cwd", "ifvd", "fitnet", "cirkd", "frkd")
# the weights a tuning scale multiplies: the student's distillation terms (not the discriminator's own loss)
UNSCALED_WEIGHTS = ("lambda_d", "lambda_gp")
# quick smoke run: the same benchmark with short schedules
QUICK = dict(max_iterations=20, teacher_iterations=30)


@dataclass(frozen=True)
class Row:
    """One row of a table: ``method`` (a recipe) with ``options`` (loss options over the synthetic
    defaults) and ``grad_ratio`` (None: the synthetic default of the method; 0: calibration off)."""

    name: str
    method: str
    options: dict = field(default_factory=dict)
    grad_ratio: float | None = None

    def describe(self) -> str:
        """The flags that make this row from ``--method <method>`` on synthetic."""
        from .config import flag

        words = [f"{flag(k)}" if v is True else f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}"
                 for k, v in sorted(self.options.items())]
        if self.grad_ratio is not None:
            words.append(f"--distill-grad-ratio {self.grad_ratio:g}")
        return " ".join(words) or "—"


# FRKD ablations: each switches one part off (docs/method.md "Ablation switches")
ABLATIONS = (
    Row("frkd-no-pseudo-filter", "frkd", {"no_pseudo_filter": True}),
    Row("frkd-no-fgbg", "frkd", {"no_fgbg": True}),
    Row("frkd-no-coord-mask", "frkd", {"no_coord_mask": True}),
    Row("frkd-no-intra", "frkd", {"lambda_intra": 0.0}),
    Row("frkd-no-inter", "frkd", {"lambda_inter": 0.0}),
    Row("frkd-no-kd", "frkd", {"lambda_kd": 0.0}),
)


def options_from_flags(method: str, flags: list[str] | str) -> dict:
    """The loss options that loss flags (``["--lambda-intra", "0.5"]`` or one string) set for ``method`` on
    synthetic; a flag that is not a loss flag raises ValueError naming it."""
    import argparse
    import shlex

    from .losses import add_loss_args, loss_options

    parser = argparse.ArgumentParser(prog="loss flags", add_help=False, exit_on_error=False)
    add_loss_args(parser)
    words = shlex.split(flags) if isinstance(flags, str) else list(flags)
    try:
        args, unknown = parser.parse_known_args(["--method", method, *words])
    except argparse.ArgumentError as error:
        raise ValueError(str(error)) from None
    if unknown:
        raise ValueError(f"not loss flags: {' '.join(unknown)}")
    return loss_options(args)


def table_rows(methods=TABLE_METHODS, ablations: bool = True) -> list[Row]:
    """``none`` first, then the methods, then (with ``frkd``) its ablations."""
    ordered = sorted(dict.fromkeys(methods), key=lambda m: m != "none")
    rows = [Row(m, m) for m in ordered]
    if ablations and "frkd" in ordered:
        rows += list(ABLATIONS)
        switched = other_calibration_row("frkd")
        if switched:
            rows.append(switched)
    return rows


def other_calibration_row(method: str) -> Row | None:
    """The tuned ``method`` with calibration the other way round from its default (``TUNED_OTHER_CALIBRATION``):
    ``<method>-no-calibration`` when the default calibrates, else ``<method>-calibrated``; None if not tuned."""
    from .losses.recipes import TUNED_OTHER_CALIBRATION

    other = TUNED_OTHER_CALIBRATION.get("synthetic", {}).get(method)
    if other is None:
        return None
    name = f"{method}-calibrated" if other["grad_ratio"] else f"{method}-no-calibration"
    return Row(name, method, dict(other["options"]), grad_ratio=other["grad_ratio"])


def scaled_weights(method: str, scale: float) -> dict:
    """The recipe's own (dataset-independent) distillation weights times ``scale``."""
    from .losses.recipes import recipe_options

    return {k: v * scale for k, v in recipe_options(method).items()
            if k.startswith("lambda_") and k not in UNSCALED_WEIGHTS and v}


def tuning_rows(methods, scales=TUNING_SCALES, calibrated=("frkd",)) -> list[Row]:
    """``none``, then per method and scale: the recipe's weights × scale (name ``<method>@x<scale>``); a
    method in ``calibrated`` also gets ``<method>-calibrated@rho<r>`` rows: recipe weights with the gradient
    ratio r = scale (each of its n terms starts at r/n of the task gradient)."""
    rows = [Row("none", "none")]
    for method in dict.fromkeys(m for m in methods if m != "none"):
        rows += [Row(f"{method}@x{s:g}", method, scaled_weights(method, s), grad_ratio=0.0) for s in scales]
        if method in calibrated:
            rows += [Row(f"{method}-calibrated@rho{s:g}", method, scaled_weights(method, 1.0), grad_ratio=s)
                     for s in scales]
    return rows


def run_config(row: Row, *, seed: int, out_dir: str, quick: bool = False, device: str = "auto",
               teacher_ckpt: str | None = None, threads: int | None = None, **fields) -> RunConfig:
    """The config of one (row, seed) student run on the synthetic benchmark (resumable: ``--resume auto``);
    ``fields`` override any config field (tests shrink the benchmark with them)."""
    base = dict(dataset="synthetic", method=row.method, options=dict(row.options), seed=seed, device=device,
                threads=threads, out_dir=out_dir, resume="auto", teacher_ckpt=teacher_ckpt, workers=0)
    if row.grad_ratio is not None:
        base["grad_ratio"] = row.grad_ratio
    if quick:
        base.update(QUICK)
    config = build_config(**{**base, **fields})
    iterations = config.optim.max_iterations
    return config.replace(val_per_iters=iterations, save_per_iters=max(1, iterations // 4),
                          log_per_iters=max(1, min(10, iterations)))


def teacher_config(*, out_dir: str, quick: bool = False, device: str = "auto", threads: int | None = None,
                   **fields) -> RunConfig:
    """The config whose teacher phase trains the benchmark's shared teacher into <out_dir>/teacher.pt."""
    config = run_config(Row("kd", "kd"), seed=0, out_dir=out_dir, quick=quick, device=device, threads=threads,
                        **fields)
    t = config.optim.teacher_iterations
    return config.replace(val_per_iters=t, save_per_iters=max(1, t // 4))
