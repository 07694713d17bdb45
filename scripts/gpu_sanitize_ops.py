"""Call every frkd op forward and backward on one backend, on both reduction paths, and check them.

Small enough to run under ``compute-sanitizer`` (memcheck, racecheck) in seconds:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \\
        python scripts/gpu_sanitize_ops.py --device cuda --backends cuda
    python scripts/gpu_sanitize_ops.py --device cpu --backends cpu      # the CPU dry run

For each backend, dtype and input size: the four ops forward, then a backward with fixed upstream
gradients, first on the atomic reduction path, then on the deterministic one
(``torch.use_deterministic_algorithms(True)`` switches the class sums to a fixed order, see
docs/ops.md). Checks: every output finite; the deterministic path against the float64 ``torch``
reference on the CPU; atomic vs deterministic agreement; the deterministic path bit-identical
when run twice. Prints one line per case and a summary; ``--json`` writes the results.
Exit status 0 when every case passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

# cuBLAS refuses deterministic mode without a fixed workspace; set before torch initialises CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import frkd_kernels  # noqa: E402

IGNORE_INDEX = 255
EPS = 1e-8
# (B, C, H, W, K): odd sizes that fill no block evenly, one a little over a typical tile.
SIZES = ((2, 37, 13, 19, 7), (1, 130, 9, 70, 21))
# Largest ‖got − want‖ / ‖want‖ per result: vs the float64 reference, and atomic vs deterministic
# (summation order only). bfloat16 gradients are rounded to bfloat16 (relative step 2⁻⁸).
REFERENCE_TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2}
AGREEMENT_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def make_inputs(B: int, C: int, H: int, W: int, K: int, *, dtype, device, seed: int) -> dict:
    """Random features/logits and labels with ignored (255), out-of-range (-1, K) pixels and one
    class absent from image 0, so every branch of the kernels is taken."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (B, H, W), generator=g)
    drop = torch.rand(B, H, W, generator=g)
    labels[drop < 0.08] = IGNORE_INDEX
    labels[(drop >= 0.08) & (drop < 0.10)] = -1
    labels[(drop >= 0.10) & (drop < 0.12)] = K
    labels[0][labels[0] == K - 1] = 0
    weight = torch.rand(B, H, W, generator=g) * (labels != IGNORE_INDEX)
    tensors = {
        "feat": torch.randn(B, C, H, W, generator=g).relu_(),
        "student": torch.randn(B, C, H, W, generator=g),
        "teacher": torch.randn(B, C, H, W, generator=g),
        "weight": weight / weight.sum(),
        "logits": 3 * torch.randn(B, K, H, W, generator=g),
        "grad_protos": torch.randn(B, K, C, generator=g),
        "grad_intra": torch.randn(B, H, W, generator=g),
        "grad_inter": torch.randn(B, H, W, generator=g),
    }
    out = {name: t.to(device=device, dtype=dtype if name in ("feat", "student", "teacher", "logits") else
                      torch.float32) for name, t in tensors.items()}
    out.update(labels=labels.to(device), K=K)
    return out


def run_ops(x: dict) -> dict[str, torch.Tensor]:
    """Every op forward, then backward with the fixed upstream gradients; returns named results."""
    feat = x["feat"].detach().clone().requires_grad_(True)
    protos, counts = frkd_kernels.prototype_pool(feat, x["labels"], x["K"], IGNORE_INDEX)
    (protos * x["grad_protos"]).sum().backward()
    out = {"pool.protos": protos, "pool.counts": counts, "pool.grad_feat": feat.grad}

    feat = x["feat"].detach().clone().requires_grad_(True)
    protos_leaf = protos.detach().clone().requires_grad_(True)
    intra, inter = frkd_kernels.class_distance_maps(feat, x["labels"], protos_leaf, counts.detach(), IGNORE_INDEX,
                                                    EPS)
    ((intra * x["grad_intra"]).sum() + (inter * x["grad_inter"]).sum()).backward()
    out.update({"maps.intra": intra, "maps.inter": inter, "maps.grad_feat": feat.grad,
                "maps.grad_protos": protos_leaf.grad})

    student = x["student"].detach().clone().requires_grad_(True)
    teacher = x["teacher"].detach().clone().requires_grad_(True)
    loss = frkd_kernels.masked_feature_mse(student, teacher, x["weight"])
    (3.0 * loss).backward()
    out.update({"mse.loss": loss, "mse.grad_student": student.grad, "mse.grad_teacher": teacher.grad})

    entropy, pred = frkd_kernels.teacher_entropy(x["logits"], 1.0)
    out.update({"entropy.entropy": entropy, "entropy.pred": pred})
    if x["feat"].is_cuda:
        torch.cuda.synchronize()
    return {name: t.detach() for name, t in out.items()}


def with_path(deterministic: bool, backend: str, x: dict) -> dict[str, torch.Tensor]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        with frkd_kernels.use_backend(backend):
            return run_ops(x)
    finally:
        torch.use_deterministic_algorithms(previous)


def reference(x: dict) -> dict[str, torch.Tensor]:
    """The same calls on the float64 ``torch`` backend, on the CPU."""
    x64 = {k: (v.detach().cpu().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else
               v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in x.items()}
    with frkd_kernels.use_backend("torch"):
        return run_ops(x64)


def compare(got: dict, want: dict, tol: float, *, exact: bool = False) -> list[str]:
    """Names (with the error) of the results that differ: relative norm error over ``tol``, any
    non-finite value, any differing integer; ``exact``: bit for bit."""
    bad = []
    for name, a in got.items():
        b = want[name].to(device=a.device)
        if exact:
            same = torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0)) and a.dtype == b.dtype
            if not same:
                bad.append(f"{name} not bit-identical")
        elif not a.is_floating_point():
            mismatch = int((a.cpu() != b.cpu()).sum())
            if mismatch:
                bad.append(f"{name}: {mismatch} elements differ")
        elif not bool(torch.isfinite(a).all()):
            bad.append(f"{name}: non-finite values")
        else:
            a64, b64 = a.double().cpu(), b.double().cpu()
            err = (torch.linalg.vector_norm(a64 - b64) / torch.linalg.vector_norm(b64).clamp_min(1e-30)).item()
            if err > tol:
                bad.append(f"{name}: relative error {err:.3g} > {tol:g}")
    return bad


def check_case(backend: str, device: torch.device, dtype: torch.dtype, size: tuple, seed: int) -> dict:
    """One (backend, dtype, size): both paths, the reference, the agreement and the repeatability."""
    x = make_inputs(*size, dtype=dtype, device=device, seed=seed)
    atomic = with_path(False, backend, x)
    deterministic = with_path(True, backend, x)
    again = with_path(True, backend, x)
    problems = [f"vs reference: {p}" for p in compare(deterministic, reference(x), REFERENCE_TOL[dtype])]
    problems += [f"atomic vs deterministic: {p}" for p in compare(atomic, deterministic, AGREEMENT_TOL[dtype])]
    problems += [f"deterministic twice: {p}" for p in compare(again, deterministic, 0, exact=True)]
    return {"problems": problems}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", nargs="+", choices=frkd_kernels.BACKENDS, default=None,
                   help="backends to check (default: cuda on --device cuda, cpu on --device cpu)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32"])
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False (use --device cpu)")
    args.backends = args.backends or [args.device]
    for name in args.backends:
        ok, why = frkd_kernels.can_serve(name, args.device)
        if not ok:
            p.error(f"--backends {name}: cannot serve {args.device} tensors here: {why}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}; device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f"; backends {frkd_kernels.backends(verbose=True)}", flush=True)
    rows = []
    for backend in args.backends:
        for dtype_name in args.dtypes:
            for seed, size in enumerate(SIZES):
                started = time.perf_counter()
                try:
                    result = check_case(backend, device, getattr(torch, dtype_name), size, seed)
                except Exception as exc:  # reported as this case's failure; the other cases still run
                    result = {"problems": [f"raised {type(exc).__name__}: {exc}"],
                              "traceback": traceback.format_exc()}
                result.update(backend=backend, dtype=dtype_name, size=dict(zip("BCHWK", size)),
                              seconds=round(time.perf_counter() - started, 3))
                rows.append(result)
                status = "PASS" if not result["problems"] else "FAIL: " + "; ".join(result["problems"])
                print(f"{backend:>7} {dtype_name:>9} B,C,H,W,K={size}: {status}", flush=True)
                if "traceback" in result:
                    print(result["traceback"], file=sys.stderr, flush=True)
    failed = sum(bool(r["problems"]) for r in rows)
    print(f"gpu_sanitize_ops: {len(rows) - failed} passed, {failed} failed")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": args.device, "torch": torch.__version__,
                                               "cases": rows}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
