"""prototype_pool: per-image class means as a segmented reduction; its backward as a gather."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block, check_dtypes, copy_back, load_classes, on_device, output_view, pixel_view
from .class_sum import class_sums

MAX_FINALIZE_BLOCK_C = 256
GATHER_BLOCK_P = 64
GATHER_MAX_BLOCK_C = 64
GATHER_NUM_WARPS = 4


@triton.jit
def _prototype_finalize_kernel(
    sums_ptr,            # B×S×K×C float32 partial class sums, contiguous
    partial_counts_ptr,  # B×S×K float32 partial counts, contiguous
    protos_ptr,          # B×K×C float32 out, contiguous
    counts_ptr,          # B×K float32 out, contiguous
    S, K, C,
    BLOCK_C: tl.constexpr,
):
    """protos = Σ_s sums / max(1, Σ_s counts), the S partials summed in order."""
    row = tl.program_id(0).to(tl.int64)  # b·K + k
    c_block = tl.program_id(1)
    b = row // K
    k = row % K
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    total = tl.zeros([BLOCK_C], tl.float32)
    count = tl.zeros([1], tl.float32)
    for s in range(0, S):
        partial = (b * S + s) * K + k
        total += tl.load(sums_ptr + partial * C + offs_c, mask=mask_c, other=0.0)
        count += tl.load(partial_counts_ptr + partial + tl.arange(0, 1))
    tl.store(protos_ptr + row * C + offs_c, total / tl.maximum(count, 1.0), mask=mask_c)
    if c_block == 0:
        tl.store(counts_ptr + row + tl.arange(0, 1), count)


@triton.jit
def _prototype_gather_kernel(
    grad_protos_ptr,  # B×K×C float, strides (stride_gb, stride_gk, stride_gc)
    counts_ptr,       # B×K float, strides (stride_nb, stride_nk)
    labels_ptr,       # B×N labels, strides (stride_lb, stride_lp)
    grad_feat_ptr,    # B×C×N out like feat, strides (stride_ob, stride_oc, stride_op)
    N, C, K, ignore_index,
    stride_gb, stride_gk, stride_gc, stride_nb, stride_nk, stride_lb, stride_lp,
    stride_ob, stride_oc, stride_op,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_feat[b,:,p] = grad_protos[b, y_p] / counts[b, y_p] on valid pixels, 0 elsewhere."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N
    mask_c = offs_c < C
    y, valid = load_classes(labels_ptr, b, offs_p, mask_p, stride_lb, stride_lp, K, ignore_index)
    cls = tl.where(valid, y, 0)
    count = tl.load(counts_ptr + b * stride_nb + cls * stride_nk, mask=valid, other=1.0).to(tl.float32)
    g = tl.load(grad_protos_ptr + b * stride_gb + cls[:, None] * stride_gk + offs_c[None, :] * stride_gc,
                mask=valid[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    g = g / tl.maximum(count, 1.0)[:, None]
    out = grad_feat_ptr + b * stride_ob + offs_c[None, :] * stride_oc + offs_p[:, None] * stride_op
    tl.store(out, g.to(grad_feat_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


def prototype_pool(feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int):
    """feat B×C×H×W, labels B×H×W -> (protos B×K×C, counts B×K), float32 contiguous."""
    check_dtypes("prototype_pool", feat=feat)
    B, C = feat.shape[:2]
    K = num_classes
    protos = feat.new_empty((B, K, C), dtype=torch.float32)
    counts = feat.new_empty((B, K), dtype=torch.float32)
    if B == 0:
        return protos, counts
    with on_device(feat.device):
        sums, partial_counts = class_sums(pixel_view(feat), pixel_view(labels), K, ignore_index)
        block_c = block(C, 16, MAX_FINALIZE_BLOCK_C)
        _prototype_finalize_kernel[(B * K, max(1, triton.cdiv(C, block_c)))](
            sums, partial_counts, protos, counts, sums.shape[1], K, C, BLOCK_C=block_c, num_warps=4,
        )
    return protos, counts


def prototype_pool_backward(grad_protos, labels, counts, feat, ignore_index: int):
    """grad_protos B×K×C -> grad_feat like feat: grad_protos[b, y_p] / counts[b, y_p] on valid pixels."""
    check_dtypes("prototype_pool_backward", grad_protos=grad_protos, counts=counts, feat=feat)
    B, C, H, W = feat.shape
    N = H * W
    K = counts.shape[1]
    grad_feat = torch.empty_like(feat)
    if B * C * N == 0:
        return grad_feat
    labels, *l_strides = pixel_view(labels)
    buffer, *o_strides = output_view(grad_feat)
    block_c = block(C, 16, GATHER_MAX_BLOCK_C)
    grid = (triton.cdiv(N, GATHER_BLOCK_P), triton.cdiv(C, block_c), B)
    with on_device(feat.device):
        _prototype_gather_kernel[grid](
            grad_protos, counts, labels, buffer, N, C, K, ignore_index,
            *grad_protos.stride(), *counts.stride(), *l_strides, *o_strides,
            BLOCK_P=GATHER_BLOCK_P, BLOCK_C=block_c, num_warps=GATHER_NUM_WARPS,
        )
    return copy_back(grad_feat, buffer)
