"""Measure one workload on one shape, for every provider and mode: time, peak memory, GB/s,
speed-ups over the peers and the forward's difference from the eager reference."""
from __future__ import annotations

import torch

from . import inputs as bench_inputs
from .providers import PEERS
from .shapes import Shape
from .timing import peak_memory_bytes, time_all
from .workloads import Workload

MODES = ("forward", "backward", "forward+backward")


def leaves_of(x: dict) -> list[torch.Tensor]:
    return [t for t in x.values() if isinstance(t, torch.Tensor) and t.requires_grad]


def _differentiable(outputs) -> list[torch.Tensor]:
    return [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]


def mode_fn(mode: str, run, x: dict):
    """The callable timed for ``mode``: a forward (autograd on, as in training), a backward of a
    kept graph (``retain_graph``), or both; upstream gradients are fixed per output."""
    if mode == "forward":
        return lambda: run(x)
    outs = _differentiable(run(x))
    grads = bench_inputs.upstream_grads(outs)
    if mode == "backward":
        return lambda: torch.autograd.backward(outs, grads, retain_graph=True)
    return lambda: torch.autograd.backward(_differentiable(run(x)), grads)


def max_abs_diff(outputs, expected) -> float:
    """Largest |difference| over the floating outputs (compared in float64)."""
    diffs = [(a.detach().double() - b.detach().double()).abs().max().item()
             for a, b in zip(outputs, expected) if a.is_floating_point() and a.numel()]
    return max(diffs, default=0.0)


def _error(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _prepare(mode, run, x, diff_or_error):
    """The warmed-up callable for ``mode``, or the exception that stopped it."""
    if isinstance(diff_or_error, Exception):
        return diff_or_error
    try:
        fn = mode_fn(mode, run, x)
        fn()  # warm-up of this mode (compiles the backward for ``compile``)
        return fn
    except Exception as exc:  # e.g. out of memory: reported in this provider's row, on stderr and in the exit status
        return exc


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs[peer] = the peer's median / this row's median (same workload, shape, mode)."""
    by_provider = {r["provider"]: r for r in rows}
    for r in rows:
        for peer in PEERS:
            other = by_provider.get(peer)
            if other is not None and other is not r and r["median_ms"] and other["median_ms"]:
                r["speedup_vs"][peer] = other["median_ms"] / r["median_ms"]


def measure_workload(workload: Workload, shape: Shape, runs: dict, x: dict, expected: list, *, device, modes,
                     feature_size: int, label_size: int, copy_gbs: float, warmup: int, repeats: int) -> list[dict]:
    """One row per (provider, mode); ``runs``: {provider: inputs -> outputs}; ``expected``: eager's outputs."""
    leaves = leaves_of(x)
    fwd_bytes, bwd_bytes = workload.bytes(shape, feature_size, label_size)
    moved = {"forward": fwd_bytes, "backward": bwd_bytes, "forward+backward": fwd_bytes + bwd_bytes}
    diffs = {}
    for provider, run in runs.items():
        try:
            diffs[provider] = max_abs_diff(run(x), expected)  # also the first warm-up (compiles ``compile``)
        except Exception as exc:
            diffs[provider] = exc
    rows = []
    for mode in modes:
        if mode != "forward" and not workload.differentiable:
            continue
        fns = {p: _prepare(mode, run, x, diffs[p]) for p, run in runs.items()}
        timings = time_all({p: fn for p, fn in fns.items() if not isinstance(fn, Exception)}, device, leaves,
                           warmup=warmup, repeats=repeats)
        mode_rows = []
        for provider, fn in fns.items():
            result = fn if isinstance(fn, Exception) else timings[provider]
            diff = diffs[provider]
            row = {"workload": workload.name, "shape": shape.name, "dims": shape.dims(), "provider": provider,
                   "mode": mode, "max_abs_diff_vs_eager": None if isinstance(diff, Exception) else diff,
                   "bytes": moved[mode], "speedup_vs": {}, "error": None}
            if isinstance(result, Exception):
                row.update(median_ms=None, p20_ms=None, p80_ms=None, min_ms=None, peak_mem_mib=None,
                           gb_per_s=None, pct_copy_bw=None, error=_error(result))
            else:
                peak = peak_memory_bytes(fn, device, leaves)
                gbs = moved[mode] / (result.median_ms * 1e-3) / 1e9
                row.update(median_ms=result.median_ms, p20_ms=result.p20_ms, p80_ms=result.p80_ms,
                           min_ms=result.min_ms, peak_mem_mib=None if peak is None else peak / 2**20,
                           gb_per_s=gbs, pct_copy_bw=100 * gbs / copy_gbs)
            mode_rows.append(row)
        add_speedups(mode_rows)
        rows.extend(mode_rows)
        del fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for t in leaves:
        t.grad = None
    return rows
