"""class_distance_maps: own-class and best other-class cosine per pixel, and its backward.

Forward: per pixel tile, the dots with all K prototypes (tl.dot over C chunks), the own-class cosine
and the best present other class (value and arg-max, ties lowest k) in one pass.
Backward: only the pixel's own class and its saved arg-max class get a gradient, so the feature
gradient is a two-row gather per pixel, and the prototype gradient is a weighted segmented reduction
(class_sum) of the features; nothing of size B×K×H×W is materialised.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, block, check_dtypes, copy_back, load_classes, on_device, output_view, pixel_view
from .class_sum import class_sums

# Tiles sized so that sm_90 needs no register spills (checked with ptxas at B=8, C=256, N=8192, K=19)
FORWARD_BLOCK_P = 64
FORWARD_MAX_BLOCK_C = 32
FORWARD_MAX_BLOCK_K = 64
FORWARD_NUM_WARPS = 4
BACKWARD_BLOCK_P = 64
BACKWARD_MAX_BLOCK_C = 32
BACKWARD_NUM_WARPS = 4
FINALIZE_MAX_BLOCK_C = 256


@triton.jit
def _cdm_forward_kernel(
    feat_ptr,         # B×C×N features, strides (stride_fb, stride_fc, stride_fp)
    labels_ptr,       # B×N labels, strides (stride_lb, stride_lp)
    protos_ptr,       # B×K×C prototypes, strides (stride_pb, stride_pk, stride_pc)
    counts_ptr,       # B×K counts, strides (stride_nb, stride_nk)
    intra_ptr,        # B×N float32 out, contiguous
    inter_ptr,        # B×N float32 out, contiguous
    inter_class_ptr,  # B×N int32 out, contiguous
    N, C, K, ignore_index, eps,
    stride_fb, stride_fc, stride_fp, stride_lb, stride_lp,
    stride_pb, stride_pk, stride_pc, stride_nb, stride_nk,
    SPLIT_PROTOS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < N
    y, valid = load_classes(labels_ptr, b, offs_p, mask_p, stride_lb, stride_lp, K, ignore_index)
    own_class = tl.where(valid, y, -1).to(tl.int32)
    own = tl.zeros([BLOCK_P], tl.float32)
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_class = tl.full([BLOCK_P], -1, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        dots = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
        f_sq = tl.zeros([BLOCK_P], tl.float32)
        c_sq = tl.zeros([BLOCK_K], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            f = tl.load(feat_ptr + b * stride_fb + offs_c[None, :] * stride_fc + offs_p[:, None] * stride_fp,
                        mask=mask_p[:, None] & mask_c[None, :], other=0.0)               # BLOCK_P×BLOCK_C
            c = tl.load(protos_ptr + b * stride_pb + offs_k[None, :] * stride_pk + offs_c[:, None] * stride_pc,
                        mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # BLOCK_C×BLOCK_K
            f32 = f.to(tl.float32)
            f_sq += tl.sum(f32 * f32, axis=1)
            c_sq += tl.sum(c * c, axis=0)
            if SPLIT_PROTOS:  # bf16 features are exact; prototypes as high + low bf16 halves
                c_high = c.to(f.dtype)
                dots = tl.dot(f, c_high, dots)
                dots = tl.dot(f, (c - c_high.to(tl.float32)).to(f.dtype), dots)
            else:
                dots = tl.dot(f32, c, dots, input_precision="tf32x3")
        den = tl.sqrt(f_sq)[:, None] * tl.sqrt(c_sq)[None, :]
        ok = den >= eps
        cos = tl.where(ok, dots / tl.where(ok, den, 1.0), 0.0)
        is_own = offs_k[None, :] == own_class[:, None]
        own += tl.sum(tl.where(is_own, cos, 0.0), axis=1)
        present = tl.load(counts_ptr + b * stride_nb + offs_k * stride_nk, mask=mask_k, other=0.0) > 0
        candidate = present[None, :] & ~is_own & valid[:, None]
        # docs/ops.md: the largest cosine, ties to the lowest k; a NaN counts as the largest
        is_nan = candidate & (cos != cos)
        nan_class = tl.min(tl.where(is_nan, offs_k[None, :], K), axis=1)
        number = candidate & ~is_nan
        chunk_best = tl.max(tl.where(number, cos, float("-inf")), axis=1)
        chunk_class = tl.min(tl.where(number & (cos == chunk_best[:, None]), offs_k[None, :], K), axis=1)
        chunk_nan = nan_class < K
        chunk_best = tl.where(chunk_nan, float("nan"), chunk_best)
        chunk_class = tl.where(chunk_nan, nan_class, chunk_class)
        best_nan = best != best
        take = (chunk_class < K) & ((best_class < 0) | (~best_nan & (chunk_nan | (chunk_best > best))))
        best = tl.where(take, chunk_best, best)
        best_class = tl.where(take, chunk_class, best_class)
    out = b * N + offs_p
    tl.store(intra_ptr + out, tl.where(valid, own, 1.0), mask=mask_p)
    tl.store(inter_ptr + out, tl.where(best_class >= 0, best, -1.0), mask=mask_p)
    tl.store(inter_class_ptr + out, best_class, mask=mask_p)


@triton.jit
def _cdm_backward_pixel_kernel(
    grad_intra_ptr,   # B×N float, strides (stride_gib, stride_gip)
    grad_inter_ptr,   # B×N float, strides (stride_geb, stride_gep)
    feat_ptr,         # B×C×N features, strides (stride_fb, stride_fc, stride_fp)
    labels_ptr,       # B×N labels, strides (stride_lb, stride_lp)
    protos_ptr,       # B×K×C prototypes, strides (stride_pb, stride_pk, stride_pc)
    inter_class_ptr,  # B×N int32 saved arg-max class (-1: none), strides (stride_ab, stride_ap)
    grad_feat_ptr,    # B×C×N out like feat, strides (stride_ob, stride_oc, stride_op) (NEED_FEAT)
    weights_ptr,      # B×4×N float32 out for class_sum: a(own), a(inter), g·cos(own), g·cos(inter) (NEED_PROTOS)
    N, C, K, ignore_index, eps,
    stride_gib, stride_gip, stride_geb, stride_gep, stride_fb, stride_fc, stride_fp, stride_lb, stride_lp,
    stride_pb, stride_pk, stride_pc, stride_ab, stride_ap, stride_ob, stride_oc, stride_op,
    NEED_FEAT: tl.constexpr, NEED_PROTOS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """With g the incoming gradient of a cosine, a = g/(|f||c|):
    grad_f = Σ_{own, inter} a·c - f·Σ g·cos/|f|^2; the prototype part is left to class_sum."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < N
    y, valid = load_classes(labels_ptr, b, offs_p, mask_p, stride_lb, stride_lp, K, ignore_index)
    own_class = tl.where(valid, y, 0)
    arg = tl.load(inter_class_ptr + b * stride_ab + offs_p * stride_ap, mask=mask_p, other=-1)
    has_inter = mask_p & (arg >= 0) & (arg < K)
    inter_class = tl.where(has_inter, arg, 0).to(tl.int64)
    f_base = feat_ptr + b * stride_fb + offs_p[:, None] * stride_fp
    own_base = protos_ptr + b * stride_pb + own_class[:, None] * stride_pk
    inter_base = protos_ptr + b * stride_pb + inter_class[:, None] * stride_pk
    dot_own = tl.zeros([BLOCK_P], tl.float32)
    dot_inter = tl.zeros([BLOCK_P], tl.float32)
    f_sq = tl.zeros([BLOCK_P], tl.float32)
    own_sq = tl.zeros([BLOCK_P], tl.float32)
    inter_sq = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        f = tl.load(f_base + offs_c[None, :] * stride_fc, mask=mask_p[:, None] & mask_c[None, :], other=0.0)
        c_own = tl.load(own_base + offs_c[None, :] * stride_pc, mask=valid[:, None] & mask_c[None, :], other=0.0)
        c_inter = tl.load(inter_base + offs_c[None, :] * stride_pc, mask=has_inter[:, None] & mask_c[None, :],
                          other=0.0)
        f = f.to(tl.float32)
        c_own = c_own.to(tl.float32)
        c_inter = c_inter.to(tl.float32)
        dot_own += tl.sum(f * c_own, axis=1)
        dot_inter += tl.sum(f * c_inter, axis=1)
        f_sq += tl.sum(f * f, axis=1)
        own_sq += tl.sum(c_own * c_own, axis=1)
        inter_sq += tl.sum(c_inter * c_inter, axis=1)
    f_norm = tl.sqrt(f_sq)
    den_own = f_norm * tl.sqrt(own_sq)
    den_inter = f_norm * tl.sqrt(inter_sq)
    ok_own = valid & (den_own >= eps)
    ok_inter = has_inter & (den_inter >= eps)
    g_own = tl.load(grad_intra_ptr + b * stride_gib + offs_p * stride_gip, mask=ok_own, other=0.0).to(tl.float32)
    g_inter = tl.load(grad_inter_ptr + b * stride_geb + offs_p * stride_gep, mask=ok_inter, other=0.0).to(tl.float32)
    den_own = tl.where(ok_own, den_own, 1.0)
    den_inter = tl.where(ok_inter, den_inter, 1.0)
    a_own = g_own / den_own
    a_inter = g_inter / den_inter
    gcos_own = g_own * (dot_own / den_own)
    gcos_inter = g_inter * (dot_inter / den_inter)
    if NEED_PROTOS:
        w = weights_ptr + b * 4 * N + offs_p
        tl.store(w, a_own, mask=mask_p)
        tl.store(w + N, a_inter, mask=mask_p)
        tl.store(w + 2 * N, gcos_own, mask=mask_p)
        tl.store(w + 3 * N, gcos_inter, mask=mask_p)
    if NEED_FEAT:
        f_coef = (gcos_own + gcos_inter) / tl.where(f_sq > 0, f_sq, 1.0)
        out_base = grad_feat_ptr + b * stride_ob + offs_p[:, None] * stride_op
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            mask = mask_p[:, None] & mask_c[None, :]
            f = tl.load(f_base + offs_c[None, :] * stride_fc, mask=mask, other=0.0).to(tl.float32)
            c_own = tl.load(own_base + offs_c[None, :] * stride_pc, mask=valid[:, None] & mask_c[None, :],
                            other=0.0).to(tl.float32)
            c_inter = tl.load(inter_base + offs_c[None, :] * stride_pc, mask=has_inter[:, None] & mask_c[None, :],
                              other=0.0).to(tl.float32)
            g = a_own[:, None] * c_own + a_inter[:, None] * c_inter - f_coef[:, None] * f
            tl.store(out_base + offs_c[None, :] * stride_oc, g.to(grad_feat_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cdm_protos_finalize_kernel(
    sums_ptr,       # B×S×K×C float32 partial Σ_p a·f, contiguous
    scalars_ptr,    # B×S×K float32 partial Σ_p g·cos, contiguous
    protos_ptr,     # B×K×C prototypes, strides (stride_pb, stride_pk, stride_pc)
    grad_ptr,       # B×K×C out like protos, strides (stride_ob, stride_ok, stride_oc)
    S, K, C,
    stride_pb, stride_pk, stride_pc, stride_ob, stride_ok, stride_oc,
    BLOCK_C: tl.constexpr,
):
    """grad_c = Σ_s sums - c · Σ_s scalars / |c|^2 (|c|^2 replaced by 1 when 0)."""
    row = tl.program_id(0).to(tl.int64)  # b·K + k
    c_block = tl.program_id(1)
    b = row // K
    k = row % K
    c_row = protos_ptr + b * stride_pb + k * stride_pk
    c_sq = tl.zeros([BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        c = tl.load(c_row + offs * stride_pc, mask=offs < C, other=0.0).to(tl.float32)
        c_sq += c * c
    c_sq_total = tl.sum(c_sq, axis=0)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    total = tl.zeros([BLOCK_C], tl.float32)
    scalar = tl.zeros([1], tl.float32)
    for s in range(0, S):
        partial = (b * S + s) * K + k
        total += tl.load(sums_ptr + partial * C + offs_c, mask=mask_c, other=0.0)
        scalar += tl.load(scalars_ptr + partial + tl.arange(0, 1))
    coef = scalar / tl.where(c_sq_total > 0, c_sq_total, 1.0)
    c = tl.load(c_row + offs_c * stride_pc, mask=mask_c, other=0.0).to(tl.float32)
    grad = total - coef * c
    tl.store(grad_ptr + b * stride_ob + k * stride_ok + offs_c * stride_oc, grad.to(grad_ptr.dtype.element_ty),
             mask=mask_c)


def class_distance_maps(feat, labels, protos, counts, ignore_index: int, eps: float):
    """-> (intra B×H×W, inter B×H×W float32, inter_class B×H×W int32; -1 where inter has no class)."""
    check_dtypes("class_distance_maps", feat=feat, protos=protos, counts=counts)
    B, C, H, W = feat.shape
    N = H * W
    K = protos.shape[1]
    intra = feat.new_empty((B, H, W), dtype=torch.float32)
    inter = feat.new_empty((B, H, W), dtype=torch.float32)
    inter_class = feat.new_empty((B, H, W), dtype=torch.int32)
    if B * N == 0:
        return intra, inter, inter_class
    feat, *f_strides = pixel_view(feat)
    labels, *l_strides = pixel_view(labels)
    block_c = block(C, 16, FORWARD_MAX_BLOCK_C)
    block_k = block(K, 16, FORWARD_MAX_BLOCK_K)
    # bf16 shares fp32's exponent range, so its high + low halves cannot overflow (fp16's could);
    # the interpreter's bf16 tl.dot is broken, so there the fp32 path serves
    split = feat.dtype == torch.bfloat16 and not INTERPRET
    with on_device(feat.device):
        _cdm_forward_kernel[(triton.cdiv(N, FORWARD_BLOCK_P), B)](
            feat, labels, protos, counts, intra, inter, inter_class, N, C, K, ignore_index, eps,
            *f_strides, *l_strides, *protos.stride(), *counts.stride(),
            SPLIT_PROTOS=split, BLOCK_P=FORWARD_BLOCK_P, BLOCK_C=block_c, BLOCK_K=block_k,
            num_warps=FORWARD_NUM_WARPS,
        )
    return intra, inter, inter_class


def class_distance_maps_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                 ignore_index: int, eps: float, need_feat: bool, need_protos: bool):
    """-> (grad_feat like feat or empty, grad_protos like protos or empty)."""
    check_dtypes("class_distance_maps_backward", grad_intra=grad_intra, grad_inter=grad_inter, feat=feat,
                 protos=protos, counts=counts)
    B, C, H, W = feat.shape
    N = H * W
    K = protos.shape[1]
    grad_feat = torch.empty_like(feat) if need_feat else feat.new_empty(0)
    grad_protos = torch.empty_like(protos) if need_protos else protos.new_empty(0)
    if B * N * C == 0 or not (need_feat or need_protos):
        return grad_feat.zero_(), grad_protos.zero_()
    feat_view = pixel_view(feat)
    labels_view = pixel_view(labels)
    grad_intra, *gi_strides = pixel_view(grad_intra)
    grad_inter, *ge_strides = pixel_view(grad_inter)
    inter_class, *a_strides = pixel_view(inter_class)
    # an output not asked for gets an input as a placeholder pointer: the kernel never writes it
    out, *o_strides = output_view(grad_feat) if need_feat else feat_view
    weights = feat.new_empty((B, 4, N), dtype=torch.float32) if need_protos else grad_intra
    with on_device(feat.device):
        _cdm_backward_pixel_kernel[(triton.cdiv(N, BACKWARD_BLOCK_P), B)](
            grad_intra, grad_inter, feat_view[0], labels_view[0], protos, inter_class, out, weights,
            N, C, K, ignore_index, eps, *gi_strides, *ge_strides, *feat_view[1:], *labels_view[1:],
            *protos.stride(), *a_strides, *o_strides,
            NEED_FEAT=need_feat, NEED_PROTOS=need_protos,
            BLOCK_P=BACKWARD_BLOCK_P, BLOCK_C=block(C, 16, BACKWARD_MAX_BLOCK_C), num_warps=BACKWARD_NUM_WARPS,
        )
        if need_feat:
            copy_back(grad_feat, out)
        if need_protos:
            sums, scalars = class_sums(feat_view, labels_view, K, ignore_index,
                                       second=inter_class.reshape(B, N).contiguous(), weights=weights)
            block_c = block(C, 16, FINALIZE_MAX_BLOCK_C)
            _cdm_protos_finalize_kernel[(B * K, triton.cdiv(C, block_c))](
                sums, scalars, protos, grad_protos, sums.shape[1], K, C, *protos.stride(), *grad_protos.stride(),
                BLOCK_C=block_c, num_warps=4,
            )
    return grad_feat, grad_protos
