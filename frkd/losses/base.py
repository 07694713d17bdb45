"""Shared pieces of every distillation loss: the module base class and label resizing.

A loss is an ``nn.Module`` whose ``forward(student, teacher, labels)`` takes two ``SegOutput``
(logits B×K×H×W, aux, feat B×C×H×W at output stride 8) and full-resolution labels B×Hin×Win
int64, and returns a dict of named terms, each already multiplied by its lambda.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of labels B×Hin×Win to B×H×W int64 (src = floor(dst·in/out), as F.interpolate)."""
    if labels.dim() != 3:
        raise ValueError(f"labels must be a B×H×W tensor, got shape {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def valid_pixels(y: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """B×H×W bool: 0 <= y < K and y != ignore_index (the ops' rule)."""
    return (y >= 0) & (y < num_classes) & (y != ignore_index)


def check_same_grid(**tensors: torch.Tensor) -> tuple[int, int]:
    """All tensors (B×·×H×W) share B, H and W; returns (H, W) or raises naming them."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    keys = {(s[0],) + s[-2:] if len(s) == 4 else None for s in shapes.values()}
    if len(keys) != 1 or None in keys:
        listing = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected B×C×H×W tensors with one batch size and one H×W, got {listing}")
    return next(iter(shapes.values()))[-2:]


class DistillationLoss(nn.Module):
    """Base class: keeps ``num_classes`` and ``ignore_index``; subclasses add their options."""

    def __init__(self, *, num_classes: int, student_channels: int, teacher_channels: int, ignore_index: int = 255):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("student_channels", student_channels),
                            ("teacher_channels", teacher_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters that the discriminator optimizer steps (none unless the loss is adversarial);
        the student optimizer must exclude them."""
        return []

    def discriminator_loss(self, student, teacher) -> torch.Tensor:
        """λ_d × the discriminator's loss on (student, teacher) outputs; only adversarial losses have one."""
        raise RuntimeError(f"{type(self).__name__} has no discriminator (discriminator_parameters() is empty)")

    def labels_at(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """labels B×Hin×Win -> B×H×W int64 at the H×W of ``like`` (B×·×H×W)."""
        if labels.dim() != 3 or labels.shape[0] != like.shape[0]:
            raise ValueError(f"{type(self).__name__}: labels must be B×H×W with B={like.shape[0]}, "
                             f"got shape {tuple(labels.shape)}")
        return resize_labels(labels, like.shape[-2:])

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters of an adversarial discriminator, trained by the engine's own optimizer after each
        student step with ``discriminator_loss(student, teacher)``; none by default."""
        return []
