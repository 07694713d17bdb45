"""The ``frkd::*`` op schemas: validation, backend routing, fake kernels and autograd.

Each public op has one schema (DESIGN §2). ``teacher_entropy``'s CPU and CUDA kernels validate the
inputs, pick a backend with ``_backend.resolve`` and call that backend's function. The three
differentiable ops are ``CompositeImplicitAutograd`` over a private ``frkd::<op>_forward`` that does
that work and also returns what the backward needs: the backend it ran on, as a 0-dim int8 CPU
tensor (its index in ``_backend.BACKENDS``, made at run time, so a graph compiled under one
``use_backend`` follows the one it runs under), and for ``class_distance_maps`` the arg-max class.
Autograd is registered on the private forwards; backwards are ops of their own
(``frkd::<op>_backward``) that take that backend tensor and run there, whatever thread the autograd
engine uses and whether or not the graph was compiled.
"""
from __future__ import annotations

import torch

from . import _backend

_LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

SCHEMAS = {
    "prototype_pool": "(Tensor feat, Tensor labels, int num_classes, int ignore_index=255) -> (Tensor protos, Tensor counts)",
    "prototype_pool_forward": "(Tensor feat, Tensor labels, int num_classes, int ignore_index=255) -> (Tensor protos, Tensor counts, Tensor backend)",
    "prototype_pool_backward": "(Tensor grad_protos, Tensor labels, Tensor counts, Tensor feat, int ignore_index, Tensor backend) -> Tensor",
    "class_distance_maps": "(Tensor feat, Tensor labels, Tensor protos, Tensor counts, int ignore_index=255, float eps=1e-08) -> (Tensor intra, Tensor inter)",
    "class_distance_maps_forward": "(Tensor feat, Tensor labels, Tensor protos, Tensor counts, int ignore_index=255, float eps=1e-08) -> (Tensor intra, Tensor inter, Tensor inter_class, Tensor backend)",
    "class_distance_maps_backward": "(Tensor grad_intra, Tensor grad_inter, Tensor feat, Tensor labels, Tensor protos, Tensor counts, Tensor inter_class, int ignore_index, float eps, bool need_feat, bool need_protos, Tensor backend) -> (Tensor, Tensor)",
    "masked_feature_mse": "(Tensor student, Tensor teacher, Tensor weight) -> Tensor",
    "masked_feature_mse_forward": "(Tensor student, Tensor teacher, Tensor weight) -> (Tensor loss, Tensor backend)",
    "masked_feature_mse_backward": "(Tensor grad_loss, Tensor student, Tensor teacher, Tensor weight, bool need_student, bool need_teacher, Tensor backend) -> (Tensor, Tensor)",
    "teacher_entropy": "(Tensor logits, float temperature=1.0) -> (Tensor entropy, Tensor pred)",
}
for _name, _schema in SCHEMAS.items():
    torch.library.define(f"frkd::{_name}", _schema)


# --- validation -----------------------------------------------------------------------------

def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def _check_tensor(op, name, t, ndim, dtypes, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"frkd.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != ndim or t.dtype not in dtypes:
        raise ValueError(f"frkd.{op}: {name} must be {what}, got {_describe(t)}")


def _check_feat(op, name, t):
    _check_tensor(op, name, t, 4, _FLOAT_DTYPES, "a 4-D B×C×H×W float32/float16/bfloat16/float64 tensor")


def _check_labels(op, feat_name, feat, labels):
    _check_tensor(op, "labels", labels, 3, _LABEL_DTYPES, "a 3-D B×H×W uint8/int32/int64 tensor")
    B, _, H, W = feat.shape
    if tuple(labels.shape) != (B, H, W):
        raise ValueError(
            f"frkd.{op}: labels must be B×H×W = {(B, H, W)} to match {feat_name} {tuple(feat.shape)}, "
            f"got {tuple(labels.shape)} (resize labels with nearest interpolation first)"
        )


def _check_same_device(op, **tensors):
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"frkd.{op}: all tensors must be on one device, got {listing}")


def _check_ignore_index(op, ignore_index):
    if not isinstance(ignore_index, int):
        raise TypeError(f"frkd.{op}: ignore_index must be an int, got {ignore_index!r}")


def check_prototype_pool(feat, labels, num_classes, ignore_index):
    op = "prototype_pool"
    _check_feat(op, "feat", feat)
    _check_labels(op, "feat", feat, labels)
    _check_same_device(op, feat=feat, labels=labels)
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"frkd.{op}: num_classes must be a positive int, got {num_classes!r}")
    _check_ignore_index(op, ignore_index)


def check_class_distance_maps(feat, labels, protos, counts, ignore_index, eps):
    op = "class_distance_maps"
    _check_feat(op, "feat", feat)
    _check_labels(op, "feat", feat, labels)
    _check_tensor(op, "protos", protos, 3, _FLOAT_DTYPES, "a 3-D B×K×C float tensor")
    B, C = feat.shape[:2]
    if protos.shape[0] != B or protos.shape[2] != C or protos.shape[1] < 1:
        raise ValueError(f"frkd.{op}: protos must be B×K×C with B={B}, C={C} (from feat), K>=1; got {tuple(protos.shape)}")
    K = protos.shape[1]
    _check_tensor(op, "counts", counts, 2, _FLOAT_DTYPES, "a 2-D B×K float tensor")
    if tuple(counts.shape) != (B, K):
        raise ValueError(f"frkd.{op}: counts must be B×K = {(B, K)} (from protos), got {tuple(counts.shape)}")
    _check_same_device(op, feat=feat, labels=labels, protos=protos, counts=counts)
    _check_ignore_index(op, ignore_index)
    if not eps > 0:
        raise ValueError(f"frkd.{op}: eps must be > 0, got {eps!r}")


def check_masked_feature_mse(student, teacher, weight):
    op = "masked_feature_mse"
    _check_feat(op, "student", student)
    _check_feat(op, "teacher", teacher)
    if student.shape != teacher.shape:
        raise ValueError(f"frkd.{op}: teacher must have the student's shape {tuple(student.shape)}, got {tuple(teacher.shape)}")
    _check_tensor(op, "weight", weight, 3, _FLOAT_DTYPES, "a 3-D B×H×W float tensor")
    B, _, H, W = student.shape
    if tuple(weight.shape) != (B, H, W):
        raise ValueError(f"frkd.{op}: weight must be B×H×W = {(B, H, W)}, got {tuple(weight.shape)}")
    _check_same_device(op, student=student, teacher=teacher, weight=weight)


def check_teacher_entropy(logits, temperature):
    op = "teacher_entropy"
    _check_tensor(op, "logits", logits, 4, _FLOAT_DTYPES, "a 4-D B×K×H×W float tensor")
    if logits.shape[1] < 1:
        raise ValueError(f"frkd.{op}: logits must have K >= 1 classes, got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"frkd.{op}: temperature must be > 0, got {temperature!r}")


# --- routed kernels (CPU and CUDA keys) -------------------------------------------------------

def _resolved(name: str, device: torch.device):
    """The function ``name`` of the backend that serves ``device`` now, and that backend as a
    0-dim int8 CPU tensor (its index in ``_backend.BACKENDS``) for the backward."""
    backend = _backend.resolve(device, name)
    return _backend.implementation(backend, name), torch.tensor(_backend.BACKENDS.index(backend), dtype=torch.int8)


def _recorded(name: str, backend: torch.Tensor):
    """The function ``name`` of the backend a forward recorded in ``backend`` (0-dim int8)."""
    return _backend.implementation(_backend.BACKENDS[int(backend)], name)


def _register(name, fn):
    torch.library.impl(f"frkd::{name}", ("CPU", "CUDA"), fn)


def _prototype_pool_forward(feat, labels, num_classes, ignore_index=255):
    check_prototype_pool(feat, labels, num_classes, ignore_index)
    pool, backend = _resolved("prototype_pool", feat.device)
    protos, counts = pool(feat, labels, num_classes, ignore_index)
    return protos, counts, backend


def _prototype_pool_backward(grad_protos, labels, counts, feat, ignore_index, backend):
    return _recorded("prototype_pool_backward", backend)(grad_protos, labels, counts, feat, ignore_index)


def _class_distance_maps_forward(feat, labels, protos, counts, ignore_index=255, eps=1e-8):
    check_class_distance_maps(feat, labels, protos, counts, ignore_index, eps)
    maps, backend = _resolved("class_distance_maps", feat.device)
    intra, inter, inter_class = maps(feat, labels, protos, counts, ignore_index, eps)
    return intra, inter, inter_class, backend


def _class_distance_maps_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                  ignore_index, eps, need_feat, need_protos, backend):
    return _recorded("class_distance_maps_backward", backend)(
        grad_intra, grad_inter, feat, labels, protos, counts, inter_class, ignore_index, eps, need_feat, need_protos)


def _masked_feature_mse_forward(student, teacher, weight):
    check_masked_feature_mse(student, teacher, weight)
    mse, backend = _resolved("masked_feature_mse", student.device)
    return mse(student, teacher, weight), backend


def _masked_feature_mse_backward(grad_loss, student, teacher, weight, need_student, need_teacher, backend):
    return _recorded("masked_feature_mse_backward", backend)(
        grad_loss, student, teacher, weight, need_student, need_teacher)


def _teacher_entropy(logits, temperature=1.0):
    check_teacher_entropy(logits, temperature)
    return _backend.implementation(_backend.resolve(logits.device, "teacher_entropy"), "teacher_entropy")(
        logits, temperature)


_register("prototype_pool_forward", _prototype_pool_forward)
_register("prototype_pool_backward", _prototype_pool_backward)
_register("class_distance_maps_forward", _class_distance_maps_forward)
_register("class_distance_maps_backward", _class_distance_maps_backward)
_register("masked_feature_mse_forward", _masked_feature_mse_forward)
_register("masked_feature_mse_backward", _masked_feature_mse_backward)
_register("teacher_entropy", _teacher_entropy)


# --- public differentiable ops: the private forward without its extra outputs -----------------

@torch.library.impl("frkd::prototype_pool", "CompositeImplicitAutograd")
def _prototype_pool(feat, labels, num_classes, ignore_index=255):
    protos, counts, _ = torch.ops.frkd.prototype_pool_forward(feat, labels, num_classes, ignore_index)
    return protos, counts


@torch.library.impl("frkd::class_distance_maps", "CompositeImplicitAutograd")
def _class_distance_maps(feat, labels, protos, counts, ignore_index=255, eps=1e-8):
    intra, inter, _, _ = torch.ops.frkd.class_distance_maps_forward(feat, labels, protos, counts, ignore_index, eps)
    return intra, inter


@torch.library.impl("frkd::masked_feature_mse", "CompositeImplicitAutograd")
def _masked_feature_mse(student, teacher, weight):
    loss, _ = torch.ops.frkd.masked_feature_mse_forward(student, teacher, weight)
    return loss


# --- fake kernels -----------------------------------------------------------------------------

def _stat_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _empty_or_like(t, needed):
    return torch.empty_like(t) if needed else t.new_empty(0)


def _fake_backend():
    """The fake of the backend tensor the real forwards return: 0-dim int8 on the CPU."""
    return torch.empty((), dtype=torch.int8, device="cpu")


@torch.library.register_fake("frkd::prototype_pool_forward")
def _(feat, labels, num_classes, ignore_index=255):
    check_prototype_pool(feat, labels, num_classes, ignore_index)
    dt = _stat_dtype(feat)
    B, C = feat.shape[:2]
    return (feat.new_empty(B, num_classes, C, dtype=dt), feat.new_empty(B, num_classes, dtype=dt),
            _fake_backend())


@torch.library.register_fake("frkd::prototype_pool_backward")
def _(grad_protos, labels, counts, feat, ignore_index, backend):
    return torch.empty_like(feat)


@torch.library.register_fake("frkd::class_distance_maps_forward")
def _(feat, labels, protos, counts, ignore_index=255, eps=1e-8):
    check_class_distance_maps(feat, labels, protos, counts, ignore_index, eps)
    dt = _stat_dtype(feat, protos)
    B, _, H, W = feat.shape
    return (feat.new_empty(B, H, W, dtype=dt), feat.new_empty(B, H, W, dtype=dt),
            feat.new_empty(B, H, W, dtype=torch.int32), _fake_backend())


@torch.library.register_fake("frkd::class_distance_maps_backward")
def _(grad_intra, grad_inter, feat, labels, protos, counts, inter_class, ignore_index, eps,
      need_feat, need_protos, backend):
    return _empty_or_like(feat, need_feat), _empty_or_like(protos, need_protos)


@torch.library.register_fake("frkd::masked_feature_mse_forward")
def _(student, teacher, weight):
    check_masked_feature_mse(student, teacher, weight)
    return student.new_empty((), dtype=_stat_dtype(student, teacher, weight)), _fake_backend()


@torch.library.register_fake("frkd::masked_feature_mse_backward")
def _(grad_loss, student, teacher, weight, need_student, need_teacher, backend):
    return _empty_or_like(student, need_student), _empty_or_like(teacher, need_teacher)


@torch.library.register_fake("frkd::teacher_entropy")
def _(logits, temperature=1.0):
    check_teacher_entropy(logits, temperature)
    B, _, H, W = logits.shape
    return logits.new_empty(B, H, W, dtype=_stat_dtype(logits)), logits.new_empty(B, H, W, dtype=torch.int64)


# --- autograd (on the private forwards; the backend tensor goes to the backward op) -------------

def _setup_prototype_pool(ctx, inputs, output):
    feat, labels, _, ignore_index = inputs
    _, counts, backend = output
    ctx.mark_non_differentiable(counts, backend)
    ctx.save_for_backward(labels, counts, feat, backend)
    ctx.ignore_index = ignore_index


def _backward_prototype_pool(ctx, grad_protos, grad_counts, grad_backend):
    labels, counts, feat, backend = ctx.saved_tensors
    grad_feat = None
    if ctx.needs_input_grad[0]:
        grad_feat = torch.ops.frkd.prototype_pool_backward(
            grad_protos.contiguous(), labels, counts, feat, ctx.ignore_index, backend)
    return grad_feat, None, None, None


def _setup_class_distance_maps(ctx, inputs, output):
    feat, labels, protos, counts, ignore_index, eps = inputs
    _, _, inter_class, backend = output
    ctx.mark_non_differentiable(inter_class, backend)
    ctx.save_for_backward(feat, labels, protos, counts, inter_class, backend)
    ctx.ignore_index, ctx.eps = ignore_index, eps


def _backward_class_distance_maps(ctx, grad_intra, grad_inter, grad_class, grad_backend):
    feat, labels, protos, counts, inter_class, backend = ctx.saved_tensors
    need_feat, need_protos = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    if not (need_feat or need_protos):
        return None, None, None, None, None, None
    grad_feat, grad_protos = torch.ops.frkd.class_distance_maps_backward(
        grad_intra.contiguous(), grad_inter.contiguous(), feat, labels, protos, counts, inter_class,
        ctx.ignore_index, ctx.eps, need_feat, need_protos, backend)
    return (grad_feat if need_feat else None, None, grad_protos if need_protos else None, None, None, None)


def _setup_masked_feature_mse(ctx, inputs, output):
    student, teacher, weight = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(student, teacher, weight, output[1])


def _backward_masked_feature_mse(ctx, grad_loss, grad_backend):
    student, teacher, weight, backend = ctx.saved_tensors
    need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_student or need_teacher):
        return None, None, None
    grad_student, grad_teacher = torch.ops.frkd.masked_feature_mse_backward(
        grad_loss, student, teacher, weight, need_student, need_teacher, backend)
    return grad_student if need_student else None, grad_teacher if need_teacher else None, None


def _setup_teacher_entropy(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _backward_teacher_entropy(ctx, grad_entropy, grad_pred):
    raise RuntimeError("frkd.teacher_entropy is teacher-only and has no backward; call it on detached logits")


def _no_double_backward(op):
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"frkd.{op} does not support double backward (create_graph=True through it)")

    torch.library.register_autograd(f"frkd::{op}", backward, setup_context=setup)


torch.library.register_autograd("frkd::prototype_pool_forward", _backward_prototype_pool,
                                setup_context=_setup_prototype_pool)
torch.library.register_autograd("frkd::class_distance_maps_forward", _backward_class_distance_maps,
                                setup_context=_setup_class_distance_maps)
torch.library.register_autograd("frkd::masked_feature_mse_forward", _backward_masked_feature_mse,
                                setup_context=_setup_masked_feature_mse)
torch.library.register_autograd("frkd::teacher_entropy", _backward_teacher_entropy, setup_context=_setup_teacher_entropy)
for _op in ("prototype_pool_backward", "class_distance_maps_backward", "masked_feature_mse_backward"):
    _no_double_backward(_op)
