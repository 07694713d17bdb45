"""masked_feature_mse: one-pass forward (per-program partial sums, then a fixed-order sum) and backward."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block, check_dtypes, copy_back, on_device, output_view, pixel_view

MAX_BLOCK_P = 128
MAX_BLOCK_C = 64
NUM_WARPS = 8


@triton.jit
def _mse_forward_kernel(
    student_ptr,   # B×C×N, strides (stride_sb, stride_sc, stride_sp)
    teacher_ptr,   # B×C×N, strides (stride_tb, stride_tc, stride_tp)
    weight_ptr,    # B×N, strides (stride_wb, stride_wp)
    partial_ptr,   # B×P float32 out: one partial sum per program (P pixel blocks), contiguous
    N, C, inv_c,
    stride_sb, stride_sc, stride_sp, stride_tb, stride_tc, stride_tp, stride_wb, stride_wp,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < N
    w = tl.load(weight_ptr + b * stride_wb + offs_p * stride_wp, mask=mask_p, other=0.0).to(tl.float32)
    squares = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask = mask_p[:, None] & (offs_c < C)[None, :]
        s = tl.load(student_ptr + b * stride_sb + offs_c[None, :] * stride_sc + offs_p[:, None] * stride_sp,
                    mask=mask, other=0.0).to(tl.float32)
        t = tl.load(teacher_ptr + b * stride_tb + offs_c[None, :] * stride_tc + offs_p[:, None] * stride_tp,
                    mask=mask, other=0.0).to(tl.float32)
        d = s - t
        squares += tl.sum(d * d, axis=1)
    tl.store(partial_ptr + b * tl.num_programs(0) + pid_p, tl.sum(w * squares, axis=0) * inv_c)


@triton.jit
def _mse_backward_kernel(
    grad_loss_ptr,      # 0-dim float gradient of the loss
    student_ptr,        # B×C×N, strides (stride_sb, stride_sc, stride_sp)
    teacher_ptr,        # B×C×N, strides (stride_tb, stride_tc, stride_tp)
    weight_ptr,         # B×N, strides (stride_wb, stride_wp)
    grad_student_ptr,   # B×C×N out like student, strides (stride_gsb, stride_gsc, stride_gsp)
    grad_teacher_ptr,   # B×C×N out like teacher, strides (stride_gtb, stride_gtc, stride_gtp)
    N, C, two_over_c,
    stride_sb, stride_sc, stride_sp, stride_tb, stride_tc, stride_tp, stride_wb, stride_wp,
    stride_gsb, stride_gsc, stride_gsp, stride_gtb, stride_gtc, stride_gtp,
    NEED_STUDENT: tl.constexpr, NEED_TEACHER: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_student = 2/C · grad_loss · w · (s - t); grad_teacher = -grad_student."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N
    mask = mask_p[:, None] & (offs_c < C)[None, :]
    scale = tl.load(grad_loss_ptr).to(tl.float32) * two_over_c
    w = tl.load(weight_ptr + b * stride_wb + offs_p * stride_wp, mask=mask_p, other=0.0).to(tl.float32)
    s = tl.load(student_ptr + b * stride_sb + offs_c[None, :] * stride_sc + offs_p[:, None] * stride_sp,
                mask=mask, other=0.0).to(tl.float32)
    t = tl.load(teacher_ptr + b * stride_tb + offs_c[None, :] * stride_tc + offs_p[:, None] * stride_tp,
                mask=mask, other=0.0).to(tl.float32)
    g = (scale * w)[:, None] * (s - t)
    if NEED_STUDENT:
        out = grad_student_ptr + b * stride_gsb + offs_c[None, :] * stride_gsc + offs_p[:, None] * stride_gsp
        tl.store(out, g.to(grad_student_ptr.dtype.element_ty), mask=mask)
    if NEED_TEACHER:
        out = grad_teacher_ptr + b * stride_gtb + offs_c[None, :] * stride_gtc + offs_p[:, None] * stride_gtp
        tl.store(out, (-g).to(grad_teacher_ptr.dtype.element_ty), mask=mask)


def _blocks(N: int, C: int) -> tuple[int, int]:
    return block(N, 16, MAX_BLOCK_P), block(C, 16, MAX_BLOCK_C)


def masked_feature_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """student, teacher B×C×H×W, weight B×H×W -> Σ_{b,p} w·Σ_c (s - t)^2 / C as a 0-dim float32."""
    check_dtypes("masked_feature_mse", student=student, teacher=teacher, weight=weight)
    B, C, H, W = student.shape
    N = H * W
    if B * N * C == 0:
        return student.new_zeros((), dtype=torch.float32)
    student, *s_strides = pixel_view(student)
    teacher, *t_strides = pixel_view(teacher)
    weight, *w_strides = pixel_view(weight)
    block_p, block_c = _blocks(N, C)
    num_p = triton.cdiv(N, block_p)
    partial = student.new_empty((B, num_p), dtype=torch.float32)
    with on_device(student.device):
        _mse_forward_kernel[(num_p, B)](
            student, teacher, weight, partial, N, C, 1.0 / C, *s_strides, *t_strides, *w_strides,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
        )
    return partial.sum()


def masked_feature_mse_backward(grad_loss, student, teacher, weight, need_student: bool, need_teacher: bool):
    """-> (grad_student like student or empty, grad_teacher like teacher or empty)."""
    check_dtypes("masked_feature_mse_backward", grad_loss=grad_loss, student=student, teacher=teacher, weight=weight)
    grad_student = torch.empty_like(student) if need_student else student.new_empty(0)
    grad_teacher = torch.empty_like(teacher) if need_teacher else teacher.new_empty(0)
    B, C, H, W = student.shape
    N = H * W
    if B * N * C == 0 or not (need_student or need_teacher):
        return grad_student.zero_(), grad_teacher.zero_()
    student, *s_strides = pixel_view(student)
    teacher, *t_strides = pixel_view(teacher)
    weight, *w_strides = pixel_view(weight)
    # an output not asked for gets an input as a placeholder pointer: the kernel never writes it
    gs_buffer, *gs_strides = output_view(grad_student) if need_student else (student, *s_strides)
    gt_buffer, *gt_strides = output_view(grad_teacher) if need_teacher else (teacher, *t_strides)
    block_p, block_c = _blocks(N, C)
    grid = (triton.cdiv(N, block_p), triton.cdiv(C, block_c), B)
    with on_device(student.device):
        _mse_backward_kernel[grid](
            grad_loss, student, teacher, weight, gs_buffer, gt_buffer, N, C, 2.0 / C,
            *s_strides, *t_strides, *w_strides, *gs_strides, *gt_strides,
            NEED_STUDENT=need_student, NEED_TEACHER=need_teacher,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
        )
    if need_student:
        copy_back(grad_student, gs_buffer)
    if need_teacher:
        copy_back(grad_teacher, gt_buffer)
    return grad_student, grad_teacher
