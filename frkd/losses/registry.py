"""Name -> loss class registry and ``build_loss`` (docs/INTERFACES.md)."""
from __future__ import annotations

import inspect

import torch.nn as nn

from .baselines import IDD, IFVD, ChannelWiseKD, FitNet, NoDistillation, PixelKD
from .frkd import FRKDLoss

LOSSES = {
    "none": NoDistillation,
    "kd": PixelKD,
    "cwd": ChannelWiseKD,
    "ifvd": IFVD,
    "idd": IDD,
    "fitnet": FitNet,
    "frkd": FRKDLoss,
}
COMMON_ARGS = ("num_classes", "student_channels", "teacher_channels", "ignore_index")


def option_names(name: str) -> tuple[str, ...]:
    """The options (keyword arguments beyond the common ones) that loss ``name`` accepts."""
    params = inspect.signature(loss_class(name).__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in COMMON_ARGS)


def loss_class(name: str) -> type[nn.Module]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


def build_loss(name: str, *, num_classes: int, student_channels: int, teacher_channels: int,
               ignore_index: int = 255, **options) -> nn.Module:
    """The loss ``name`` as an ``nn.Module`` (its parameters, e.g. φ, are the trainable part).

    ``options`` are that loss's own keyword arguments (see ``option_names``); unset ones take the
    method's defaults (DESIGN §3 for frkd, the CIRKD scripts for the baselines).
    """
    cls = loss_class(name)
    accepted = option_names(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"build_loss({name!r}): unknown option(s) {', '.join(unknown)}; "
                         f"{name!r} accepts {', '.join(accepted) or 'no options'}")
    return cls(num_classes=num_classes, student_channels=student_channels, teacher_channels=teacher_channels,
               ignore_index=ignore_index, **options)
