"""Helpers shared by the triton kernels: dtype checks, stride views, block sizes and grid sizing."""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

# Read once: triton.jit picks the interpreter when the kernels are defined, i.e. at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_dtypes(op: str, **tensors: torch.Tensor) -> None:
    """Raise a clear error for a floating input the kernels do not take (float64)."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"frkd.{op}: the triton backend takes float32, float16 or bfloat16 {name}, got {t.dtype}; "
                f"use the 'cpu' or 'torch' backend for float64"
            )


def _folds(t: torch.Tensor) -> bool:
    """Whether H and W of t (last two dims) fold into one pixel stride."""
    H, W = t.shape[-2:]
    stride_h, stride_w = t.stride()[-2:]
    return H == 1 or W == 1 or stride_h == W * stride_w


def _strides(t: torch.Tensor) -> tuple:
    stride_p = t.stride(-2) if t.shape[-1] == 1 else t.stride(-1)
    return (*t.stride()[:-2], stride_p)


def pixel_view(t: torch.Tensor) -> tuple:
    """(t, stride of B, [stride of C,] stride of pixel p = h·W + w) for a B×C×H×W or B×H×W tensor.

    Contiguous and channels_last tensors (and any slice whose H and W fold into one stride) pass
    without a copy; other layouts are copied to contiguous.
    """
    if not _folds(t):
        t = t.contiguous()
    return (t, *_strides(t))


def block(n: int, lo: int, hi: int) -> int:
    """Power-of-two block covering n, clamped to [lo, hi]."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """Programs that fill the device: a few per SM on a GPU, few under the interpreter."""
    if device.type != "cuda":
        return 1
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def on_device(device: torch.device):
    """Context that makes ``device`` current so kernels launch on the tensors' GPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def output_view(out: torch.Tensor) -> tuple:
    """(buffer, strides as ``pixel_view``) for kernel output ``out``: ``out`` itself when its H and W
    fold into one stride, else a contiguous buffer to ``copy_`` into ``out`` after the launch."""
    buffer = out if _folds(out) else torch.empty(out.shape, dtype=out.dtype, device=out.device)
    return (buffer, *_strides(buffer))


def copy_back(out: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Copy a kernel's contiguous buffer into ``out`` when ``output_view`` had to make one."""
    if buffer is not out:
        out.copy_(buffer)
    return out


@triton.jit
def load_classes(labels_ptr, b, offs_p, mask_p, stride_lb, stride_lp, K, ignore_index):
    """(class index int64, valid) of the pixels offs_p of image b; a label outside [0, K) or equal
    to ignore_index is not valid (compared in int64, so no label wraps into range)."""
    y = tl.load(labels_ptr + b * stride_lb + offs_p * stride_lp, mask=mask_p, other=0).to(tl.int64)
    return y, mask_p & (y >= 0) & (y < K) & (y != ignore_index)

