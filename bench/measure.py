"""Measure one (workload, shape, provider) in every mode: time, peak memory, GB/s, error vs eager."""
from __future__ import annotations

import torch

from . import inputs as bench_inputs
from .shapes import Shape
from .timing import peak_memory_bytes, time_fn
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


def measure(workload: Workload, shape: Shape, provider: str, run, x: dict, expected, *, device, modes,
            feature_size: int, label_size: int, copy_gbs: float, warmup: int, repeats: int) -> list[dict]:
    """One row per mode (see ``bench/run.py`` for the fields); ``expected``: the eager outputs."""
    leaves = leaves_of(x)
    fwd_bytes, bwd_bytes = workload.bytes(shape, feature_size, label_size)
    moved = {"forward": fwd_bytes, "backward": bwd_bytes, "forward+backward": fwd_bytes + bwd_bytes}
    base = {"workload": workload.name, "shape": shape.name, "dims": shape.dims(), "provider": provider}
    try:
        diff = max_abs_diff(run(x), expected)  # also the first warm-up (compiles for ``compile``)
        first_error = None
    except Exception as exc:
        diff, first_error = None, exc
    rows = []
    for mode in modes:
        if mode != "forward" and not workload.differentiable:
            continue
        row = dict(base, mode=mode, max_abs_diff_vs_eager=diff, bytes=moved[mode], speedup_vs={}, error=None)
        try:
            if first_error is not None:
                raise first_error
            fn = mode_fn(mode, run, x)
            fn()  # warm-up of this mode (compiles the backward for ``compile``)
            timing = time_fn(fn, device, leaves, warmup=warmup, repeats=repeats)
            peak = peak_memory_bytes(fn, device, leaves)
        except Exception as exc:  # a backend not written yet, OOM, ...: keep going, report it
            row.update(median_ms=None, p20_ms=None, p80_ms=None, peak_mem_mib=None, gb_per_s=None,
                       pct_copy_bw=None, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            gbs = moved[mode] / (timing.median_ms * 1e-3) / 1e9
            row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
                       peak_mem_mib=None if peak is None else peak / 2**20, gb_per_s=gbs,
                       pct_copy_bw=100 * gbs / copy_gbs)
        rows.append(row)
    for t in leaves:
        t.grad = None
    return rows
