"""Run the CUDA backend's kernels on CPU under a host emulation of CUDA and compare with tests/naive.py.

No GPU needed. The script copies csrc/cuda/* to a temp dir, rewrites each launch
``kernel<<<grid, block, smem, stream>>>(args)`` as ``emu::launch(...)`` (stub/emu.h), and registers
the binding's kernels under ``frkd_emu::_cuda_*`` for CPU tensors (schemas generated from the op
slices' ``KERNELS``, as for ``frkd::``). It builds them with torch.utils.cpp_extension, which takes
a few minutes. Then it runs a ``CompiledBackend("cuda", kernels=torch.ops.frkd_emu)`` (the
backend object the ``cuda`` backend is, over the emulated kernels) against the naive oracle with NaN-poisoned outputs, over dtypes, layouts, label types, both reduction paths
(atomic and deterministic) and the tiling regimes (several channel chunks, class tiles and pixel
splits, and partial sums in global memory for large K).

What it cannot check: real GPU scheduling and memory spaces, launch limits, the device half/bf16
intrinsics, and performance. Those still need a GPU run of the op test suite.

Usage: python tests/cuda_emulation/check_emulated.py   (exit status 1 on any mismatch)
Set FRKD_EMU_BUILD_DIR to keep and reuse the build.
"""
from __future__ import annotations

import glob
import itertools
import os
import re
import sys
import tempfile

import torch
from torch.utils.cpp_extension import load

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CUDA_SRC = os.path.join(ROOT, "csrc", "cuda")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import naive  # noqa: E402
from frkd_kernels import _library  # noqa: E402
from frkd_kernels._compiled import CompiledBackend  # noqa: E402

cb: CompiledBackend  # the cuda backend over the emulated kernels, made in main()

LAUNCH = re.compile(r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", re.S)
CONFIG_SPLIT = re.compile(r",(?![^(<]*[)>])")


def _emulated_launch(m: re.Match) -> str:
    grid, block, smem = (part.strip() for part in CONFIG_SPLIT.split(m.group(2))[:3])
    return f"emu::launch({grid}, {block}, {smem}, [&] {{ {m.group(1)}({m.group(3)}); }});"


def _rewrite(name: str, text: str) -> str:
    text = text.replace("extern __shared__ __align__(16) unsigned char smem_raw[];",
                        "unsigned char* smem_raw = emu::dynamic_smem();")
    text = LAUNCH.sub(_emulated_launch, text)
    if name == "tensor_views.h":  # host tensors, no device guard or stream
        text = text.replace("#include <c10/cuda/CUDAGuard.h>\n", "").replace("#include <c10/cuda/CUDAStream.h>\n", "")
        text = text.replace("t.is_cuda() && ", "").replace("c10::cuda::getCurrentCUDAStream().stream()", "nullptr")
        text = text.replace("namespace frkd::cuda {", "namespace c10::cuda {\nstruct CUDAGuard {\n  explicit CUDAGuard"
                            "(c10::Device) {}\n};\n}  // namespace c10::cuda\nnamespace frkd::cuda {", 1)
    text = text.replace("TORCH_LIBRARY_IMPL(frkd, CUDA, m)", "TORCH_LIBRARY_IMPL(frkd_emu, CPU, m)")
    if "<<<" in text:
        sys.exit(f"check_emulated: a launch in {name} was not rewritten")
    return text


def build(build_dir: str) -> None:
    out = os.path.join(build_dir, "src", "cuda")
    os.makedirs(out, exist_ok=True)
    sources = []
    for path in sorted(glob.glob(os.path.join(CUDA_SRC, "*.*"))):
        name = os.path.basename(path)
        target = os.path.join(out, "kernels_" + name[:-3] + ".cpp" if name.endswith(".cu") else name)
        with open(path) as f:
            text = _rewrite(name, f.read())
        if not os.path.exists(target) or open(target).read() != text:  # keep ninja's timestamps when unchanged
            with open(target, "w") as f:
                f.write(text)
        if target.endswith(".cpp"):
            sources.append(target)
    stub = os.path.join(HERE, "stub")
    load(name="frkd_cuda_emulated", sources=sources, is_python_module=False,
         extra_include_paths=[stub, os.path.join(build_dir, "src"),
                             os.path.join(ROOT, "csrc")],  # bind_relation_kl.cpp includes cpu/relation_kl.h
         extra_cflags=["-std=c++20", "-O1", "-include", os.path.join(stub, "emu.h"), "-Wno-unknown-pragmas"],
         extra_ldflags=["-lpthread"], build_directory=build_dir)


# --- comparisons ------------------------------------------------------------------------------

TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 2e-2}
failures: list[str] = []


def expect_close(what, got, want, tol):
    if got.shape != want.shape:
        failures.append(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    elif not torch.allclose(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=False):
        failures.append(f"{what}: max error {(got.double() - want.double()).abs().max().item():.3g}")


def expect(what, ok):
    if not ok:
        failures.append(what)


def feature(B, C, H, W, dtype, layout):
    if layout == "channels_last":
        return torch.randn(B, C, H, W).to(dtype).to(memory_format=torch.channels_last)
    if layout == "sliced":
        return torch.randn(B, C + 3, H, W + 2).to(dtype)[:, 1:C + 1, :, 1:W + 1]
    return torch.randn(B, C, H, W).to(dtype)


def labels(B, H, W, K, dtype):
    y = torch.randint(0, K, (B, H, W))
    y[torch.rand(B, H, W) < 0.2] = 255
    if dtype != torch.uint8:  # out-of-range labels count as ignored
        y[torch.rand(B, H, W) < 0.1] = -3
        y[torch.rand(B, H, W) < 0.05] = K + 7
    return y.to(dtype)


def deterministic(flag):
    torch.use_deterministic_algorithms(flag)


def check_pool(B, C, H, W, K, dtype, layout, ldt, det, ignore_index=255):
    feat, y = feature(B, C, H, W, dtype, layout), labels(B, H, W, K, ldt)
    what = f"prototype_pool B{B} C{C} {H}x{W} K{K} {dtype} {layout} {ldt} det={det}"
    deterministic(det)
    protos, counts = cb.prototype_pool(feat, y, K, ignore_index)
    deterministic(False)
    r_protos, r_counts = naive.prototype_pool(feat, y, K, ignore_index)
    expect_close(what + " protos", protos, r_protos, 10 * TOL[dtype])
    expect_close(what + " counts", counts, r_counts, 0)
    expect(what + " absent classes not exactly 0", bool((protos[r_counts == 0] == 0).all()))
    grad = torch.randn(B, K, C, dtype=protos.dtype)
    g = cb.prototype_pool_backward(grad, y, counts, feat, ignore_index)
    expect_close(what + " backward", g, naive.prototype_pool_grad(grad, feat, y, K, ignore_index), TOL[dtype])
    expect(what + " backward layout", g.dtype == feat.dtype and g.stride() == torch.empty_like(feat).stride())


def check_maps(B, C, H, W, K, dtype, layout, ldt, det, protos_dtype=None, ignore_index=255):
    feat, y = feature(B, C, H, W, dtype, layout), labels(B, H, W, K, ldt)
    if H * W:
        feat[0, :, 0, 0] = 0  # cos = 0 to every class: ties go to the lowest k, no gradient
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    protos, counts = (t.to(stat) for t in naive.prototype_pool(feat, y, K, ignore_index))
    protos = (protos + 0.3 * torch.randn_like(protos) * (counts[..., None] > 0)).to(protos_dtype or stat)
    what = f"class_distance_maps B{B} C{C} {H}x{W} K{K} {dtype}/{protos.dtype} {layout} {ldt} det={det}"
    tol = 10 * max(TOL[dtype], TOL[protos.dtype])
    intra, inter, arg = cb.class_distance_maps(feat, y, protos, counts, ignore_index, 1e-8)
    r_intra, r_inter, r_arg = naive.class_distance_maps(feat, y, protos, counts, ignore_index, 1e-8)
    expect_close(what + " intra", intra, r_intra, tol)
    expect_close(what + " inter", inter, r_inter, tol)
    if dtype in (torch.float32, torch.float64):  # 16-bit inputs may round near-ties differently
        expect(what + " inter_class", torch.equal(arg.long(), r_arg))
    g_intra, g_inter = torch.randn_like(intra), torch.randn_like(inter)
    r_gf, r_gp = naive.class_distance_maps_grad(g_intra, g_inter, feat, y, protos, counts, ignore_index, 1e-8)
    for need_feat, need_protos in ((True, True), (True, False), (False, True)):
        deterministic(det)
        gf, gp = cb.class_distance_maps_backward(g_intra, g_inter, feat, y, protos, counts, r_arg.to(torch.int32),
                                                 ignore_index, 1e-8, need_feat, need_protos)
        deterministic(False)
        tag = f"{what} backward need=({need_feat}, {need_protos})"
        if need_feat:
            expect_close(tag + " grad_feat", gf, r_gf, 2 * tol)
            expect(tag + " grad_feat dtype", gf.dtype == feat.dtype)
        if need_protos:
            expect_close(tag + " grad_protos", gp, r_gp, 2 * tol)
            expect(tag + " grad_protos dtype", gp.dtype == protos.dtype)
        expect(tag + " unneeded gradients empty", (need_feat or gf.numel() == 0) and (need_protos or gp.numel() == 0))


def check_mse(B, C, H, W, s_dtype, t_dtype, w_dtype, layout):
    s, t = feature(B, C, H, W, s_dtype, layout), feature(B, C, H, W, t_dtype, "contiguous")
    w = torch.rand(B, H, W, dtype=w_dtype)
    what = f"masked_feature_mse B{B} C{C} {H}x{W} {s_dtype}/{t_dtype}/{w_dtype} {layout}"
    tol = 10 * max(TOL[s_dtype], TOL[t_dtype])
    loss, r_loss = cb.masked_feature_mse(s, t, w), naive.masked_feature_mse(s, t, w)
    expect_close(what + " loss", loss, r_loss, tol)
    expect(what + " loss dtype", loss.dtype == _library.stat_dtype(s, t, w))
    g = torch.tensor(0.7, dtype=loss.dtype)
    r_gs, r_gt = naive.masked_feature_mse_grad(0.7, s, t, w)
    for need_s, need_t in ((True, True), (True, False), (False, True)):
        gs, gt = cb.masked_feature_mse_backward(g, s, t, w, need_s, need_t)
        if need_s:
            expect_close(what + " grad_student", gs, r_gs, tol)
        if need_t:
            expect_close(what + " grad_teacher", gt, r_gt, tol)


def check_entropy(B, K, H, W, dtype, layout, temperature):
    z = feature(B, K, H, W, dtype, layout) * 4
    if K > 1 and H * W > 2:
        z[0, :, 0, 0] = 0  # a tie: pred = 0
        z[0, 0, 0, 1] = 1e4  # a huge gap: entropy 0, no overflow
    what = f"teacher_entropy B{B} K{K} {H}x{W} {dtype} {layout} T={temperature}"
    entropy, pred = cb.teacher_entropy(z, temperature)
    r_entropy, r_pred = naive.teacher_entropy(z, temperature)
    expect_close(what + " entropy", entropy, r_entropy, 10 * max(TOL[dtype], 1e-5))
    expect(what + " pred", torch.equal(pred, r_pred))


def check_maps_nan(B, C, H, W, K):
    """docs/ops.md arg-max rule: a NaN cosine (an inf prototype entry) counts as the largest."""
    feat, y = feature(B, C, H, W, torch.float32, "contiguous"), labels(B, H, W, K, torch.int64)
    protos, counts = (t.float() for t in naive.prototype_pool(feat, y, K, 255))
    counts = torch.ones_like(counts)
    protos[:, 2, 0] = float("inf")
    _, inter, arg = cb.class_distance_maps(feat, y, protos, counts, 255, 1e-8)
    _, r_inter, r_arg = naive.class_distance_maps(feat, y, protos, counts, 255, 1e-8)
    expect("class_distance_maps NaN rule inter_class", torch.equal(arg.long(), r_arg))
    expect("class_distance_maps NaN rule inter", torch.equal(inter.isnan(), r_inter.isnan()))


def run_checks():
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    layouts = ("contiguous", "channels_last", "sliced")
    for dtype, layout, ldt, det in itertools.product(dtypes, layouts, (torch.uint8, torch.int32, torch.int64),
                                                     (False, True)):
        check_pool(2, 5, 3, 7, 4, dtype, layout, ldt, det)
    for sms, det in itertools.product(("1", "64"), (False, True)):  # one split per image / many splits
        os.environ["EMU_SMS"] = sms
        check_pool(2, 130, 9, 11, 3, torch.float32, "contiguous", torch.int64, det)  # 2 chunks of 128 channels
        check_pool(1, 40, 20, 20, 5, torch.float32, "channels_last", torch.int32, det)  # 64-channel blocks
        check_pool(1, 3, 4, 5, 400, torch.float32, "contiguous", torch.int64, det)  # partial sums in global memory
        check_pool(2, 33, 5, 5, 200, torch.float64, "sliced", torch.int64, det)
        check_pool(2, 4, 0, 3, 3, torch.float32, "contiguous", torch.int64, det)  # no pixels
    os.environ["EMU_SMS"] = "4"
    for dtype, layout, ldt in itertools.product(dtypes, layouts, (torch.uint8, torch.int64)):
        check_maps(2, 6, 3, 5, 4, dtype, layout, ldt, False)
    check_maps(2, 6, 3, 5, 4, torch.bfloat16, "contiguous", torch.int32, False, protos_dtype=torch.float32)
    check_maps(2, 6, 3, 5, 4, torch.float32, "contiguous", torch.int32, False, protos_dtype=torch.float64)
    check_maps(2, 6, 3, 5, 4, torch.float32, "channels_last", torch.int32, True, protos_dtype=torch.bfloat16)
    for det in (False, True):
        check_maps(1, 70, 9, 9, 37, torch.float32, "contiguous", torch.int64, det)  # 2 class tiles, 3 chunks
        check_maps(1, 3, 4, 4, 400, torch.float32, "channels_last", torch.int64, det)
        check_maps(2, 5, 0, 3, 3, torch.float32, "contiguous", torch.int64, det)
    for ignore_index in (0, -1):
        check_pool(2, 6, 4, 5, 4, torch.float32, "contiguous", torch.int64, False, ignore_index=ignore_index)
        check_maps(2, 6, 4, 5, 4, torch.float32, "contiguous", torch.int64, True, ignore_index=ignore_index)
    check_maps_nan(2, 6, 3, 5, 5)
    for s_dtype, t_dtype in itertools.product(dtypes, repeat=2):
        check_mse(2, 5, 3, 4, s_dtype, t_dtype, torch.float32, "contiguous")
    for layout in ("channels_last", "sliced"):
        check_mse(2, 37, 5, 7, torch.float32, torch.bfloat16, torch.float32, layout)
    check_mse(2, 5, 3, 4, torch.float32, torch.float32, torch.float64, "contiguous")
    check_mse(3, 70, 11, 9, torch.float32, torch.float32, torch.float32, "contiguous")  # several blocks and chunks
    check_mse(2, 3, 0, 4, torch.float32, torch.float32, torch.float32, "contiguous")
    for dtype, layout, K in itertools.product(dtypes, layouts, (1, 2, 7)):
        check_entropy(2, K, 3, 5, dtype, layout, 1.0)
    for temperature in (0.5, 4.0):
        check_entropy(2, 19, 3, 5, torch.float32, "contiguous", temperature)
    # the deterministic path is bitwise reproducible
    os.environ["EMU_SMS"] = "64"
    feat, y = torch.randn(2, 20, 16, 16), torch.randint(0, 6, (2, 16, 16))
    deterministic(True)
    first, second = cb.prototype_pool(feat, y, 6, 255), cb.prototype_pool(feat, y, 6, 255)
    deterministic(False)
    expect("deterministic prototype_pool reproducible", all(torch.equal(a, b) for a, b in zip(first, second)))


def _poisoned(allocate):
    def wrapper(*args, **kwargs):
        t = allocate(*args, **kwargs)
        if t.numel():
            t.fill_(float("nan") if t.is_floating_point() else -12345)
        return t
    return wrapper


def main() -> int:
    build_dir = os.environ.get("FRKD_EMU_BUILD_DIR") or tempfile.mkdtemp(prefix="frkd_cuda_emu_")
    print(f"check_emulated: building the emulated CUDA kernels in {build_dir} (a few minutes)", flush=True)
    _library.define_kernels(dict(_library.KERNEL_SCHEMAS), namespace="frkd_emu", backends=("cuda",))
    build(build_dir)
    global cb
    cb = CompiledBackend("cuda", kernels=torch.ops.frkd_emu)
    torch.empty_like = _poisoned(torch.empty_like)
    torch.Tensor.new_empty = _poisoned(torch.Tensor.new_empty)
    torch.manual_seed(0)
    run_checks()
    for failure in failures:
        print("check_emulated: FAIL", failure)
    print(f"check_emulated: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
