"""Distillation losses for frkd (docs/method.md): composable terms and the recipes that name them.

``LOSSES`` (recipe names), ``build_loss``, ``resolved_loss_options`` (every option's effective
value, for records), ``add_loss_args``/``loss_options`` for the CLI, and ``feature_terms`` (the
unweighted FRKD feature terms, also used by ``bench``).
"""
from .cli import add_loss_args, loss_options
from .frkd import feature_terms
from .recipes import DATASET_DEFAULTS, RECIPES, resolved_loss_options
from .registry import LOSSES, build_loss, option_names

__all__ = ["LOSSES", "RECIPES", "DATASET_DEFAULTS", "build_loss", "option_names", "resolved_loss_options",
           "add_loss_args", "loss_options", "feature_terms"]
