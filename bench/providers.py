"""Providers: the live frkd backends and the peers they are compared with.

- ``triton``, ``cuda``, ``cpu``, ``torch``: ``frkd_kernels`` under ``use_backend(name)``.
- ``eager``: the pure-PyTorch reference called directly (``bench.reference_ops``).
- ``compile``: ``torch.compile`` of that same function (Inductor sees the maths, not custom ops).
- ``cirkd_loop``: the CIRKD-style per-class loop; only workloads with a loop (the IFV term).
"""
from __future__ import annotations

import torch

import frkd_kernels

from . import reference_ops
from .workloads import Workload

PEERS = ("eager", "compile", "cirkd_loop")
ALL = tuple(frkd_kernels.BACKENDS) + PEERS


def availability(device: torch.device, requested: list[str] | None) -> dict[str, str]:
    """{provider: '' when it can run on ``device``, else why not}, for ``requested`` (default: all)."""
    names = requested or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"bench: --providers: unknown {', '.join(unknown)}; expected some of {', '.join(ALL)}")
    out = {}
    for name in names:
        if name in PEERS:
            out[name] = ""
            continue
        ok, reason = frkd_kernels.can_serve(name, device)
        if ok and name == "triton" and device.type == "cpu" and requested is None:
            ok, reason = False, "serves CPU only through the Triton interpreter: not timed unless --providers names it"
        out[name] = "" if ok else (reason or "cannot serve this device")
    return out


def forward_fn(provider: str, workload: Workload):
    """A callable inputs -> outputs running ``workload`` with ``provider``, or None if it does not apply."""
    if provider == "cirkd_loop":
        return workload.loop_forward
    if provider == "eager":
        return lambda x: workload.forward(reference_ops, x)
    if provider == "compile":
        torch._dynamo.reset()  # one compiled function per (workload, shape): no recompile limit, no dynamic shapes
        return torch.compile(lambda x: workload.forward(reference_ops, x), dynamic=False)

    def run(x):
        with frkd_kernels.use_backend(provider):
            return workload.forward(frkd_kernels, x)
    return run
