"""Distil any segmentation teacher into any student: ``Distiller`` (docs/distill.md).

The teacher and the student are plain ``nn.Module``s. Their penultimate feature and their logits are
read by module path with forward hooks (as mmrazor's recorders do), registered for one call and removed
after it. The teacher runs first, in eval mode and under ``no_grad``; then the student. The loss is
``frkd.losses.build_loss(recipe, **options)``, which sees

    student feature  B×C_s×h×w  and logits B×K×h×w,
    teacher feature  B×C_t×h×w  and logits B×K×h×w,  on one grid h×w.

Heterogeneous pairs:

* channels: the recipe's own adapters map C_s to C_t (FRKD's φ, the FitNet/CWD 1×1 convs);
* strides: every map is bilinearly resized to the teacher feature's grid (``align_to="teacher"``,
  the default: the teacher's knowledge is kept as it is), or to the student feature's
  (``align_to="student"``);
* tokens: a module that emits B×N×C becomes B×C×h×w, h = w = √N unless a grid (h, w), or a callable
  images -> (h, w), is given as ``student_grid`` / ``teacher_grid``.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .losses import build_loss
from .models.segmentation_model import SegOutput

ALIGN_TO = ("teacher", "student")
Grid = tuple[int, int] | Callable[[torch.Tensor], tuple[int, int]] | None


class Captured(NamedTuple):
    """``Distiller.capture``: what ``student(images)`` returned, and both sides' ``SegOutput(logits, aux,
    feat)`` on the common grid."""

    student: Any
    student_maps: SegOutput
    teacher_maps: SegOutput


class DistillOutput(NamedTuple):
    """What ``Distiller.__call__`` returns.

    student: what ``student(images)`` returned, untouched; terms: {term name: weighted scalar} as
    ``build_loss`` returns them; loss: their sum (float32); student_maps / teacher_maps: the
    ``SegOutput(logits, aux, feat)`` the loss saw, on the common grid (aux: the auxiliary logits of a model
    that returns them as ``.aux``, as frkd's own do; else None).
    """

    student: Any
    terms: dict[str, torch.Tensor]
    loss: torch.Tensor
    student_maps: SegOutput
    teacher_maps: SegOutput


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose names the paths refer to: the inner module of DDP / DataParallel wrappers and of
    ``torch.compile``'s OptimizedModule."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def find_module(model: nn.Module, path: str, role: str) -> nn.Module:
    """``model``'s submodule at ``path`` ("decode_head.conv_seg"); ValueError naming ``role`` and the
    nearest existing names otherwise."""
    modules = dict(unwrap(model).named_modules())
    if isinstance(path, str) and path and path in modules:
        return modules[path]
    names = [name for name in modules if name]
    near = difflib.get_close_matches(str(path), names, n=5, cutoff=0.5)
    hint = f"nearest: {', '.join(near)}" if near else f"it has e.g. {', '.join(names[:5])}"
    raise ValueError(f"{role}: no module {path!r} in {type(unwrap(model)).__name__} ({hint})")


def out_channels(module: nn.Module) -> int | None:
    """Channels of what ``module`` emits, from its last layer that declares them (Conv, Linear, norm
    layers); None when none does."""
    for layer in reversed(list(module.modules())):
        for attribute in ("out_channels", "out_features", "num_features", "num_channels"):
            value = getattr(layer, attribute, None)
            if isinstance(value, int):
                return value
        if isinstance(layer, nn.LayerNorm):
            return layer.normalized_shape[-1]
    return None


def model_device(model: nn.Module) -> torch.device | None:
    for tensor in (*unwrap(model).parameters(), *unwrap(model).buffers()):
        return tensor.device
    return None


def to_grid(x: torch.Tensor, grid: Grid, images: torch.Tensor, role: str) -> torch.Tensor:
    """A captured map as B×C×h×w: 4-D as it is, tokens B×N×C reshaped to ``grid`` (square by default)."""
    if x.dim() == 4:
        return x
    if x.dim() != 3:
        raise ValueError(f"{role}: expected a B×C×H×W map or B×N×C tokens, got shape {tuple(x.shape)}")
    B, N, C = x.shape
    if grid is None:
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"{role}: {N} tokens do not form a square grid; pass its grid (h, w)")
        grid = (side, side)
    elif callable(grid):
        grid = tuple(grid(images))
    h, w = grid
    if h * w != N:
        raise ValueError(f"{role}: grid {h}×{w} does not hold the {N} tokens of shape {tuple(x.shape)}")
    return x.transpose(1, 2).reshape(B, C, h, w)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of B×C×h×w to ``size`` (align_corners=False); x itself when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class _Recorder:
    """Forward hooks on {key: module} for the duration of a ``with`` block; ``outputs`` keeps the last
    output of each module (the first tensor of a tuple/list output)."""

    def __init__(self, modules: dict[str, nn.Module], roles: dict[str, str]):
        self.modules, self.roles = modules, roles
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []

    def __enter__(self) -> "_Recorder":
        for key, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(key)))
        return self

    def _hook(self, key: str):
        def record(module, inputs, output):
            value = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{self.roles[key]}: expected the module to return a tensor, got "
                                 f"{type(output).__name__}")
            self.outputs[key] = value
        return record

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def get(self, key: str) -> torch.Tensor:
        if key not in self.outputs:
            raise ValueError(f"{self.roles[key]}: the module did not run in the forward pass")
        return self.outputs[key]


class Distiller(nn.Module):
    """Distils ``teacher`` into ``student`` with the loss recipe ``recipe`` (frkd.losses.LOSSES).

    student_feature / teacher_feature / student_logits / teacher_logits: module paths (names of
    ``named_modules()``; DDP and torch.compile wrappers are looked through). student_channels /
    teacher_channels: the feature channels, by default read from the feature module's last Conv /
    Linear / norm layer. student_grid / teacher_grid: the grid of token outputs (see module doc);
    align_to: "teacher" or "student", the grid every map is resized to. ``options``: any
    ``build_loss`` option (``lambda_kd=1.0``, ...).

    The distiller's own parameters (``parameters()``) are the loss's adapters; a discriminator's are
    ``discriminator_parameters()``, trained on ``discriminator_loss(out)`` with their own optimizer.
    The teacher is put in eval mode without gradients and kept so; neither network is a submodule.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, recipe: str = "frkd", *, num_classes: int,
                 student_feature: str, teacher_feature: str, student_logits: str, teacher_logits: str,
                 ignore_index: int = 255, student_channels: int | None = None, teacher_channels: int | None = None,
                 student_grid: Grid = None, teacher_grid: Grid = None, align_to: str = "teacher", **options):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if align_to not in ALIGN_TO:
            raise ValueError(f"align_to: expected one of {', '.join(ALIGN_TO)}, got {align_to!r}")
        self.roles = {"student_feature": student_feature, "teacher_feature": teacher_feature,
                      "student_logits": student_logits, "teacher_logits": teacher_logits}
        found = {key: find_module(student if key.startswith("student") else teacher, path, key)
                 for key, path in self.roles.items()}
        for key in ("student_logits", "teacher_logits"):
            channels = out_channels(found[key])
            if channels is not None and channels != num_classes:
                raise ValueError(f"{key} {self.roles[key]!r}: expected logits of num_classes={num_classes} "
                                 f"channels, the module emits {channels}")
        s_device, t_device = model_device(student), model_device(teacher)
        if s_device is not None and t_device is not None and s_device != t_device:
            raise ValueError(f"teacher and student: expected one device, got student on {s_device} and teacher "
                             f"on {t_device}; move both first")
        channels = {}
        for key, given in (("student_feature", student_channels), ("teacher_feature", teacher_channels)):
            channels[key] = given if given is not None else out_channels(found[key])
            if channels[key] is None:
                role = key.split("_")[0]
                raise ValueError(f"{key} {self.roles[key]!r}: cannot tell its channels from the module; pass "
                                 f"{role}_channels=")
        # the networks are held outside the module tree: d.parameters() is the loss's own, d.train()
        # leaves them alone and state_dict() holds the loss's state only
        self.__dict__["student"], self.__dict__["teacher"] = student, teacher
        self._modules_of = {role: {"feat": found[f"{role}_feature"], "logits": found[f"{role}_logits"]}
                            for role in ("student", "teacher")}
        self._names_of = {role: {"feat": f"{role}_feature {self.roles[f'{role}_feature']!r}",
                                 "logits": f"{role}_logits {self.roles[f'{role}_logits']!r}"}
                          for role in ("student", "teacher")}
        self.grids = {"student": student_grid, "teacher": teacher_grid}
        self.align_to, self.num_classes = align_to, num_classes
        self.channels = (channels["student_feature"], channels["teacher_feature"])
        teacher.eval().requires_grad_(False)
        self.loss = build_loss(recipe, num_classes=num_classes, student_channels=self.channels[0],
                               teacher_channels=self.channels[1], ignore_index=ignore_index, **options)
        if isinstance(student, nn.parallel.DistributedDataParallel):
            self._average_gradients_over_ranks()

    def _average_gradients_over_ranks(self) -> None:
        """Under a DDP student the adapters are outside its reducer: average their gradients as they
        accumulate (every rank computes every term, so the all-reduces pair up)."""
        def average(p: torch.Tensor) -> None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()

        for p in self.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(average)

    def parameters(self, recurse: bool = True):
        """The loss's trainable adapters (φ, 1×1 convs, CIRKD's projection head), without a discriminator's
        parameters (``discriminator_parameters()``)."""
        own = {id(p) for p in self.loss.discriminator_parameters()}
        return (p for p in super().parameters(recurse) if id(p) not in own)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return self.loss.discriminator_parameters()

    def discriminator_loss(self, out: DistillOutput) -> torch.Tensor:
        """λ_d × the discriminator's loss on the detached student maps of ``out`` and the teacher's."""
        student = SegOutput(*(t.detach() if t is not None else None for t in out.student_maps))
        return self.loss.discriminator_loss(student, out.teacher_maps)

    def _maps(self, recorder: _Recorder, role: str, images: torch.Tensor) -> SegOutput:
        names = self._names_of[role]
        feat = to_grid(recorder.get("feat"), self.grids[role], images, names["feat"])
        logits = to_grid(recorder.get("logits"), self.grids[role], images, names["logits"])
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"{names['logits']}: expected num_classes={self.num_classes} channels, got shape "
                             f"{tuple(logits.shape)}")
        expected = self.channels[0 if role == "student" else 1]
        if feat.shape[1] != expected:
            raise ValueError(f"{names['feat']}: expected {expected} channels, got shape {tuple(feat.shape)}")
        return SegOutput(logits, None, feat)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> DistillOutput:
        """images B×3×H×W, labels B×H×W (int64, ``ignore_index`` ignored) -> ``DistillOutput``:
        ``distill(capture(images), labels)``."""
        return self.distill(self.capture(images), labels)

    def distill(self, captured: Captured, labels: torch.Tensor) -> DistillOutput:
        """The loss terms on captured maps. Split from ``capture`` for a caller that builds its own task loss
        on ``captured.student`` first (the trainer: the order of the autograd graph fixes the order in which
        gradients are summed, so this keeps its runs bit for bit)."""
        terms = self.loss(captured.student_maps, captured.teacher_maps, labels)
        loss = sum(t.float() for t in terms.values()) if terms else labels.new_zeros((), dtype=torch.float32)
        return DistillOutput(captured.student, terms, loss, captured.student_maps, captured.teacher_maps)

    def capture(self, images: torch.Tensor) -> Captured:
        """The frozen teacher's forward (no_grad), then the student's; their hooked maps on one grid."""
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad(), _Recorder(self._modules_of["teacher"], self._names_of["teacher"]) as rec:
            teacher_out = self.teacher(images)
            teacher_maps = self._maps(rec, "teacher", images)
        with _Recorder(self._modules_of["student"], self._names_of["student"]) as rec:
            student_out = self.student(images)
            student_maps = self._maps(rec, "student", images)
        size = (teacher_maps if self.align_to == "teacher" else student_maps).feat.shape[-2:]

        def on_grid(maps: SegOutput, out) -> SegOutput:
            # the auxiliary logits (DSD's PSD) of a model that returns them, as frkd's SegOutput models do
            aux = getattr(out, "aux", None)
            return SegOutput(resize(maps.logits, size), resize(aux, size) if isinstance(aux, torch.Tensor) else None,
                             resize(maps.feat, size))

        return Captured(student_out, on_grid(student_maps, student_out), on_grid(teacher_maps, teacher_out))

