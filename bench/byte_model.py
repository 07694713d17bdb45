"""Bytes each op must move: every input read once, every output written once (compulsory traffic).

Achieved GB/s = these bytes / median time, a lower bound on the real traffic: a kernel that
reads a tensor twice moves more than it is credited with. Sizes in bytes; ``f`` is the feature
element size, ``l`` the label element size; statistics (protos, counts, maps, losses) are float32
and the arg-max class int32, pred int64. N = H·W. Each function returns (forward, backward).
"""
from __future__ import annotations

STAT = 4


def prototype_pool(B, C, N, K, f, l):
    """feat, labels -> protos, counts; backward: grad_protos, labels, counts -> grad_feat."""
    fwd = B * C * N * f + B * N * l + B * K * C * STAT + B * K * STAT
    bwd = B * K * C * STAT + B * N * l + B * K * STAT + B * C * N * f
    return fwd, bwd


def class_distance_maps(B, C, N, K, f, l):
    """feat, labels, protos, counts -> intra, inter, inter_class; backward also writes grad_protos."""
    inputs = B * C * N * f + B * N * l + B * K * C * STAT + B * K * STAT
    fwd = inputs + 3 * B * N * STAT
    bwd = 2 * B * N * STAT + inputs + B * N * STAT + B * C * N * f + B * K * C * STAT
    return fwd, bwd


def masked_feature_mse(B, C, N, f):
    """student, teacher, weight -> scalar; backward: grad_student only (teacher needs none)."""
    fwd = 2 * B * C * N * f + B * N * STAT + STAT
    bwd = 2 * B * C * N * f + B * N * STAT + STAT + B * C * N * f
    return fwd, bwd


def teacher_entropy(B, K, N, f):
    """logits -> entropy float32, pred int64; no backward."""
    return B * K * N * f + B * N * (STAT + 8), 0


def map_mse(B, N):
    """(intra_S − intra_T)² mean: two maps read; backward writes one map gradient."""
    return 2 * B * N * STAT, 3 * B * N * STAT


def conv1x1(B, C_in, C_out, N, f):
    """φ: read input and weight, write output; backward reads grad_out and input, writes both grads."""
    weight = C_in * C_out * f
    fwd = B * C_in * N * f + weight + B * C_out * N * f
    bwd = B * C_out * N * f + B * C_in * N * f + weight + B * C_in * N * f + weight
    return fwd, bwd


def total(*pairs, teacher_pairs=()):
    """Sum (fwd, bwd) pairs; ``teacher_pairs`` run under no_grad, so only their forward counts."""
    fwd = sum(p[0] for p in pairs) + sum(p[0] for p in teacher_pairs)
    return fwd, sum(p[1] for p in pairs)
