"""What is timed: each op alone, the IFV term and the FRKD feature loss (with φ).

A workload builds its inputs for a shape and runs a forward with a given ops namespace
(``frkd_kernels`` under ``use_backend``, or ``bench.reference_ops``); its outputs are what
the backward differentiates (with fixed upstream gradients). The leaves that need gradients
are the inputs created with ``requires_grad``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from frkd.losses import feature_terms

from . import byte_model, cirkd_loop, inputs, reference_ops
from .inputs import IGNORE_INDEX
from .shapes import Shape

INTRA_WEIGHT = INTER_WEIGHT = 20.0  # the FRKD defaults λ_intra, λ_inter (λ_feat = 1), docs/method.md


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    make_inputs: Callable[[Shape, torch.device, torch.dtype], dict]
    forward: Callable[[object, dict], tuple]
    bytes: Callable[[Shape, int, int], tuple[int, int]]  # (shape, feature size, label size) -> (fwd, bwd)
    differentiable: bool = True
    loop_forward: Callable[[dict], tuple] | None = None


def _sizes(s: Shape):
    return s.B, s.H * s.W, s.K


# --- per-op workloads --------------------------------------------------------------------------

def _pool_inputs(s, device, dtype):
    return {"feat": inputs.features(s.B, s.C_t, s.H, s.W, seed=1, device=device, dtype=dtype, requires_grad=True),
            "labels": inputs.labels(s.B, s.H, s.W, s.K, seed=2, device=device), "K": s.K}


def _pool_forward(ops, x):
    return ops.prototype_pool(x["feat"], x["labels"], x["K"], IGNORE_INDEX)


def _maps_inputs(s, device, dtype):
    x = _pool_inputs(s, device, dtype)
    with torch.no_grad():
        protos, counts = _pool_forward(reference_ops, x)
    x.update(protos=protos.requires_grad_(True), counts=counts)
    return x


def _maps_forward(ops, x):
    return ops.class_distance_maps(x["feat"], x["labels"], x["protos"], x["counts"], IGNORE_INDEX, 1e-8)


def _mse_inputs(s, device, dtype):
    lab = inputs.labels(s.B, s.H, s.W, s.K, seed=2, device=device)
    weight = (lab != IGNORE_INDEX).float() / max(1, int((lab != IGNORE_INDEX).sum()))
    return {"student": inputs.features(s.B, s.C_t, s.H, s.W, seed=3, device=device, dtype=dtype, requires_grad=True),
            "teacher": inputs.features(s.B, s.C_t, s.H, s.W, seed=1, device=device, dtype=dtype),
            "weight": weight}


def _mse_forward(ops, x):
    return (ops.masked_feature_mse(x["student"], x["teacher"], x["weight"]),)


def _entropy_inputs(s, device, dtype):
    return {"logits": inputs.logits(s.B, s.K, s.H, s.W, seed=4, device=device, dtype=dtype)}


def _entropy_forward(ops, x):
    return ops.teacher_entropy(x["logits"], 1.0)


# --- IFV term ---------------------------------------------------------------------------------

def _pair_inputs(s, device, dtype):
    return {"f_s": inputs.features(s.B, s.C_s, s.H, s.W, seed=3, device=device, dtype=dtype, requires_grad=True),
            "f_t": inputs.features(s.B, s.C_t, s.H, s.W, seed=1, device=device, dtype=dtype),
            "labels": inputs.labels(s.B, s.H, s.W, s.K, seed=2, device=device), "K": s.K}


def _intra_map(ops, feat, labels, K):
    protos, counts = ops.prototype_pool(feat, labels, K, IGNORE_INDEX)
    return ops.class_distance_maps(feat, labels, protos, counts, IGNORE_INDEX, 1e-8)[0]


def _ifv_forward(ops, x):
    """IFV with CIRKD's normalisation (mean over B·H·W; ignored pixels give 0), as the loop does."""
    with torch.no_grad():
        intra_t = _intra_map(ops, x["f_t"], x["labels"], x["K"])
    intra_s = _intra_map(ops, x["f_s"], x["labels"], x["K"])
    return (((intra_s - intra_t) ** 2).mean(),)


def _ifv_loop(x):
    return (cirkd_loop.ifv_loss(x["f_s"], x["f_t"], x["labels"], x["K"]),)


def _ifv_bytes(s, f, l):
    B, N, K = _sizes(s)
    teacher = (byte_model.prototype_pool(B, s.C_t, N, K, f, l), byte_model.class_distance_maps(B, s.C_t, N, K, f, l))
    student = (byte_model.prototype_pool(B, s.C_s, N, K, f, l), byte_model.class_distance_maps(B, s.C_s, N, K, f, l))
    return byte_model.total(*student, byte_model.map_mse(B, N), teacher_pairs=teacher)


# --- FRKD feature loss ------------------------------------------------------------------------

def _frkd_inputs(s, device, dtype):
    x = _pair_inputs(s, device, dtype)
    phi = torch.randn(s.C_t, s.C_s, 1, 1, generator=inputs.generator(5)) / s.C_s ** 0.5
    x.update(phi=phi.to(device=device, dtype=dtype).requires_grad_(True),
             z_t=inputs.logits(s.B, s.K, s.H, s.W, seed=4, device=device, dtype=dtype))
    return x


def _frkd_forward(ops, x):
    """λ_feat·L_feat + λ_intra·L_intra + λ_inter·L_inter of φ(F_S) against F_T (docs/method.md)."""
    f_s = F.conv2d(x["f_s"], x["phi"])
    terms = feature_terms(f_s, x["f_t"], x["z_t"], x["labels"], num_classes=x["K"], ignore_index=IGNORE_INDEX, ops=ops)
    return (terms["feat"] + INTRA_WEIGHT * terms["intra"] + INTER_WEIGHT * terms["inter"],)


def _frkd_bytes(s, f, l):
    B, N, K = _sizes(s)
    C = s.C_t
    teacher = (byte_model.teacher_entropy(B, K, N, f), byte_model.prototype_pool(B, C, N, K, f, l),
               byte_model.class_distance_maps(B, C, N, K, f, l))
    student = (byte_model.conv1x1(B, s.C_s, C, N, f), byte_model.prototype_pool(B, C, N, K, f, l),
               byte_model.class_distance_maps(B, C, N, K, f, l), byte_model.map_mse(B, N),
               byte_model.masked_feature_mse(B, C, N, f))
    return byte_model.total(*student, teacher_pairs=teacher)


WORKLOADS = {w.name: w for w in (
    Workload("prototype_pool", "per-image class means of a B×C_t×H×W feature",
             _pool_inputs, _pool_forward,
             lambda s, f, l: byte_model.prototype_pool(s.B, s.C_t, s.H * s.W, s.K, f, l)),
    Workload("class_distance_maps", "intra/inter cosine maps of a B×C_t×H×W feature (grads to feat and protos)",
             _maps_inputs, _maps_forward,
             lambda s, f, l: byte_model.class_distance_maps(s.B, s.C_t, s.H * s.W, s.K, f, l)),
    Workload("masked_feature_mse", "weighted feature MSE, B×C_t×H×W (grad to the student only)",
             _mse_inputs, _mse_forward,
             lambda s, f, l: byte_model.masked_feature_mse(s.B, s.C_t, s.H * s.W, f)),
    Workload("teacher_entropy", "normalised entropy and arg-max of B×K×H×W logits (forward only)",
             _entropy_inputs, _entropy_forward,
             lambda s, f, l: byte_model.teacher_entropy(s.B, s.K, s.H * s.W, f), differentiable=False),
    Workload("ifv", "IFV term: pool + intra map for teacher (no grad) and student, MSE over B·H·W",
             _pair_inputs, _ifv_forward, _ifv_bytes, loop_forward=_ifv_loop),
    Workload("frkd_loss", "FRKD feature loss: φ (1×1 conv C_s→C_t) + feature_terms (feat + 20·intra + 20·inter)",
             _frkd_inputs, _frkd_forward, _frkd_bytes),
)}
