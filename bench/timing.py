"""Timers, peak memory and copy bandwidth: ``do_bench`` on GPU, interleaved ``perf_counter`` on CPU."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

QUANTILES = (0.5, 0.2, 0.8, 0.0)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clear_grads(leaves):
    for t in leaves:
        t.grad = None


def _summary(times_ms: list[float]) -> Timing:
    times = sorted(times_ms)
    return Timing(*(times[round(q * (len(times) - 1))] for q in QUANTILES))


def time_all(fns: dict, device: torch.device, leaves, *, warmup: int, repeats: int, gpu_rep_ms: int = 100) -> dict:
    """{name: Timing, or the exception it raised} for each ``fns[name]()``, in ms; the leaves'
    gradients are cleared before every call.

    GPU: ``triton.testing.do_bench`` per function, timing calls for about ``gpu_rep_ms`` ms (L2
    flushed between calls; warmup/repeats unused).
    CPU: ``warmup`` untimed rounds, then ``repeats`` rounds; each round calls every function once,
    timed with ``time.perf_counter``. Interleaving spreads the load of a shared machine evenly
    over the functions, so their ratios stay fair when the absolute times drift.
    """
    out: dict = {}
    if device.type == "cuda":
        import triton.testing

        for name, fn in fns.items():
            try:
                out[name] = Timing(*triton.testing.do_bench(fn, rep=gpu_rep_ms, grad_to_none=list(leaves),
                                                            quantiles=list(QUANTILES)))
            except Exception as exc:  # e.g. out of memory: reported in that provider's row
                out[name] = exc
        return out
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + max(1, repeats)):
        for name, fn in fns.items():
            if name in out:  # failed earlier
                continue
            _clear_grads(leaves)
            try:
                start = time.perf_counter()
                fn()
                elapsed = (time.perf_counter() - start) * 1e3
            except Exception as exc:
                out[name] = exc
                continue
            if round_index >= warmup:
                times[name].append(elapsed)
    for name in fns:
        out.setdefault(name, _summary(times[name]))
    return out


def peak_memory_bytes(fn, device: torch.device, leaves) -> int | None:
    """Peak bytes allocated by one ``fn()`` beyond what was live before it (GPU only; None on CPU)."""
    if device.type != "cuda":
        return None
    _clear_grads(leaves)
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_bandwidth_gbs(device: torch.device, nbytes: int, *, warmup: int, repeats: int) -> float:
    """Measured device-to-same-device copy bandwidth (GB/s = 1e9 B/s; bytes read + written)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = time_all({"copy": lambda: dst.copy_(src)}, device, (), warmup=warmup, repeats=repeats)["copy"]
    if isinstance(timing, Exception):
        raise timing
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
