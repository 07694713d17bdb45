"""frkd::prototype_pool: per-image class means of a feature map (docs/ops.md).

The whole op on the Python side: schema, input checks, the pure-PyTorch reference (the ``torch``
backend) and its backward, the call into the compiled kernels (``cpu``/``cuda`` backends), the
routed private forward/backward, fake kernels and autograd. Its kernels: triton_ops/
prototype_pool.py (with the shared triton_ops/class_sum.py), csrc/cpu/prototype_pool.cpp,
csrc/cuda/prototype_pool.cu and csrc/cuda/bind_prototype_pool.cpp.

Shapes: feat B×C×H×W, labels B×H×W, protos B×K×C, counts B×K, N = H·W.
"""
from __future__ import annotations

import torch

from .. import _library as lib

OP = "prototype_pool"
SCHEMA = "(Tensor feat, Tensor labels, int num_classes, int ignore_index=255) -> (Tensor protos, Tensor counts)"
BACKWARD_SCHEMA = ("(Tensor grad_protos, Tensor labels, Tensor counts, Tensor feat, int ignore_index, "
                   "Tensor backend) -> Tensor")
KERNELS = {  # the compiled kernels write their out-arguments (allocated in ``compiled*`` below)
    OP: "(Tensor feat, Tensor labels, int ignore_index, {deterministic}Tensor(a!) protos, Tensor(b!) counts) -> ()",
    OP + "_backward": ("(Tensor grad_protos, Tensor labels, Tensor counts, int ignore_index, "
                       "Tensor(a!) grad_feat) -> ()"),
}

lib.define(OP, SCHEMA)
lib.define(OP + "_forward", lib.forward_schema(SCHEMA, "Tensor backend"))
lib.define(OP + "_backward", BACKWARD_SCHEMA)
lib.define_kernels(KERNELS)


def prototype_pool(feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = lib.IGNORE_INDEX):
    """Per-image class means of a feature map.

    feat: B×C×H×W float; labels: B×H×W uint8/int32/int64 (255 or any value outside [0, K) ignored).
    Returns (protos B×K×C, counts B×K), float32 (float64 for float64 feat); protos are 0 for absent
    classes. Differentiable w.r.t. feat.
    """
    return torch.ops.frkd.prototype_pool(feat, labels, num_classes, ignore_index)


def check(feat, labels, num_classes, ignore_index) -> None:
    lib.check_feat(OP, "feat", feat)
    lib.check_labels(OP, "feat", feat, labels)
    lib.check_same_device(OP, feat=feat, labels=labels)
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"frkd.{OP}: num_classes must be a positive int, got {num_classes!r}")
    lib.check_ignore_index(OP, ignore_index)


# --- reference: the torch backend -------------------------------------------------------------

def reference(feat, labels, num_classes: int, ignore_index: int):
    """feat B×C×H×W, labels B×H×W -> (protos B×K×C, counts B×K)."""
    B, C = feat.shape[:2]
    dt = lib.stat_dtype(feat)
    valid, idx = lib.valid_labels(labels, num_classes, ignore_index)
    f = feat.flatten(2).to(dt).transpose(1, 2)  # B×N×C
    sums = f.new_zeros(B, num_classes + 1, C).scatter_add(1, idx[:, :, None].expand(-1, -1, C), f)
    counts = torch.zeros(B, num_classes + 1, dtype=dt, device=feat.device).scatter_add(1, idx, valid.to(dt))
    counts = counts[:, :num_classes].contiguous()
    protos = sums[:, :num_classes] / counts.clamp_min(1)[:, :, None]
    return protos, counts


def reference_backward(grad_protos, labels, counts, feat, ignore_index: int):
    """grad_protos B×K×C -> grad_feat like feat: grad_protos[b, y_p] / counts[b, y_p] on valid pixels."""
    B, C = feat.shape[:2]
    K = counts.shape[1]
    _, idx = lib.valid_labels(labels, K, ignore_index)
    scaled = grad_protos.to(counts.dtype) / counts.clamp_min(1)[:, :, None]
    scaled = torch.cat([scaled, scaled.new_zeros(B, 1, C)], dim=1)  # bucket K gives 0
    g = torch.gather(scaled, 1, idx[:, :, None].expand(-1, -1, C)).transpose(1, 2)  # B×C×N
    out = torch.empty_like(feat)
    out.copy_(g.reshape(feat.shape))
    return out


# --- the compiled kernels (cpu and cuda backends) ---------------------------------------------

def compiled(backend, feat, labels, num_classes: int, ignore_index: int):
    """Run ``backend``'s (a ``_compiled.CompiledBackend``) forward kernel on outputs allocated here."""
    B, C = feat.shape[:2]
    dt = lib.stat_dtype(feat)
    protos = feat.new_empty(B, num_classes, C, dtype=dt)
    counts = feat.new_empty(B, num_classes, dtype=dt)
    backend.run(OP, (feat, labels, ignore_index), (protos, counts))
    return protos, counts


def compiled_backward(backend, grad_protos, labels, counts, feat, ignore_index: int):
    dt = lib.stat_dtype(counts, feat)
    grad_feat = torch.empty_like(feat)
    backend.run(OP + "_backward", (backend.as_stat(grad_protos, dt), labels, backend.as_stat(counts, dt), ignore_index),
                (grad_feat,))
    return grad_feat


# --- routing, fakes, autograd -----------------------------------------------------------------

def _forward(feat, labels, num_classes, ignore_index=lib.IGNORE_INDEX):
    check(feat, labels, num_classes, ignore_index)
    pool, backend = lib.resolved(OP, feat.device)
    protos, counts = pool(feat, labels, num_classes, ignore_index)
    return protos, counts, backend


def _backward_op(grad_protos, labels, counts, feat, ignore_index, backend):
    return lib.recorded(OP + "_backward", backend)(grad_protos, labels, counts, feat, ignore_index)


lib.register_routed(OP + "_forward", _forward)
lib.register_routed(OP + "_backward", _backward_op)


@torch.library.impl(f"frkd::{OP}", "CompositeImplicitAutograd")
def _public(feat, labels, num_classes, ignore_index=lib.IGNORE_INDEX):
    protos, counts, _ = torch.ops.frkd.prototype_pool_forward(feat, labels, num_classes, ignore_index)
    return protos, counts


@torch.library.register_fake(f"frkd::{OP}_forward")
def _fake_forward(feat, labels, num_classes, ignore_index=lib.IGNORE_INDEX):
    check(feat, labels, num_classes, ignore_index)
    dt = lib.stat_dtype(feat)
    B, C = feat.shape[:2]
    return (feat.new_empty(B, num_classes, C, dtype=dt), feat.new_empty(B, num_classes, dtype=dt),
            lib.fake_backend())


@torch.library.register_fake(f"frkd::{OP}_backward")
def _fake_backward(grad_protos, labels, counts, feat, ignore_index, backend):
    return torch.empty_like(feat)


def _setup_context(ctx, inputs, output):
    feat, labels, _, ignore_index = inputs
    _, counts, backend = output
    ctx.mark_non_differentiable(counts, backend)
    ctx.save_for_backward(labels, counts, feat, backend)
    ctx.ignore_index = ignore_index


def _autograd_backward(ctx, grad_protos, grad_counts, grad_backend):
    labels, counts, feat, backend = ctx.saved_tensors
    grad_feat = None
    if ctx.needs_input_grad[0]:
        grad_feat = torch.ops.frkd.prototype_pool_backward(
            grad_protos.contiguous(), labels, counts, feat, ctx.ignore_index, backend)
    return grad_feat, None, None, None


torch.library.register_autograd(f"frkd::{OP}_forward", _autograd_backward, setup_context=_setup_context)
lib.no_double_backward(OP + "_backward")
