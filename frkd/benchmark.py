"""The synthetic method benchmark of ``python -m frkd.compare`` (docs/method.md, "Synthetic benchmark").

The benchmark is the synthetic dataset's defaults: data, models and schedule in
``frkd.config.DATASET_DEFAULTS["synthetic"]``, loss weights in
``frkd.losses.recipes.DATASET_DEFAULTS["synthetic"]`` (chosen by the tuning protocol below), so
``python -m frkd.train`` with no flags runs the benchmark's FRKD row. A ``Row`` is a recipe plus the
loss options and gradient calibration that differ from those defaults; ``run_config`` makes the
``RunConfig`` of one (row, seed) student run.

Tuning protocol (``python -m frkd.compare --tune``), the same knobs for every method, on the
``TUNING_SEEDS``: the distillation weights all scaled together by each factor of ``TUNING_SCALES``
from the recipe's own (CIRKD) weights; the recipe's weights with the gradient calibration at each
ratio of ``TUNING_RHOS`` (one ρ shared by the terms); and for a recipe of several terms the same ρ
per term (``--distill-grad-per-term``). The best mean is kept. The table's seeds (``TABLE_SEEDS``)
are never used for tuning.

Every table run evaluates at ``EVAL_POINTS`` fixed points (the last one its final evaluation): the
convergence columns. ``REGIMES`` are the robustness tables: a weaker teacher or noisy training labels,
with the reduced rows of ``ROBUSTNESS_METHODS`` and ``ROBUSTNESS_ABLATIONS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import RunConfig, build_config

TABLE_SEEDS = (0, 1, 2, 3, 4)
TUNING_SEEDS = (100, 101, 102)
TUNING_SCALES = (0.03, 0.1, 0.3, 1.0, 3.0)
# ρ of the calibration: below 0.3 the distillation starts under a third of the task gradient, and on v7 FRKD
# at ρ = 0.03 and 0.1 gave none's mIoU (docs/method.md, "Tuning protocol")
TUNING_RHOS = (0.3, 1.0, 3.0)
# tuning knobs (a row's ``knob``): weights × scale, calibration with one shared ρ, calibration with a ρ per term
KNOBS = {"scale": "weights × scale", "rho": "calibrated, one ρ shared by the terms",
         "rho-per-term": "calibrated, a ρ per term"}
EVAL_POINTS = 6  # evaluations per table run: every max_iterations // 6 iterations, and at the end
TABLE_METHODS = ("none", "kd", "cwd", "ifvd", "fitnet", "cirkd", "frkd")
# the weights a tuning scale multiplies: the student's distillation terms (not the discriminator's own loss)
UNSCALED_WEIGHTS = ("lambda_d", "lambda_gp")
# quick smoke run: the same benchmark with short schedules and half the val images; the teacher's training-crop
# error on the first QUICK_ERROR_IMAGES training images
QUICK = dict(max_iterations=20, teacher_iterations=30, val_length=50)
QUICK_ERROR_IMAGES = 100


@dataclass(frozen=True)
class Row:
    """One row of a table: ``method`` (a recipe) with ``options`` (loss options over the synthetic
    defaults), ``grad_ratio`` (None: the synthetic default of the method; 0: calibration off) and
    ``per_term`` (the ratio applies to each term, not shared by them)."""

    name: str
    method: str
    options: dict = field(default_factory=dict)
    grad_ratio: float | None = None
    per_term: bool = False

    @property
    def knob(self) -> str:
        """The tuning knob of the row (``KNOBS``)."""
        return "rho-per-term" if self.per_term else "rho" if self.grad_ratio else "scale"

    def describe(self) -> str:
        """The flags that make this row from ``--method <method>`` on synthetic."""
        from .config import flag

        words = [f"{flag(k)}" if v is True else f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}"
                 for k, v in sorted(self.options.items())]
        if self.grad_ratio is not None:
            words.append(f"--distill-grad-ratio {self.grad_ratio:g}")
        if self.per_term:
            words.append("--distill-grad-per-term")
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


# the robustness tables (docs/method.md "Robustness"): reduced rows, the main tuning's weights
ROBUSTNESS_METHODS = ("none", "kd", "cwd", "fitnet", "cirkd", "frkd")
ROBUSTNESS_ABLATIONS = ABLATIONS[:3]  # FRKD without its pseudo filter, fg/bg split, coordinate mask
WEAK_TEACHER_FRACTION = 0.25  # of the teacher's iterations (its whole poly schedule shortened)
NOISY_LABEL_FRACTION = 0.3  # of the training label maps (frkd.data.synthetic.noisy_label)
REGIMES = {"main": "the benchmark as it is",
           "weak-teacher": f"the same teacher trained {WEAK_TEACHER_FRACTION:g} × as long",
           "noisy-labels": f"{NOISY_LABEL_FRACTION:g} of the student's training label maps noisy (val clean)"}


def apply_regime(config: RunConfig, regime: str, teacher: bool = False) -> RunConfig:
    """``config`` under a regime, for the student runs or (``teacher``) for its teacher: the weak teacher's
    shortened schedule (its own poly schedule over fewer iterations); noisy labels for the students only."""
    if regime not in REGIMES:
        raise ValueError(f"regime: expected one of {', '.join(REGIMES)}, got {regime!r}")
    if regime == "weak-teacher":
        return config.replace(teacher_iterations=max(1, round(WEAK_TEACHER_FRACTION * config.optim.teacher_iterations)))
    if regime == "noisy-labels" and not teacher:
        return config.replace(label_noise=NOISY_LABEL_FRACTION)
    return config


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


def table_rows(methods=TABLE_METHODS, ablations: bool = True, regime: str = "main") -> list[Row]:
    """``none`` first, then the methods, then (with ``frkd``) its ablations; a robustness regime keeps
    the methods of ``ROBUSTNESS_METHODS`` and the ablations of ``ROBUSTNESS_ABLATIONS``."""
    if regime != "main":
        methods = [m for m in methods if m in ROBUSTNESS_METHODS]
    ordered = sorted(dict.fromkeys(methods), key=lambda m: m != "none")
    rows = [Row(m, m) for m in ordered]
    if ablations and "frkd" in ordered and regime != "main":
        rows += list(ROBUSTNESS_ABLATIONS)
    elif ablations and "frkd" in ordered:
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
    return Row(name, method, dict(other["options"]), grad_ratio=other["grad_ratio"],
               per_term=other.get("per_term", False))


def scaled_weights(method: str, scale: float) -> dict:
    """The recipe's own (dataset-independent) distillation weights times ``scale``."""
    from .losses.recipes import recipe_options

    return {k: v * scale for k, v in recipe_options(method).items()
            if k.startswith("lambda_") and k not in UNSCALED_WEIGHTS and v}


def tuning_rows(methods, scales=TUNING_SCALES, rhos=TUNING_RHOS) -> list[Row]:
    """``none``, then per method: the recipe's weights × each scale, uncalibrated (``<method>@x<scale>``);
    its weights calibrated at each gradient ratio r (``<method>-calibrated@rho<r>``: each of its n terms
    starts at r/n of the task gradient); and for a recipe of several terms, at r per term
    (``<method>-per-term@rho<r>``: each term starts at r times the task gradient)."""
    rows = [Row("none", "none")]
    for method in dict.fromkeys(m for m in methods if m != "none"):
        weights = scaled_weights(method, 1.0)
        rows += [Row(f"{method}@x{s:g}", method, scaled_weights(method, s), grad_ratio=0.0) for s in scales]
        rows += [Row(f"{method}-calibrated@rho{r:g}", method, weights, grad_ratio=r) for r in rhos]
        if len(weights) > 1:
            rows += [Row(f"{method}-per-term@rho{r:g}", method, weights, grad_ratio=r, per_term=True) for r in rhos]
    return rows


def eval_every(iterations: int) -> int:
    """The evaluation interval of a run of ``iterations``: ``EVAL_POINTS`` evaluations (at least), the last
    one at the end."""
    return max(1, iterations // EVAL_POINTS)


def run_config(row: Row, *, seed: int, out_dir: str, quick: bool = False, device: str = "auto",
               teacher_ckpt: str | None = None, threads: int | None = None, regime: str = "main",
               **fields) -> RunConfig:
    """The config of one (row, seed) student run on the synthetic benchmark under ``regime`` (resumable:
    ``--resume auto``); ``fields`` override any config field (tests shrink the benchmark with them)."""
    base = dict(dataset="synthetic", method=row.method, options=dict(row.options), seed=seed, device=device,
                threads=threads, out_dir=out_dir, resume="auto", teacher_ckpt=teacher_ckpt, workers=0)
    if row.grad_ratio is not None:  # the row's own calibration; None: the method's synthetic default
        base.update(grad_ratio=row.grad_ratio, grad_per_term=row.per_term)
    if quick:
        base.update(QUICK)
    config = apply_regime(build_config(**{**base, **fields}), regime)
    iterations = config.optim.max_iterations
    return config.replace(val_per_iters=eval_every(iterations), save_per_iters=max(1, iterations // 4),
                          log_per_iters=max(1, min(10, iterations)))


def teacher_config(*, out_dir: str, quick: bool = False, device: str = "auto", threads: int | None = None,
                   regime: str = "main", **fields) -> RunConfig:
    """The config whose teacher phase trains the shared teacher of ``regime`` into <out_dir>/teacher.pt."""
    config = apply_regime(run_config(Row("kd", "kd"), seed=0, out_dir=out_dir, quick=quick, device=device,
                                     threads=threads, **fields), regime, teacher=True)
    t = config.optim.teacher_iterations
    return config.replace(val_per_iters=eval_every(t), save_per_iters=max(1, t // 4))
