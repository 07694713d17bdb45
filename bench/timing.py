"""Timers, peak memory and copy bandwidth: ``do_bench`` on GPU, ``perf_counter`` loops on CPU."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clear_grads(leaves):
    for t in leaves:
        t.grad = None


def time_fn(fn, device: torch.device, leaves, *, warmup: int, repeats: int) -> Timing:
    """Median and 20/80 % quantiles of ``fn()`` in ms; leaf gradients are cleared before each call.

    GPU: ``triton.testing.do_bench`` (it flushes L2 between calls; warmup/repeats are ignored).
    CPU: ``warmup`` untimed calls, then ``repeats`` calls each timed with ``time.perf_counter``.
    """
    if device.type == "cuda":
        import triton.testing

        return Timing(*triton.testing.do_bench(fn, grad_to_none=list(leaves), quantiles=list(QUANTILES)))
    for _ in range(warmup):
        _clear_grads(leaves)
        fn()
    times = []
    for _ in range(max(1, repeats)):
        _clear_grads(leaves)
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    pick = [times[round(q * (len(times) - 1))] for q in QUANTILES]
    return Timing(*pick)


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
    timing = time_fn(lambda: dst.copy_(src), device, (), warmup=warmup, repeats=repeats)
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
