"""Segmentation metrics from a K×K confusion matrix kept on the model's device.

mIoU is the mean IoU over the classes that occur in the ground truth *or* in the prediction
(union > 0); a class absent from both has IoU NaN (``None`` in JSON) and is left out of the
mean, so a validation set without some class is not penalised for it. With no valid pixel at
all, mIoU and pixel accuracy are NaN.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Accumulates ``matrix[true, pred]`` counts (int64, K×K) over valid pixels.

    A pixel is valid when ``0 <= target < K`` and ``target != ignore_index``.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: pred and target are integer tensors of the same shape (e.g. B×H×W)."""
        if pred.shape != target.shape:
            raise ValueError(f"ConfusionMatrix.update: pred shape {tuple(pred.shape)} != "
                             f"target shape {tuple(target.shape)}")
        k = self.num_classes
        pred = pred.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        target = target.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        valid = (target >= 0) & (target < k) & (target != self.ignore_index) & (pred >= 0) & (pred < k)
        index = target[valid] * k + pred[valid]
        self.matrix += torch.bincount(index, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> None:
        """Sums the matrix over the ranks of the default process group (no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def compute(self) -> dict:
        """Returns {"miou", "pixel_acc", "per_class_iou": list of K floats (NaN: class absent)}."""
        m = self.matrix.double().cpu()
        true_positive = m.diag()
        union = m.sum(0) + m.sum(1) - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, math.nan))
        present = union > 0
        miou = iou[present].mean().item() if present.any() else math.nan
        total = m.sum().item()
        pixel_acc = true_positive.sum().item() / total if total > 0 else math.nan
        return {"miou": miou, "pixel_acc": pixel_acc, "per_class_iou": iou.tolist()}


def format_metrics(result: dict, class_names: list[str] | None = None) -> str:
    """Human-readable mIoU, pixel accuracy and one line per class."""
    lines = [f"mIoU {100 * result['miou']:.2f}  pixel accuracy {100 * result['pixel_acc']:.2f}"]
    for k, iou in enumerate(result["per_class_iou"]):
        name = class_names[k] if class_names and k < len(class_names) else str(k)
        lines.append(f"  {name:>16s}: " + ("  absent" if math.isnan(iou) else f"{100 * iou:6.2f}"))
    return "\n".join(lines)
