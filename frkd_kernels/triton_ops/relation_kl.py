"""relation_kl: flash-attention-style kernels over tiles of the similarities (docs/ops.md).

Forward: one program per (block of rows, key group) walks the group's key tiles with an online
softmax for both sides and writes the per-(row, group) KL and log-sum-exps. Backward (recomputes
the tiles from the log-sum-exps): one kernel per block of rows accumulates G·K into the query
gradient, one per block of keys accumulates Gᵀ·Q into the key gradient (without keys the queries
are the keys and the two add up), G = scale·(P_S − P_T). Inputs are the op slice's contiguous unit
rows; the products run in IEEE float32 (no TF32), so the values match the other backends.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block, check_dtypes, on_device

BLOCK_ROWS = 32
BLOCK_KEYS = 32
MAX_BLOCK_C = 32


@triton.jit
def _logits(q_ptr, k_ptr, rows, keys, row_ok, key_ok, C, inv_tau,
            BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """(q[rows]·k[keys]ᵀ)/τ as BLOCK_R×BLOCK_M float32, over C channels in chunks (rows contiguous)."""
    x = tl.zeros([BLOCK_R, BLOCK_M], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        q = tl.load(q_ptr + rows[:, None].to(tl.int64) * C + offs_c[None, :], mask=row_ok[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)
        k = tl.load(k_ptr + keys[None, :].to(tl.int64) * C + offs_c[:, None], mask=key_ok[None, :] & c_ok[:, None],
                    other=0.0).to(tl.float32)
        x += tl.dot(q, k, input_precision="ieee")
    return x * inv_tau


@triton.jit
def _relation_forward_kernel(
    qs_ptr, qt_ptr, ks_ptr, kt_ptr,   # R×C_S, R×C_T, M×C_S, M×C_T unit rows (keys = queries without keys)
    kl_ptr, lse_s_ptr, lse_t_ptr,     # R×G out
    R, per_group, G, C_S, C_T, inv_tau,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CS: tl.constexpr, BLOCK_CT: tl.constexpr,
):
    g = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    m_s = tl.full([BLOCK_R], float("-inf"), tl.float32)
    m_t = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_s = tl.zeros([BLOCK_R], tl.float32)
    l_t = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, per_group, BLOCK_M):
        offs = start + tl.arange(0, BLOCK_M)
        key_ok = offs < per_group
        keys = g * per_group + offs
        x = _logits(qs_ptr, ks_ptr, rows, keys, row_ok, key_ok, C_S, inv_tau, BLOCK_R, BLOCK_M, BLOCK_CS)
        y = _logits(qt_ptr, kt_ptr, rows, keys, row_ok, key_ok, C_T, inv_tau, BLOCK_R, BLOCK_M, BLOCK_CT)
        y_minus_x = y - x
        x = tl.where(key_ok[None, :], x, float("-inf"))
        y = tl.where(key_ok[None, :], y, float("-inf"))
        ms_new = tl.maximum(m_s, tl.max(x, axis=1))
        mt_new = tl.maximum(m_t, tl.max(y, axis=1))
        l_s = l_s * tl.exp(m_s - ms_new) + tl.sum(tl.exp(x - ms_new[:, None]), axis=1)
        rescale_t = tl.exp(m_t - mt_new)
        e_y = tl.exp(y - mt_new[:, None])
        l_t = l_t * rescale_t + tl.sum(e_y, axis=1)
        acc = acc * rescale_t + tl.sum(e_y * y_minus_x, axis=1)  # e_y is 0 outside the keys
        m_s, m_t = ms_new, mt_new
    lse_s = m_s + tl.log(l_s)
    lse_t = m_t + tl.log(l_t)
    out = rows.to(tl.int64) * G + g
    tl.store(kl_ptr + out, acc / l_t - lse_t + lse_s, mask=row_ok)
    tl.store(lse_s_ptr + out, lse_s, mask=row_ok)
    tl.store(lse_t_ptr + out, lse_t, mask=row_ok)


@triton.jit
def _gradient_tile(qs_ptr, qt_ptr, ks_ptr, kt_ptr, lse_s_ptr, lse_t_ptr, rows, keys, row_ok, key_ok, g, G,
                   C_S, C_T, inv_tau, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CS: tl.constexpr,
                   BLOCK_CT: tl.constexpr):
    """P_S − P_T on one tile (0 outside the rows and keys), recomputed from the log-sum-exps."""
    x = _logits(qs_ptr, ks_ptr, rows, keys, row_ok, key_ok, C_S, inv_tau, BLOCK_R, BLOCK_M, BLOCK_CS)
    y = _logits(qt_ptr, kt_ptr, rows, keys, row_ok, key_ok, C_T, inv_tau, BLOCK_R, BLOCK_M, BLOCK_CT)
    at = rows.to(tl.int64) * G + g
    lse_s = tl.load(lse_s_ptr + at, mask=row_ok, other=0.0)
    lse_t = tl.load(lse_t_ptr + at, mask=row_ok, other=0.0)
    d = tl.exp(x - lse_s[:, None]) - tl.exp(y - lse_t[:, None])
    return tl.where(row_ok[:, None] & key_ok[None, :], d, 0.0)


@triton.jit
def _relation_grad_query_kernel(
    scale_ptr, qs_ptr, qt_ptr, ks_ptr, kt_ptr, lse_s_ptr, lse_t_ptr,
    grad_ptr,                          # R×C_S out: scale/τ·Σ_keys (P_S − P_T)·k
    R, per_group, G, C_S, C_T, inv_tau,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CS: tl.constexpr, BLOCK_CT: tl.constexpr,
    WIDTH_S: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    offs_c = tl.arange(0, WIDTH_S)
    c_ok = offs_c < C_S
    grad = tl.zeros([BLOCK_R, WIDTH_S], tl.float32)
    for g in range(0, G):
        for start in range(0, per_group, BLOCK_M):
            offs = start + tl.arange(0, BLOCK_M)
            key_ok = offs < per_group
            keys = g * per_group + offs
            d = _gradient_tile(qs_ptr, qt_ptr, ks_ptr, kt_ptr, lse_s_ptr, lse_t_ptr, rows, keys, row_ok, key_ok,
                               g, G, C_S, C_T, inv_tau, BLOCK_R, BLOCK_M, BLOCK_CS, BLOCK_CT)
            k = tl.load(ks_ptr + keys[:, None].to(tl.int64) * C_S + offs_c[None, :],
                        mask=key_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            grad += tl.dot(d, k, input_precision="ieee")
    scale = tl.load(scale_ptr) * inv_tau
    tl.store(grad_ptr + rows[:, None].to(tl.int64) * C_S + offs_c[None, :], grad * scale,
             mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def _relation_grad_key_kernel(
    scale_ptr, qs_ptr, qt_ptr, ks_ptr, kt_ptr, lse_s_ptr, lse_t_ptr,
    grad_ptr,                          # M×C_S out: scale/τ·Σ_rows (P_S − P_T)ᵀ·q
    R, per_group, G, C_S, C_T, inv_tau,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CS: tl.constexpr, BLOCK_CT: tl.constexpr,
    WIDTH_S: tl.constexpr,
):
    g = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    key_ok = offs < per_group
    keys = g * per_group + offs
    offs_c = tl.arange(0, WIDTH_S)
    c_ok = offs_c < C_S
    grad = tl.zeros([BLOCK_M, WIDTH_S], tl.float32)
    for start in range(0, R, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        d = _gradient_tile(qs_ptr, qt_ptr, ks_ptr, kt_ptr, lse_s_ptr, lse_t_ptr, rows, keys, row_ok, key_ok,
                           g, G, C_S, C_T, inv_tau, BLOCK_R, BLOCK_M, BLOCK_CS, BLOCK_CT)
        q = tl.load(qs_ptr + rows[:, None].to(tl.int64) * C_S + offs_c[None, :],
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        grad += tl.dot(tl.trans(d), q, input_precision="ieee")
    scale = tl.load(scale_ptr) * inv_tau
    tl.store(grad_ptr + keys[:, None].to(tl.int64) * C_S + offs_c[None, :], grad * scale,
             mask=key_ok[:, None] & c_ok[None, :])


def _sizes(query_s, query_t, key_s, groups):
    R, C_S = query_s.shape
    M = R if key_s is None else key_s.shape[0]
    return R, M // groups, C_S, query_t.shape[1]


def _meta(C_S: int, C_T: int) -> dict:
    return dict(BLOCK_R=BLOCK_ROWS, BLOCK_M=BLOCK_KEYS, BLOCK_CS=block(C_S, 16, MAX_BLOCK_C),
                BLOCK_CT=block(C_T, 16, MAX_BLOCK_C))


def relation_kl(query_s, query_t, key_s, key_t, groups: int, temperature: float):
    """Contiguous float32 unit rows (the slice casts; float64 raises) -> (kl R×G, lse_s R×G, lse_t R×G) float32."""
    check_dtypes("relation_kl", query_s=query_s, query_t=query_t)
    key_s, key_t = (query_s, query_t) if key_s is None else (key_s, key_t)
    R, per_group, C_S, C_T = _sizes(query_s, query_t, key_s, groups)
    kl, lse_s, lse_t = (query_s.new_empty(R, groups, dtype=torch.float32) for _ in range(3))
    if R == 0:
        return kl, lse_s, lse_t
    with on_device(query_s.device):
        _relation_forward_kernel[(triton.cdiv(R, BLOCK_ROWS), groups)](
            query_s, query_t, key_s, key_t, kl, lse_s, lse_t, R, per_group, groups, C_S, C_T, 1.0 / temperature,
            **_meta(C_S, C_T))
    return kl, lse_s, lse_t


def relation_kl_backward(scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups: int, temperature: float,
                         need_key: bool):
    """-> (grad of the unit query_s rows, grad of the unit key_s rows or empty); float32."""
    check_dtypes("relation_kl_backward", query_s=query_s, query_t=query_t)
    self_keys = key_s is None
    keys_s, keys_t = (query_s, query_t) if self_keys else (key_s, key_t)
    R, per_group, C_S, C_T = _sizes(query_s, query_t, key_s, groups)
    grad_query = torch.empty_like(query_s, dtype=torch.float32)
    grad_key = query_s.new_empty(0, dtype=torch.float32)
    if R == 0:
        return grad_query, grad_key
    scale = scale.to(torch.float32).reshape(())
    args = (scale, query_s, query_t, keys_s, keys_t, lse_s, lse_t)
    sizes = (R, per_group, groups, C_S, C_T, 1.0 / temperature)
    meta = dict(**_meta(C_S, C_T), WIDTH_S=block(C_S, 16, 1 << 30))
    with on_device(query_s.device):
        _relation_grad_query_kernel[(triton.cdiv(R, BLOCK_ROWS),)](*args, grad_query, *sizes, **meta)
        if self_keys or need_key:
            keys_grad = torch.empty_like(keys_s, dtype=torch.float32)
            _relation_grad_key_kernel[(triton.cdiv(per_group, BLOCK_KEYS), groups)](*args, keys_grad, *sizes, **meta)
            if self_keys:
                grad_query += keys_grad
            else:
                grad_key = keys_grad
    return grad_query, grad_key
