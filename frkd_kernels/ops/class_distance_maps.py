"""frkd::class_distance_maps: cosine of each pixel to its own class prototype and to the nearest
other present class (docs/ops.md).

The whole op on the Python side: schema, input checks, the pure-PyTorch reference (the ``torch``
backend) and its backward, the call into the compiled kernels (``cpu``/``cuda`` backends), the
routed private forward/backward, fake kernels and autograd. Its kernels: triton_ops/
class_distance_maps.py, csrc/cpu/class_distance_maps.cpp, csrc/cuda/class_distance_maps.cu and
csrc/cuda/bind_class_distance_maps.cpp; its tests: tests/test_class_distance_maps.py.

Shapes: feat B×C×H×W, labels B×H×W, protos B×K×C, counts B×K, maps B×H×W, N = H·W.
"""
from __future__ import annotations

import math

import torch

from .. import _library as lib

OP = "class_distance_maps"
SCHEMA = ("(Tensor feat, Tensor labels, Tensor protos, Tensor counts, int ignore_index=255, float eps=1e-08) "
          "-> (Tensor intra, Tensor inter)")
BACKWARD_SCHEMA = (
    "(Tensor grad_intra, Tensor grad_inter, Tensor feat, Tensor labels, Tensor protos, Tensor counts, "
    "Tensor inter_class, int ignore_index, float eps, bool need_feat, bool need_protos, Tensor backend) "
    "-> (Tensor, Tensor)")
KERNELS = {  # the compiled kernels write their out-arguments (allocated in ``compiled*`` below)
    OP: ("(Tensor feat, Tensor labels, Tensor protos, Tensor counts, int ignore_index, float eps, "
         "Tensor(a!) intra, Tensor(b!) inter, Tensor(c!) inter_class) -> ()"),
    OP + "_backward": (
        "(Tensor grad_intra, Tensor grad_inter, Tensor feat, Tensor labels, Tensor protos, Tensor inter_class, "
        "int ignore_index, float eps, bool need_feat, bool need_protos, {deterministic}"
        "Tensor(a!) grad_feat, Tensor(b!) grad_protos) -> ()"),
}

lib.define(OP, SCHEMA)
lib.define(OP + "_forward", lib.forward_schema(SCHEMA, "Tensor inter_class", "Tensor backend"))
lib.define(OP + "_backward", BACKWARD_SCHEMA)
lib.define_kernels(KERNELS)


def class_distance_maps(feat, labels, protos, counts, ignore_index: int = lib.IGNORE_INDEX, eps: float = 1e-8):
    """Cosine of each pixel to its own class prototype and to the nearest other present class.

    feat B×C×H×W, labels B×H×W, protos B×K×C, counts B×K (from ``prototype_pool``).
    Returns (intra B×H×W: 1 on ignored pixels, inter B×H×W: -1 where no other class is present),
    float32. Differentiable w.r.t. feat and protos.
    """
    return torch.ops.frkd.class_distance_maps(feat, labels, protos, counts, ignore_index, eps)


def check(feat, labels, protos, counts, ignore_index, eps) -> None:
    lib.check_feat(OP, "feat", feat)
    lib.check_labels(OP, "feat", feat, labels)
    lib.check_tensor(OP, "protos", protos, 3, lib.FLOAT_DTYPES, "a 3-D B×K×C float tensor")
    B, C = feat.shape[:2]
    if protos.shape[0] != B or protos.shape[2] != C or protos.shape[1] < 1:
        raise ValueError(f"frkd.{OP}: protos must be B×K×C with B={B}, C={C} (from feat), K>=1; got {tuple(protos.shape)}")
    K = protos.shape[1]
    lib.check_tensor(OP, "counts", counts, 2, lib.FLOAT_DTYPES, "a 2-D B×K float tensor")
    if tuple(counts.shape) != (B, K):
        raise ValueError(f"frkd.{OP}: counts must be B×K = {(B, K)} (from protos), got {tuple(counts.shape)}")
    lib.check_same_device(OP, feat=feat, labels=labels, protos=protos, counts=counts)
    lib.check_ignore_index(OP, ignore_index)
    if not eps > 0:
        raise ValueError(f"frkd.{OP}: eps must be > 0, got {eps!r}")


# --- reference: the torch backend -------------------------------------------------------------

def reference(feat, labels, protos, counts, ignore_index: int, eps: float):
    """-> (intra, inter, inter_class B×H×W int32; -1 where inter has no class).

    inter is the largest cosine over present classes k != own class; ties go to the lowest k and a
    NaN cosine counts as the largest (the lowest-k NaN wins), as in torch.argmax.
    """
    B, C, H, W = feat.shape
    K = protos.shape[1]
    dt = lib.stat_dtype(feat, protos)
    valid, idx = lib.valid_labels(labels, K, ignore_index)
    cos, _, _ = lib.cosines(feat.flatten(2).to(dt), protos.to(dt), eps)
    own = torch.gather(cos, 1, idx.clamp_max(K - 1)[:, None, :])[:, 0]
    intra = torch.where(valid, own, torch.ones_like(own))
    ks = torch.arange(K, device=feat.device)
    candidate = (counts > 0)[:, :, None] & (ks[None, :, None] != idx[:, None, :]) & valid[:, None, :]
    is_nan = candidate & cos.isnan()
    best, arg = cos.masked_fill(~candidate | is_nan, -math.inf).max(dim=1)  # max(dim): first maximum
    any_nan = is_nan.any(dim=1)
    best = torch.where(any_nan, torch.full_like(best, math.nan), best)
    arg = torch.where(any_nan, is_nan.to(torch.int8).argmax(dim=1), arg)
    found = candidate.any(dim=1)
    inter = torch.where(found, best, torch.full_like(best, -1.0))
    inter_class = torch.where(found, arg, torch.full_like(arg, -1)).to(torch.int32)
    return intra.reshape(B, H, W), inter.reshape(B, H, W), inter_class.reshape(B, H, W)


def reference_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                       ignore_index: int, eps: float, need_feat: bool, need_protos: bool):
    """-> (grad_feat like feat or empty, grad_protos like protos or empty).

    With cos = f·c/(|f||c|): d cos/d f = c/(|f||c|) - cos f/|f|^2, d cos/d c = f/(|f||c|) - cos c/|c|^2;
    intra routes to the pixel's own class, inter to the saved arg-max class; no gradient where
    |f||c| < eps.
    """
    B, C = feat.shape[:2]
    K = protos.shape[1]
    dt = lib.stat_dtype(feat, protos)
    valid, idx = lib.valid_labels(labels, K, ignore_index)
    f = feat.flatten(2).to(dt)
    c = protos.to(dt)
    cos, ok, den = lib.cosines(f, c, eps)
    g = torch.zeros(B, K + 1, f.shape[2], dtype=dt, device=feat.device)
    g.scatter_add_(1, idx[:, None, :], torch.where(valid, grad_intra.flatten(1).to(dt), 0)[:, None, :])
    arg = inter_class.flatten(1).long()
    has = arg >= 0
    g.scatter_add_(1, torch.where(has, arg, K)[:, None, :],
                   torch.where(has, grad_inter.flatten(1).to(dt), 0)[:, None, :])
    g = torch.where(ok, g[:, :K], torch.zeros_like(cos))
    a = g / torch.where(ok, den, torch.ones_like(den))  # B×K×N
    gc = g * cos
    grad_feat, grad_protos = feat.new_empty(0), protos.new_empty(0)
    if need_feat:
        fsq = (f * f).sum(1)  # B×N
        gf = torch.bmm(c.transpose(1, 2), a) - f * (gc.sum(1) / torch.where(fsq > 0, fsq, 1))[:, None, :]
        grad_feat = torch.empty_like(feat)
        grad_feat.copy_(gf.reshape(feat.shape))
    if need_protos:
        csq = (c * c).sum(2)  # B×K
        gp = torch.bmm(a, f.transpose(1, 2)) - c * (gc.sum(2) / torch.where(csq > 0, csq, 1))[:, :, None]
        grad_protos = torch.empty_like(protos)
        grad_protos.copy_(gp)
    return grad_feat, grad_protos


# --- the compiled kernels (cpu and cuda backends) ---------------------------------------------

def compiled(backend, feat, labels, protos, counts, ignore_index: int, eps: float):
    """Run ``backend``'s (a ``_compiled.CompiledBackend``) forward kernel on outputs allocated here."""
    B, _, H, W = feat.shape
    dt = lib.stat_dtype(feat, protos)
    intra = feat.new_empty(B, H, W, dtype=dt)
    inter = feat.new_empty(B, H, W, dtype=dt)
    inter_class = feat.new_empty(B, H, W, dtype=torch.int32)
    backend.run(OP, (feat, labels, backend.as_stat(protos, dt), backend.as_stat(counts, dt), ignore_index, eps),
                (intra, inter, inter_class))
    return intra, inter, inter_class


def compiled_backward(backend, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                      ignore_index: int, eps: float, need_feat: bool, need_protos: bool):
    dt = lib.stat_dtype(feat, protos)
    grad_feat = lib.empty_or_like(feat, need_feat)
    grad_protos = feat.new_empty(protos.shape, dtype=dt) if need_protos else protos.new_empty(0)
    backend.run(OP + "_backward",
                (backend.as_stat(grad_intra, dt), backend.as_stat(grad_inter, dt), feat, labels,
                 backend.as_stat(protos, dt), inter_class.to(torch.int32).contiguous(), ignore_index, eps,
                 need_feat, need_protos),
                (grad_feat, grad_protos))
    return grad_feat, backend.into(grad_protos, protos) if need_protos else grad_protos


# --- routing, fakes, autograd -----------------------------------------------------------------

def _forward(feat, labels, protos, counts, ignore_index=lib.IGNORE_INDEX, eps=1e-8):
    check(feat, labels, protos, counts, ignore_index, eps)
    maps, backend = lib.resolved(OP, feat.device)
    intra, inter, inter_class = maps(feat, labels, protos, counts, ignore_index, eps)
    return intra, inter, inter_class, backend


def _backward_op(grad_intra, grad_inter, feat, labels, protos, counts, inter_class, ignore_index, eps,
                 need_feat, need_protos, backend):
    return lib.recorded(OP + "_backward", backend)(
        grad_intra, grad_inter, feat, labels, protos, counts, inter_class, ignore_index, eps, need_feat, need_protos)


lib.register_routed(OP + "_forward", _forward)
lib.register_routed(OP + "_backward", _backward_op)


@torch.library.impl(f"frkd::{OP}", "CompositeImplicitAutograd")
def _public(feat, labels, protos, counts, ignore_index=lib.IGNORE_INDEX, eps=1e-8):
    intra, inter, _, _ = torch.ops.frkd.class_distance_maps_forward(feat, labels, protos, counts, ignore_index, eps)
    return intra, inter


@torch.library.register_fake(f"frkd::{OP}_forward")
def _fake_forward(feat, labels, protos, counts, ignore_index=lib.IGNORE_INDEX, eps=1e-8):
    check(feat, labels, protos, counts, ignore_index, eps)
    dt = lib.stat_dtype(feat, protos)
    B, _, H, W = feat.shape
    return (feat.new_empty(B, H, W, dtype=dt), feat.new_empty(B, H, W, dtype=dt),
            feat.new_empty(B, H, W, dtype=torch.int32), lib.fake_backend())


@torch.library.register_fake(f"frkd::{OP}_backward")
def _fake_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class, ignore_index, eps,
                   need_feat, need_protos, backend):
    return lib.empty_or_like(feat, need_feat), lib.empty_or_like(protos, need_protos)


def _setup_context(ctx, inputs, output):
    feat, labels, protos, counts, ignore_index, eps = inputs
    _, _, inter_class, backend = output
    ctx.mark_non_differentiable(inter_class, backend)
    ctx.save_for_backward(feat, labels, protos, counts, inter_class, backend)
    ctx.ignore_index, ctx.eps = ignore_index, eps


def _autograd_backward(ctx, grad_intra, grad_inter, grad_class, grad_backend):
    feat, labels, protos, counts, inter_class, backend = ctx.saved_tensors
    need_feat, need_protos = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    if not (need_feat or need_protos):
        return None, None, None, None, None, None
    grad_feat, grad_protos = torch.ops.frkd.class_distance_maps_backward(
        grad_intra.contiguous(), grad_inter.contiguous(), feat, labels, protos, counts, inter_class,
        ctx.ignore_index, ctx.eps, need_feat, need_protos, backend)
    return (grad_feat if need_feat else None, None, grad_protos if need_protos else None, None, None, None)


torch.library.register_autograd(f"frkd::{OP}_forward", _autograd_backward, setup_context=_setup_context)
lib.no_double_backward(OP + "_backward")
