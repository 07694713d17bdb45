"""teacher_entropy: online softmax over K per pixel, normalised entropy and arg-max in one pass."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import block, check_dtypes, on_device, pixel_view

MAX_BLOCK_K = 64
TILE_ELEMENTS = 4096
NUM_WARPS = 8  # a 4096 tile spills with 4 warps on sm_90 when K is the contiguous dimension


@triton.jit
def _teacher_entropy_kernel(
    logits_ptr,   # B×K×N logits, strides (stride_b, stride_k, stride_p)
    entropy_ptr,  # B×N float32 out, contiguous
    pred_ptr,     # B×N int64 out, contiguous
    N, K, temperature, inv_log_k,
    stride_b, stride_k, stride_p,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """entropy = (log s - Σ e^{x-m}(x-m)/s)/log K with x = z/T, m the running max, s = Σ e^{x-m}."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < N
    row_max = tl.full([BLOCK_P], float("-inf"), tl.float32)   # running max of x
    sum_exp = tl.zeros([BLOCK_P], tl.float32)                   # Σ e^{x - row_max}
    sum_exp_shifted = tl.zeros([BLOCK_P], tl.float32)           # Σ e^{x - row_max} (x - row_max)
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)       # running max of raw z
    pred = tl.zeros([BLOCK_P], tl.int64)
    base = logits_ptr + b * stride_b + offs_p[None, :] * stride_p
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        z = tl.load(base + offs_k[:, None] * stride_k, mask=mask_k[:, None] & mask_p[None, :], other=0.0)
        z = tl.where(mask_k[:, None], z.to(tl.float32), float("-inf"))
        # arg-max of the raw logits, lowest k on ties, a NaN counting as the largest value (docs/ops.md;
        # chunks arrive in increasing k, so the first NaN found stays)
        is_nan = z != z
        nan_k = tl.min(tl.where(is_nan, offs_k[:, None], K), axis=0)
        chunk_has_nan = nan_k < K
        chunk_best = tl.max(tl.where(is_nan, float("-inf"), z), axis=0)
        chunk_arg = tl.min(tl.where(z == chunk_best[None, :], offs_k[:, None], K), axis=0)
        chunk_arg = tl.where(chunk_has_nan, nan_k, chunk_arg)
        take = (best == best) & (chunk_has_nan | (chunk_best > best))
        best = tl.where(take, tl.where(chunk_has_nan, float("nan"), chunk_best), best)
        pred = tl.where(take, chunk_arg.to(tl.int64), pred)
        # online softmax statistics of x = z / T
        x = z / temperature
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        rescale = tl.exp(row_max - new_max)
        shift = tl.where(sum_exp > 0, row_max - new_max, 0.0)
        centred = tl.where(mask_k[:, None], x - new_max[None, :], 0.0)
        e = tl.where(mask_k[:, None], tl.exp(centred), 0.0)
        sum_exp_shifted = rescale * (sum_exp_shifted + shift * sum_exp) + tl.sum(e * centred, axis=0)
        sum_exp = rescale * sum_exp + tl.sum(e, axis=0)
        row_max = new_max
    entropy = (tl.log(sum_exp) - sum_exp_shifted / sum_exp) * inv_log_k
    entropy = tl.minimum(tl.maximum(entropy, 0.0), 1.0)
    tl.store(entropy_ptr + b * N + offs_p, entropy, mask=mask_p)
    tl.store(pred_ptr + b * N + offs_p, pred, mask=mask_p)


def teacher_entropy(logits: torch.Tensor, temperature: float):
    """logits B×K×H×W -> (normalised entropy B×H×W float32 in [0, 1], pred B×H×W int64)."""
    check_dtypes("teacher_entropy", logits=logits)
    B, K, H, W = logits.shape
    N = H * W
    entropy = logits.new_empty((B, H, W), dtype=torch.float32)
    pred = logits.new_empty((B, H, W), dtype=torch.int64)
    if B * N == 0:
        return entropy, pred
    logits, stride_b, stride_k, stride_p = pixel_view(logits)
    block_k = block(K, 1, MAX_BLOCK_K)
    block_p = block(N, 16, max(16, TILE_ELEMENTS // block_k))
    inv_log_k = 0.0 if K == 1 else 1.0 / math.log(K)
    with on_device(logits.device):
        _teacher_entropy_kernel[(triton.cdiv(N, block_p), B)](
            logits, entropy, pred, N, K, float(temperature), inv_log_k,
            stride_b, stride_k, stride_p,
            BLOCK_P=block_p, BLOCK_K=block_k, num_warps=NUM_WARPS,
        )
    return entropy, pred
