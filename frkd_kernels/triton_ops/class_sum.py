"""Segmented reduction of pixels into per-class sums: the core of prototype_pool and of the
prototype gradient of class_distance_maps.

For image b, class k and channel c: sums[b,k,c] = Σ_p a[b,k,p]·f[b,c,p] and scalars[b,k] = Σ_p s[b,k,p],
where a (and s) are 1 at the pixel's label (prototype_pool: scalars are the counts) or, WEIGHTED, given
per pixel for its label class and for one second class. Each program reduces a run of pixels for a
BLOCK_K×BLOCK_C tile with one tl.dot per pixel tile (a one-hot or weighted class matrix times the
features). Runs are combined with fp32 atomics (fast path) or written as partials that the caller sums
in a fixed order (deterministic path, used when torch.are_deterministic_algorithms_enabled()).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import HALF_DTYPES, INTERPRET, block, load_classes, target_programs

BLOCK_P = 64
MAX_BLOCK_C = 64
MAX_BLOCK_K = 64
NUM_WARPS = 8  # 4 warps spill on sm_90 with float32 features (tf32x3 dot)


@triton.jit
def _class_sum_kernel(
    feat_ptr,      # B×C×N features, strides (stride_fb, stride_fc, stride_fp)
    labels_ptr,    # B×N labels (uint8/int32/int64), strides (stride_lb, stride_lp)
    second_ptr,    # B×N int32 second class per pixel, -1 for none, contiguous (WEIGHTED only)
    weights_ptr,   # B×4×N float32 per pixel: a(label), a(second), s(label), s(second), contiguous (WEIGHTED only)
    sums_ptr,      # B×S×K×C float32 out: partial sums per pixel run (S = 1 with atomics), contiguous
    scalars_ptr,   # B×S×K float32 out: partial scalar sums, contiguous
    N, C, K, ignore_index, pixels_per_run, num_c_blocks,
    stride_fb, stride_fc, stride_fp, stride_lb, stride_lp,
    WEIGHTED: tl.constexpr, USE_ATOMICS: tl.constexpr, NATIVE_DOT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    run = tl.program_id(0)
    c_block = tl.program_id(1) % num_c_blocks
    k_block = tl.program_id(1) // num_c_blocks
    b = tl.program_id(2).to(tl.int64)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = k_block * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < K
    sums = tl.zeros([BLOCK_K, BLOCK_C], tl.float32)
    scalars = tl.zeros([BLOCK_K], tl.float32)
    p_start = run * pixels_per_run
    p_end = tl.minimum(p_start + pixels_per_run, N)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < p_end
        y, valid = load_classes(labels_ptr, b, offs_p, mask_p, stride_lb, stride_lp, K, ignore_index)
        is_label = (y[None, :] == offs_k[:, None]) & valid[None, :]           # BLOCK_K×BLOCK_P
        if WEIGHTED:
            second = tl.load(second_ptr + b * N + offs_p, mask=mask_p, other=-1)
            is_second = (second[None, :] == offs_k[:, None]) & valid[None, :]
            w = weights_ptr + b * 4 * N + offs_p
            a_label = tl.load(w, mask=valid, other=0.0)
            a_second = tl.load(w + N, mask=valid, other=0.0)
            s_label = tl.load(w + 2 * N, mask=valid, other=0.0)
            s_second = tl.load(w + 3 * N, mask=valid, other=0.0)
            a = tl.where(is_label, a_label[None, :], 0.0) + tl.where(is_second, a_second[None, :], 0.0)
            scalars += tl.sum(tl.where(is_label, s_label[None, :], 0.0)
                              + tl.where(is_second, s_second[None, :], 0.0), axis=1)
        else:
            a = is_label.to(tl.float32)
            scalars += tl.sum(a, axis=1)
        # ignored pixels are not read: whatever they hold never reaches a class sum
        f = tl.load(feat_ptr + b * stride_fb + offs_c[None, :] * stride_fc + offs_p[:, None] * stride_fp,
                    mask=valid[:, None] & mask_c[None, :], other=0.0)              # BLOCK_P×BLOCK_C
        if NATIVE_DOT:  # one-hot and 16-bit features are exact in their own dtype
            sums = tl.dot(a.to(f.dtype), f, sums)
        else:
            sums = tl.dot(a, f.to(tl.float32), sums, input_precision="tf32x3")
    mask = mask_k[:, None] & mask_c[None, :]
    if USE_ATOMICS:  # every run adds into the one slot
        row = b * K + offs_k
        tl.atomic_add(sums_ptr + row[:, None] * C + offs_c[None, :], sums, mask=mask, sem="relaxed")
        if c_block == 0:
            tl.atomic_add(scalars_ptr + row, scalars, mask=mask_k, sem="relaxed")
    else:  # every run writes its own slot
        row = (b * tl.num_programs(0) + run) * K + offs_k
        tl.store(sums_ptr + row[:, None] * C + offs_c[None, :], sums, mask=mask)
        if c_block == 0:
            tl.store(scalars_ptr + row, scalars, mask=mask_k)


def use_atomics_on(device: torch.device) -> bool:
    """Atomics on GPUs unless deterministic algorithms are asked for; partials elsewhere."""
    return device.type == "cuda" and not torch.are_deterministic_algorithms_enabled()


def class_sums(feat, labels, num_classes: int, ignore_index: int, second=None, weights=None):
    """Per-class pixel sums of feat B×C×N (strides from ``pixel_view``) by labels B×N.

    feat and labels are ``pixel_view`` tuples (tensor, strides...). Unweighted: sums of the features
    of each class and the pixel counts. Weighted (second B×N int32, weights B×4×N float32, both
    contiguous): see ``_class_sum_kernel``. Returns (sums B×S×K×C, scalars B×S×K), float32; the S
    partials must be summed in order (S = 1 on the atomic path).
    """
    (feat, stride_fb, stride_fc, stride_fp), (labels, stride_lb, stride_lp) = feat, labels
    B, C = feat.shape[:2]
    N = labels.shape[1] * labels.shape[2]
    K = num_classes
    block_c, block_k = block(C, 16, MAX_BLOCK_C), block(K, 16, MAX_BLOCK_K)
    num_c_blocks, num_k_blocks = max(1, triton.cdiv(C, block_c)), triton.cdiv(K, block_k)
    tiles = triton.cdiv(max(N, 1), BLOCK_P)
    runs = min(tiles, max(1, triton.cdiv(target_programs(feat.device), B * num_c_blocks * num_k_blocks)))
    pixels_per_run = triton.cdiv(tiles, runs) * BLOCK_P
    runs = triton.cdiv(max(N, 1), pixels_per_run)
    use_atomics = use_atomics_on(feat.device)
    slots = 1 if use_atomics else runs
    alloc = torch.zeros if use_atomics else torch.empty
    sums = alloc((B, slots, K, C), dtype=torch.float32, device=feat.device)
    scalars = alloc((B, slots, K), dtype=torch.float32, device=feat.device)
    weighted = weights is not None
    _class_sum_kernel[(runs, num_c_blocks * num_k_blocks, B)](
        feat, labels, second if weighted else labels, weights if weighted else sums, sums, scalars,
        N, C, K, ignore_index, pixels_per_run, num_c_blocks,
        stride_fb, stride_fc, stride_fp, stride_lb, stride_lp,
        WEIGHTED=weighted, USE_ATOMICS=use_atomics,
        NATIVE_DOT=not weighted and feat.dtype in HALF_DTYPES and not (INTERPRET and feat.dtype == torch.bfloat16),
        BLOCK_P=BLOCK_P, BLOCK_C=block_c, BLOCK_K=block_k, num_warps=NUM_WARPS,
    )
    return sums, scalars
