"""frkd::teacher_entropy: normalised softmax entropy and arg-max of teacher logits (docs/ops.md).

The whole op on the Python side: schema, input checks, the pure-PyTorch reference (the ``torch``
backend), the call into the compiled kernels (``cpu``/``cuda`` backends), routing, fake kernel
and autograd (it has no backward: teacher-only). Its kernels: triton_ops/teacher_entropy.py,
csrc/cpu/teacher_entropy.cpp, csrc/cuda/teacher_entropy.cu and csrc/cuda/bind_teacher_entropy.cpp.

Shapes: logits B×K×H×W; entropy and pred B×H×W.
"""
from __future__ import annotations

import math

import torch

from .. import _library as lib

OP = "teacher_entropy"
SCHEMA = "(Tensor logits, float temperature=1.0) -> (Tensor entropy, Tensor pred)"
KERNELS = {OP: "(Tensor logits, float temperature, Tensor(a!) entropy, Tensor(b!) pred) -> ()"}

lib.define(OP, SCHEMA)
lib.define_kernels(KERNELS)


def teacher_entropy(logits: torch.Tensor, temperature: float = 1.0):
    """Normalised softmax entropy and arg-max of teacher logits B×K×H×W.

    Returns (entropy B×H×W float32 in [0, 1], pred B×H×W int64). Not differentiable.
    """
    return torch.ops.frkd.teacher_entropy(logits, temperature)


def check(logits, temperature) -> None:
    lib.check_tensor(OP, "logits", logits, 4, lib.FLOAT_DTYPES, "a 4-D B×K×H×W float tensor")
    if logits.shape[1] < 1:
        raise ValueError(f"frkd.{OP}: logits must have K >= 1 classes, got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"frkd.{OP}: temperature must be > 0, got {temperature!r}")


def reference(logits, temperature: float):
    """logits B×K×H×W -> (normalised entropy B×H×W in [0, 1], pred B×H×W int64; ties and NaN as
    torch.argmax: the lowest k, a NaN counts as the largest)."""
    K = logits.shape[1]
    dt = lib.stat_dtype(logits)
    z = logits.to(dt) / temperature
    pred = logits.argmax(dim=1)
    if K == 1:
        return torch.zeros_like(z[:, 0]), pred
    lse = torch.logsumexp(z, dim=1)
    p = torch.exp(z - lse[:, None])
    ent = (lse - (p * z).sum(1)) / math.log(K)
    return ent.clamp(0.0, 1.0), pred


def compiled(backend, logits, temperature: float):
    """Run ``backend``'s (a ``_compiled.CompiledBackend``) kernel on outputs allocated here."""
    B, _, H, W = logits.shape
    entropy = logits.new_empty(B, H, W, dtype=lib.stat_dtype(logits))
    pred = logits.new_empty(B, H, W, dtype=torch.int64)
    backend.run(OP, (logits, temperature), (entropy, pred))
    return entropy, pred


def _routed(logits, temperature=1.0):
    check(logits, temperature)
    entropy, _ = lib.resolved(OP, logits.device)
    return entropy(logits, temperature)


lib.register_routed(OP, _routed)


@torch.library.register_fake(f"frkd::{OP}")
def _fake(logits, temperature=1.0):
    check(logits, temperature)
    B, _, H, W = logits.shape
    return logits.new_empty(B, H, W, dtype=lib.stat_dtype(logits)), logits.new_empty(B, H, W, dtype=torch.int64)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _autograd_backward(ctx, grad_entropy, grad_pred):
    raise RuntimeError("frkd.teacher_entropy is teacher-only and has no backward; call it on detached logits")


torch.library.register_autograd(f"frkd::{OP}", _autograd_backward, setup_context=_setup_context)
