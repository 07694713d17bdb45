"""Command-line flags of the distillation losses (CIRKD's names where CIRKD has the option) and
their mapping to ``build_loss`` options. Defaults live in ``frkd.losses.recipes``.
"""
from __future__ import annotations

import argparse

from .recipes import DATASET_DEFAULTS, OPTIONS, RECIPES, check_method

__all__ = ["DATASET_DEFAULTS", "add_loss_args", "loss_options"]


def _recipe_defaults(dest: str) -> str:
    """'kd 1, ifvd 1, ...' for the recipes that set ``dest``, then the dataset overrides."""
    parts = [f"{name} {opts[dest]:g}" if isinstance(opts[dest], float) else f"{name} {opts[dest]}"
             for name, (opts, _) in RECIPES.items() if dest in opts]
    parts += [f"{name} on {dataset} {opts[dest]:g}" for dataset, recipes in DATASET_DEFAULTS.items()
              for name, opts in recipes.items() if dest in opts]
    return "; ".join(parts)


def _help(option) -> str:
    mirror = f"CIRKD {option.cirkd}" if option.cirkd else "no CIRKD flag"
    default = "per-image mean" if option.default is None else option.default
    by_recipe = _recipe_defaults(option.dest)
    recipes = f"; recipes: {by_recipe}" if by_recipe else ""
    return f"{option.help} [{mirror}; default {default}{recipes}]".replace("%", "%%")


def add_loss_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--method`` (a recipe) and one flag per loss option; a flag that is set adds its term to
    the recipe or overrides the recipe's value."""
    group = parser.add_argument_group("distillation loss (--method names a recipe; each flag adds or overrides)")
    rows = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in opts.items()) or 'CE only'}"
                     for name, (opts, _) in RECIPES.items())
    group.add_argument("--method", default="frkd", choices=tuple(RECIPES),
                       help=f"distillation recipe ({rows}); docs/method.md 'Recipes'".replace("%", "%%"))
    for option in OPTIONS:
        if option.kind is bool:
            group.add_argument(*option.flags, dest=option.dest, action="store_true", default=None, help=_help(option))
        else:
            group.add_argument(*option.flags, dest=option.dest, type=option.kind, default=None,
                               choices=option.choices, help=_help(option))
    return parser


def loss_options(args: argparse.Namespace) -> dict:
    """The ``build_loss`` options of ``args.method``: the flags that were set, over the per-dataset
    overrides of ``DATASET_DEFAULTS`` (when ``args.dataset`` is set).

    Raises ValueError naming the flag when a flag is set with ``--method none`` (no teacher).
    """
    dataset = getattr(args, "dataset", None)
    check_method(args.method)
    options = dict(DATASET_DEFAULTS.get(dataset, {}).get(args.method, {}))
    for option in OPTIONS:
        value = getattr(args, option.dest, None)
        if value is None:
            continue
        if args.method == "none":
            raise ValueError(f"{option.flags[0]} needs a teacher, but --method none trains without one; "
                             f"use a recipe such as --method kd (and --lambda-kd 0 to drop its KD)")
        options[option.dest] = value
    return options
