"""Recipe name -> composite loss: ``build_loss`` and the module that sums any set of terms
(docs/INTERFACES.md, docs/method.md "Recipes")."""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from .adversarial import Adversarial
from .base import DistillationLoss
from .baselines import IDD, IFV, FeatureCWD, FitNet, LogitCWD, PixelKD
from .channel import GCN, ChannelContrast
from .cross_image import MemoryContrast, MiniBatchPixel
from .frkd import FRKDLoss
from .recipes import OPTION_DEFAULTS, OPTIONS, RECIPES, resolved_loss_options
from .structural import AT, DSD, SKD

LOSSES = RECIPES  # recipe names (the values are the recipes' options and CIRKD scripts)
COMMON_ARGS = ("num_classes", "student_channels", "teacher_channels", "ignore_index")
FRKD_WEIGHTS = ("lambda_feat", "lambda_intra", "lambda_inter")


def _fg_kd(o: dict) -> bool:
    return o["kd_pixels"] == "fg" and o["lambda_kd"] != 0


# (component name, class, is it on for these resolved options?); order = order of the terms
COMPONENTS = (
    ("kd", PixelKD, lambda o: o["lambda_kd"] != 0 and o["kd_pixels"] == "all"),
    ("frkd", FRKDLoss, lambda o: any(o[k] != 0 for k in FRKD_WEIGHTS) or _fg_kd(o)),
    ("cwd_logit", LogitCWD, lambda o: o["lambda_cwd_logit"] != 0),
    ("cwd_fea", FeatureCWD, lambda o: o["lambda_cwd_fea"] != 0),
    ("fitnet", FitNet, lambda o: o["lambda_fitnet"] != 0),
    ("ifv", IFV, lambda o: o["lambda_ifv"] != 0),
    ("idd", IDD, lambda o: o["lambda_idd"] != 0),
    ("adversarial", Adversarial, lambda o: o["lambda_adv"] != 0 or o["lambda_d"] != 0),
    ("minibatch_pixel", MiniBatchPixel, lambda o: o["lambda_minibatch_pixel"] != 0),
    ("memory", MemoryContrast, lambda o: o["lambda_memory_pixel"] != 0 or o["lambda_memory_region"] != 0),
    ("skd", SKD, lambda o: o["lambda_skd"] != 0),
    ("at", AT, lambda o: o["lambda_at"] != 0),
    ("dsd", DSD, lambda o: o["lambda_psd"] != 0 and o["lambda_csd"] != 0),
    ("channel", ChannelContrast, lambda o: any(o[k] != 0 for k in CHANNEL_WEIGHTS)),
)
CHANNEL_WEIGHTS = ("lambda_minibatch_channel", "lambda_memory_channel", "lambda_channel_kd")


def uses_gcn(o: dict) -> bool:
    """train_cirkdv2.py's rule: the student feature goes through the GCN whenever --lambda-fitnet is set."""
    return o["fitnet_gcn"] and o["lambda_fitnet"] != 0


def option_names(name: str | None = None) -> tuple[str, ...]:
    """The options ``build_loss`` accepts, the same for every recipe ``name`` (terms compose)."""
    return tuple(OPTION_DEFAULTS)


def _component_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    wanted = {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in COMMON_ARGS}
    chosen = {k: v for k, v in options.items() if k in wanted}
    if cls is FRKDLoss:
        chosen["lambda_kd"] = options["lambda_kd"] if options["kd_pixels"] == "fg" else 0.0
    return chosen


def check_options(options: dict[str, Any]) -> None:
    """Weights ≥ 0 and choices valid, or ValueError naming the flag."""
    for option in OPTIONS:
        value = options[option.dest]
        if option.dest.startswith("lambda_") and value < 0:
            raise ValueError(f"{option.flags[0]} must be >= 0, got {value}")
        if option.choices and value not in option.choices:
            raise ValueError(f"{option.flags[0]} must be one of {', '.join(option.choices)}, got {value!r}")
    if options["tau"] is not None and not 0 <= options["tau"] <= 1:
        raise ValueError(f"--tau must lie in [0, 1], got {options['tau']}")
    if (options["lambda_psd"] == 0) != (options["lambda_csd"] == 0):
        raise ValueError(f"--lambda-psd and --lambda-csd: DSD needs both > 0 (train_kd.py computes them only "
                         f"together), got {options['lambda_psd']} and {options['lambda_csd']}")


class CompositeLoss(DistillationLoss):
    """The sum of any set of distillation terms; ``forward`` returns each term ×λ by name.

    ``components``: ModuleDict of the terms that are on (see ``COMPONENTS``). The adversarial
    component's discriminator is the only part outside the student optimizer. ``student_gcn``
    (only when ``uses_gcn``): CIRKDv2's GCN, applied to the student feature before every term.
    """

    def __init__(self, *, options: dict[str, Any], **common):
        super().__init__(**common)
        self.options = dict(options)
        self.components = nn.ModuleDict({
            name: cls(**common, **_component_options(cls, options)) for name, cls, on in COMPONENTS if on(options)})
        if uses_gcn(options):
            self.student_gcn = GCN(common["student_channels"])

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        if hasattr(self, "student_gcn"):
            student = student._replace(feat=self.student_gcn(student.feat))
        out: dict[str, torch.Tensor] = {}
        for component in self.components.values():
            out.update(component(student, teacher, labels))
        return out

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [p for c in self.components.values() for p in c.discriminator_parameters()]

    def discriminator_loss(self, student, teacher) -> torch.Tensor:
        if "adversarial" not in self.components:
            return super().discriminator_loss(student, teacher)
        return self.components["adversarial"].discriminator_loss(student, teacher)


def build_loss(name: str, *, num_classes: int, student_channels: int, teacher_channels: int,
               ignore_index: int = 255, **options) -> CompositeLoss:
    """Recipe ``name`` with ``options`` (see ``frkd.losses.recipes.OPTIONS``) overriding or adding
    terms, as an ``nn.Module`` (its parameters: φ/conv heads, and the discriminator's, which
    ``discriminator_parameters()`` lists for their own optimizer)."""
    resolved = resolved_loss_options(name, options)
    check_options(resolved)
    return CompositeLoss(options=resolved, num_classes=num_classes, student_channels=student_channels,
                         teacher_channels=teacher_channels, ignore_index=ignore_index)
