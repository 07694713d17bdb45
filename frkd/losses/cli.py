"""Command-line flags of the distillation losses (CIRKD-compatible names) and their mapping to
``build_loss`` options.
"""
from __future__ import annotations

import argparse

from .registry import LOSSES, loss_class, option_names

# (flags, dest, type, help); a flag left unset (None) takes the method's default, shown as "None: ...".
VALUE_FLAGS = (
    (("--lambda-kd",), "lambda_kd", float, "pixel-wise KD weight (%(default)s: kd 1, frkd 1)"),
    (("--lambda-cwd",), "lambda_cwd", float, "channel-wise distillation weight (%(default)s: cwd 3, frkd 0)"),
    (("--lambda-feat",), "lambda_feat", float, "FRKD masked feature MSE weight (%(default)s: 1)"),
    (("--lambda-intra", "--lambda-ifv"), "lambda_intra", float,
     "intra-class (IFV) weight (%(default)s: ifvd 20, frkd 20; frkd on synthetic 0.5)"),
    (("--lambda-inter", "--lambda-idd"), "lambda_inter", float,
     "inter-class (IDD) weight (%(default)s: idd 20, frkd 20; frkd on synthetic 0.5)"),
    (("--lambda-fitnet",), "lambda_fitnet", float, "FitNet feature MSE weight (%(default)s: 1)"),
    (("--kd-temperature",), "kd_temperature", float, "pixel KD temperature (%(default)s: 1)"),
    (("--cwd-temperature",), "cwd_temperature", float, "CWD temperature (%(default)s: 4)"),
    (("--frkd-alpha",), "frkd_alpha", float, "FRKD foreground feature weight α (%(default)s: 1)"),
    (("--frkd-beta",), "frkd_beta", float, "FRKD background feature weight β (%(default)s: 0.25)"),
    (("--frkd-gamma",), "frkd_gamma", float, "FRKD coordinate-mask feature weight γ (%(default)s: 1)"),
    (("--frkd-delta",), "frkd_delta", float, "FRKD coordinate-mask margin δ (%(default)s: 0)"),
    (("--tau",), "tau", float, "fixed teacher-entropy threshold in [0, 1] (%(default)s: per-image mean)"),
)
SWITCH_FLAGS = (
    ("--ifv-cirkd-mean", "ifv_cirkd_mean", "FRKD: divide the intra term by B·H·W as CIRKD, not by #valid"),
    ("--no-pseudo-filter", "no_pseudo_filter", "FRKD ablation: keep pixels where the teacher is wrong"),
    ("--no-fgbg", "no_fgbg", "FRKD ablation: one uniform feature weight instead of the fg/bg split"),
    ("--no-coord-mask", "no_coord_mask", "FRKD ablation: coordinate term on every fg pixel (no margin test)"),
)


def add_loss_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--method`` and the loss flags (CIRKD names; unset flags take the method's defaults)."""
    group = parser.add_argument_group("distillation loss")
    group.add_argument("--method", default="frkd", choices=tuple(LOSSES), help="distillation method")
    for flags, dest, kind, text in VALUE_FLAGS:
        group.add_argument(*flags, dest=dest, type=kind, default=None, help=text)
    for flag, dest, text in SWITCH_FLAGS:
        group.add_argument(flag, dest=dest, action="store_true", help=text)
    return parser


# Per-dataset defaults that differ from the methods' own (docs/method.md "Synthetic benchmark"):
# on the synthetic benchmark's width-8 student, FRKD's relation weights were tuned on seeds 100/101.
DATASET_DEFAULTS = {"synthetic": {"frkd": {"lambda_intra": 0.5, "lambda_inter": 0.5}}}


def loss_options(args: argparse.Namespace) -> dict:
    """The ``build_loss`` options for ``args.method`` from the flags that were set, over the
    per-dataset defaults of ``DATASET_DEFAULTS`` (when ``args.dataset`` is set).

    Raises ValueError naming the flag when a set flag does not apply to the method.
    """
    accepted = option_names(args.method)
    flags = [(f[0][0], f[1]) for f in VALUE_FLAGS] + [(f[0], f[1]) for f in SWITCH_FLAGS]
    options = dict(DATASET_DEFAULTS.get(getattr(args, "dataset", None), {}).get(args.method, {}))
    for flag, dest in flags:
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        if dest not in accepted:
            usable = [f for f, d in flags if d in accepted]
            raise ValueError(f"{flag} does not apply to --method {args.method}; "
                             f"it takes {', '.join(usable) or 'no loss flags'}")
        options[dest] = value
    return options


def resolved_loss_options(method: str, options: dict, dataset: str | None = None) -> dict:
    """Every option of ``method`` with its effective value: the class's keyword defaults, then the
    per-dataset defaults of ``DATASET_DEFAULTS``, then ``options`` (the ones set by the user)."""
    import inspect

    params = inspect.signature(loss_class(method).__init__).parameters
    resolved = {name: params[name].default for name in option_names(method)}
    resolved.update(DATASET_DEFAULTS.get(dataset, {}).get(method, {}))
    resolved.update(options)
    return resolved
