"""Distillation losses for frkd (DESIGN §3, docs/method.md).

``LOSSES`` (name -> class), ``build_loss``, ``add_loss_args``/``loss_options`` for the CLI, and
``feature_terms`` (the unweighted FRKD feature terms, also used by ``bench``).
"""
from .cli import add_loss_args, loss_options, resolved_loss_options
from .frkd import feature_terms
from .registry import LOSSES, build_loss, option_names

__all__ = ["LOSSES", "build_loss", "option_names", "add_loss_args", "loss_options", "resolved_loss_options",
           "feature_terms"]
