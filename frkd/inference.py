"""Segmentation inference (whole image or sliding window, optional flip and scales) and evaluation."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .metrics import ConfusionMatrix


def _logits(model, images: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Model logits bilinearly upsampled to the input size: B×K×H×W float32."""
    out = model(images)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=align_corners)


def _slide_logits(model, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int],
                  align_corners: bool = False) -> torch.Tensor:
    """Averages the logits of crop-sized windows (stride apart) over each pixel; pads small images."""
    _, _, h, w = images.shape
    ch, cw = crop
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    ph, pw = padded.shape[-2:]
    rows = math.ceil(max(ph - ch, 0) / stride[0]) + 1
    cols = math.ceil(max(pw - cw, 0) / stride[1]) + 1
    total, count = None, padded.new_zeros(1, 1, ph, pw)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * stride[0], ph - ch), min(c * stride[1], pw - cw)
            window = _logits(model, padded[:, :, y0:y0 + ch, x0:x0 + cw], align_corners)
            if total is None:
                total = padded.new_zeros(padded.shape[0], window.shape[1], ph, pw, dtype=torch.float32)
            total[:, :, y0:y0 + ch, x0:x0 + cw] += window
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    return (total / count)[:, :, :h, :w]


@torch.no_grad()
def predict_probs(model, images: torch.Tensor, *, mode: str = "whole", crop: tuple[int, int] | None = None,
                  flip: bool = False, scales: tuple[float, ...] = (1.0,), align_corners: bool = False) -> torch.Tensor:
    """Class probabilities B×K×H×W, averaged over scales (and horizontal flip when ``flip``).

    images: B×3×H×W normalised. mode 'slide' needs ``crop`` (window H, W; stride = 2/3 of it).
    align_corners: of the bilinear upsampling of the logits to the image size (CIRKD: True).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and not crop:
        raise ValueError("mode 'slide' needs a crop size (window height, width)")
    h, w = images.shape[-2:]
    total, views = 0.0, 0
    for scale in scales:
        x = images if scale == 1.0 else F.interpolate(
            images, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            if mode == "slide":
                stride = (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
                logits = _slide_logits(model, xi, tuple(crop), stride, align_corners)
            else:
                logits = _logits(model, xi, align_corners)
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=align_corners)
            total = total + logits.softmax(1)
            views += 1
    return total / views


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device: torch.device, *, amp_dtype: torch.dtype | None = None,
             ignore_index: int = 255, **predict_kw) -> dict:
    """Confusion-matrix metrics of ``model`` on ``loader`` (this rank's shard), all-reduced over ranks.

    Returns {"miou", "pixel_acc", "per_class_iou"} (see ``frkd.metrics``). Restores train mode after.
    """
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device=device, ignore_index=ignore_index)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast:
                probs = predict_probs(model, images, **predict_kw)
            matrix.update(probs.argmax(1), labels)
    finally:
        model.train(was_training)
    matrix.all_reduce()
    return matrix.compute()
