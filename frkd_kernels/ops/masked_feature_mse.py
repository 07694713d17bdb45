"""frkd::masked_feature_mse: pixel-weighted feature MSE (docs/ops.md).

The whole op on the Python side: schema, input checks, the pure-PyTorch reference (the ``torch``
backend) and its backward, the call into the compiled kernels (``cpu``/``cuda`` backends), the
routed private forward/backward, fake kernels and autograd. Its kernels: triton_ops/
masked_feature_mse.py, csrc/cpu/masked_feature_mse.cpp, csrc/cuda/masked_feature_mse.cu and
csrc/cuda/bind_masked_feature_mse.cpp.

Shapes: student, teacher B×C×H×W (dtypes may differ), weight B×H×W.
"""
from __future__ import annotations

import torch

from .. import _library as lib

OP = "masked_feature_mse"
SCHEMA = "(Tensor student, Tensor teacher, Tensor weight) -> Tensor"
BACKWARD_SCHEMA = ("(Tensor grad_loss, Tensor student, Tensor teacher, Tensor weight, bool need_student, "
                   "bool need_teacher, Tensor backend) -> (Tensor, Tensor)")
KERNELS = {  # the compiled kernels write their out-arguments (allocated in ``compiled*`` below)
    OP: "(Tensor student, Tensor teacher, Tensor weight, Tensor(a!) loss) -> ()",
    OP + "_backward": ("(Tensor grad_loss, Tensor student, Tensor teacher, Tensor weight, bool need_student, "
                       "bool need_teacher, Tensor(a!) grad_student, Tensor(b!) grad_teacher) -> ()"),
}

lib.define(OP, SCHEMA)
lib.define(OP + "_forward", lib.forward_schema(SCHEMA, "Tensor backend"))
lib.define(OP + "_backward", BACKWARD_SCHEMA)
lib.define_kernels(KERNELS)


def masked_feature_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor):
    """Σ_{b,p} weight[b,p]·Σ_c (student − teacher)² / C as a float32 scalar.

    student, teacher B×C×H×W (dtypes may differ), weight B×H×W. Differentiable w.r.t. both features.
    """
    return torch.ops.frkd.masked_feature_mse(student, teacher, weight)


def check(student, teacher, weight) -> None:
    lib.check_feat(OP, "student", student)
    lib.check_feat(OP, "teacher", teacher)
    if student.shape != teacher.shape:
        raise ValueError(f"frkd.{OP}: teacher must have the student's shape {tuple(student.shape)}, got {tuple(teacher.shape)}")
    lib.check_tensor(OP, "weight", weight, 3, lib.FLOAT_DTYPES, "a 3-D B×H×W float tensor")
    B, _, H, W = student.shape
    if tuple(weight.shape) != (B, H, W):
        raise ValueError(f"frkd.{OP}: weight must be B×H×W = {(B, H, W)}, got {tuple(weight.shape)}")
    lib.check_same_device(OP, student=student, teacher=teacher, weight=weight)


# --- reference: the torch backend -------------------------------------------------------------

def reference(student, teacher, weight):
    """student, teacher B×C×H×W, weight B×H×W -> Σ_{b,p} w·Σ_c (s - t)^2 / C (0-dim)."""
    dt = lib.stat_dtype(student, teacher, weight)
    diff = student.to(dt) - teacher.to(dt)
    return (weight.to(dt)[:, None] * diff * diff).sum() / student.shape[1]


def reference_backward(grad_loss, student, teacher, weight, need_student: bool, need_teacher: bool):
    """-> (grad_student like student or empty, grad_teacher like teacher or empty)."""
    dt = lib.stat_dtype(student, teacher, weight)
    g = (2.0 / student.shape[1]) * grad_loss.to(dt) * weight.to(dt)[:, None] * (student.to(dt) - teacher.to(dt))
    grad_student, grad_teacher = student.new_empty(0), teacher.new_empty(0)
    if need_student:
        grad_student = torch.empty_like(student)
        grad_student.copy_(g)
    if need_teacher:
        grad_teacher = torch.empty_like(teacher)
        grad_teacher.copy_(-g)
    return grad_student, grad_teacher


# --- the compiled kernels (cpu and cuda backends) ---------------------------------------------

def compiled(backend, student, teacher, weight):
    """Run ``backend``'s (a ``_compiled.CompiledBackend``) forward kernel on an output allocated here."""
    dt = lib.stat_dtype(student, teacher, weight)
    loss = student.new_empty((), dtype=dt)
    backend.run(OP, (student, teacher, backend.as_stat(weight, dt)), (loss,))
    return loss


def compiled_backward(backend, grad_loss, student, teacher, weight, need_student: bool, need_teacher: bool):
    dt = lib.stat_dtype(student, teacher, weight)
    grad_student = lib.empty_or_like(student, need_student)
    grad_teacher = lib.empty_or_like(teacher, need_teacher)
    backend.run(OP + "_backward",
                (backend.as_stat(grad_loss, dt).reshape(()), student, teacher, backend.as_stat(weight, dt),
                 need_student, need_teacher),
                (grad_student, grad_teacher))
    return grad_student, grad_teacher


# --- routing, fakes, autograd -----------------------------------------------------------------

def _forward(student, teacher, weight):
    check(student, teacher, weight)
    mse, backend = lib.resolved(OP, student.device)
    return mse(student, teacher, weight), backend


def _backward_op(grad_loss, student, teacher, weight, need_student, need_teacher, backend):
    return lib.recorded(OP + "_backward", backend)(grad_loss, student, teacher, weight, need_student, need_teacher)


lib.register_routed(OP + "_forward", _forward)
lib.register_routed(OP + "_backward", _backward_op)


@torch.library.impl(f"frkd::{OP}", "CompositeImplicitAutograd")
def _public(student, teacher, weight):
    loss, _ = torch.ops.frkd.masked_feature_mse_forward(student, teacher, weight)
    return loss


@torch.library.register_fake(f"frkd::{OP}_forward")
def _fake_forward(student, teacher, weight):
    check(student, teacher, weight)
    return student.new_empty((), dtype=lib.stat_dtype(student, teacher, weight)), lib.fake_backend()


@torch.library.register_fake(f"frkd::{OP}_backward")
def _fake_backward(grad_loss, student, teacher, weight, need_student, need_teacher, backend):
    return lib.empty_or_like(student, need_student), lib.empty_or_like(teacher, need_teacher)


def _setup_context(ctx, inputs, output):
    student, teacher, weight = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(student, teacher, weight, output[1])


def _autograd_backward(ctx, grad_loss, grad_backend):
    student, teacher, weight, backend = ctx.saved_tensors
    need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_student or need_teacher):
        return None, None, None
    grad_student, grad_teacher = torch.ops.frkd.masked_feature_mse_backward(
        grad_loss, student, teacher, weight, need_student, need_teacher, backend)
    return grad_student if need_student else None, grad_teacher if need_teacher else None, None


torch.library.register_autograd(f"frkd::{OP}_forward", _autograd_backward, setup_context=_setup_context)
lib.no_double_backward(OP + "_backward")
