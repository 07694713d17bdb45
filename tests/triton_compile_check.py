"""Compile every triton_ops kernel for sm_90 (H100/H200) without a GPU.

The interpreter that CI tests under accepts code the compiler rejects (typing, layouts, dot shapes),
so this script lowers each kernel, in each of its constexpr paths, all the way to a cubin.
It must run without TRITON_INTERPRET (the interpreter patches triton.language): test_triton_backend
starts it in a subprocess. Exit status 0 when every kernel compiles.
"""
from __future__ import annotations

import importlib
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)


def _module(name: str):
    return importlib.import_module(f"frkd_kernels.triton_ops.{name}")


def _compile(kernel, pointers: dict, floats=(), constexprs=None, num_warps=4):
    """Lower ``kernel`` with the pointer element types given; other arguments are i32."""
    constexprs = constexprs or {}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
        else:
            signature[name] = "fp32" if name in floats else "i32"
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET, options={"num_warps": num_warps})
    print(f"compiled {kernel.__name__} {constexprs} {pointers}", flush=True)
    return compiled


def _teacher_entropy():
    te = _module("teacher_entropy")
    for dtype in ("fp32", "bf16"):
        _compile(te._teacher_entropy_kernel, {"logits_ptr": dtype, "entropy_ptr": "fp32", "pred_ptr": "i64"},
                 ("temperature", "inv_log_k"), {"BLOCK_P": 128, "BLOCK_K": 32}, te.NUM_WARPS)


def _masked_feature_mse():
    mse = _module("masked_feature_mse")
    blocks = {"BLOCK_P": mse.MAX_BLOCK_P, "BLOCK_C": mse.MAX_BLOCK_C}
    _compile(mse._mse_forward_kernel, {"student_ptr": "bf16", "teacher_ptr": "fp32", "weight_ptr": "fp32",
                                       "partial_ptr": "fp32"}, ("inv_c",), blocks, mse.NUM_WARPS)
    for need_student, need_teacher in ((True, False), (False, True)):
        _compile(mse._mse_backward_kernel,
                 {"grad_loss_ptr": "fp32", "student_ptr": "bf16", "teacher_ptr": "fp32", "weight_ptr": "fp32",
                  "grad_student_ptr": "bf16", "grad_teacher_ptr": "fp32"}, ("two_over_c",),
                 {"NEED_STUDENT": need_student, "NEED_TEACHER": need_teacher, **blocks}, mse.NUM_WARPS)


def _prototype_pool():
    cs, pp = _module("class_sum"), _module("prototype_pool")
    for feat, labels, weighted, atomics, native in (("fp32", "i64", False, True, False), ("bf16", "u8", False, False, True),
                                                    ("fp32", "i32", True, True, False), ("bf16", "i64", True, False, False)):
        _compile(cs._class_sum_kernel, {"feat_ptr": feat, "labels_ptr": labels, "second_ptr": "i32", "weights_ptr": "fp32",
                                        "sums_ptr": "fp32", "scalars_ptr": "fp32"}, (),
                 {"WEIGHTED": weighted, "USE_ATOMICS": atomics, "NATIVE_DOT": native, "BLOCK_P": cs.BLOCK_P,
                  "BLOCK_C": cs.MAX_BLOCK_C, "BLOCK_K": 32}, cs.NUM_WARPS)
    _compile(pp._prototype_finalize_kernel, {"sums_ptr": "fp32", "partial_counts_ptr": "fp32", "protos_ptr": "fp32",
                                             "counts_ptr": "fp32"}, (), {"BLOCK_C": pp.MAX_FINALIZE_BLOCK_C})
    _compile(pp._prototype_gather_kernel, {"grad_protos_ptr": "fp32", "counts_ptr": "fp32", "labels_ptr": "u8",
                                           "grad_feat_ptr": "bf16"}, (),
             {"BLOCK_P": pp.GATHER_BLOCK_P, "BLOCK_C": pp.GATHER_MAX_BLOCK_C}, pp.GATHER_NUM_WARPS)


def _class_distance_maps():
    cdm = _module("class_distance_maps")
    for feat, split in (("fp32", False), ("bf16", True)):
        _compile(cdm._cdm_forward_kernel, {"feat_ptr": feat, "labels_ptr": "i64", "protos_ptr": "fp32", "counts_ptr": "fp32",
                                           "intra_ptr": "fp32", "inter_ptr": "fp32", "inter_class_ptr": "i32"}, ("eps",),
                 {"SPLIT_PROTOS": split, "BLOCK_P": cdm.FORWARD_BLOCK_P, "BLOCK_C": cdm.FORWARD_MAX_BLOCK_C, "BLOCK_K": 32},
                 cdm.FORWARD_NUM_WARPS)
    for need_feat, need_protos in ((True, True), (False, True)):
        _compile(cdm._cdm_backward_pixel_kernel,
                 {"grad_intra_ptr": "fp32", "grad_inter_ptr": "fp32", "feat_ptr": "bf16", "labels_ptr": "i64",
                  "protos_ptr": "fp32", "inter_class_ptr": "i32", "grad_feat_ptr": "bf16", "weights_ptr": "fp32"}, ("eps",),
                 {"NEED_FEAT": need_feat, "NEED_PROTOS": need_protos, "BLOCK_P": cdm.BACKWARD_BLOCK_P,
                  "BLOCK_C": cdm.BACKWARD_MAX_BLOCK_C}, cdm.BACKWARD_NUM_WARPS)
    _compile(cdm._cdm_protos_finalize_kernel, {"sums_ptr": "fp32", "scalars_ptr": "fp32", "protos_ptr": "fp32",
                                               "grad_ptr": "bf16"}, (), {"BLOCK_C": cdm.FINALIZE_MAX_BLOCK_C})


def _relation_kl():
    rel = _module("relation_kl")
    rows = dict.fromkeys(("qs_ptr", "qt_ptr", "ks_ptr", "kt_ptr", "lse_s_ptr", "lse_t_ptr"), "fp32")
    blocks = {"BLOCK_R": rel.BLOCK_ROWS, "BLOCK_M": rel.BLOCK_KEYS, "BLOCK_CS": rel.MAX_BLOCK_C,
              "BLOCK_CT": rel.MAX_BLOCK_C}
    _compile(rel._relation_forward_kernel, {**rows, "kl_ptr": "fp32"}, ("inv_tau",), blocks)
    for kernel in (rel._relation_grad_query_kernel, rel._relation_grad_key_kernel):
        _compile(kernel, {**rows, "scale_ptr": "fp32", "grad_ptr": "fp32"}, ("inv_tau",), {**blocks, "WIDTH_S": 128})


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("triton_compile_check: unset TRITON_INTERPRET (the interpreter patches triton.language)", file=sys.stderr)
        return 2
    for family in (_teacher_entropy, _masked_feature_mse, _prototype_pool, _class_distance_maps, _relation_kl):
        family()
    return 0


if __name__ == "__main__":
    sys.exit(main())
