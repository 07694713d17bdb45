"""Backend selection for every frkd op (DESIGN §1).

One rule for ``torch.ops.frkd.*`` and the functional API alike:
``use_backend(name)`` (innermost wins) > env ``FRKD_BACKEND`` > default
(CUDA tensors: triton > cuda > torch; CPU tensors: cpu > torch).
A forced backend that cannot serve a call raises; nothing falls back silently.

Each backend is a module exposing the same functions (see ``reference.py`` for the
signatures) plus ``serves(device) -> (bool, reason)`` and ``status() -> (bool, reason)``.
Modules are imported lazily, so a broken optional backend never breaks ``import frkd_kernels``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from types import ModuleType

import torch

BACKENDS = ("triton", "cuda", "cpu", "torch")
_MODULES = {
    "triton": "frkd_kernels.triton_ops",
    "cuda": "frkd_kernels.cuda_backend",
    "cpu": "frkd_kernels.cpu_backend",
    "torch": "frkd_kernels.reference",
}
_DEFAULT_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}

_loaded: dict[str, ModuleType | Exception] = {}
_load_lock = threading.Lock()
_forced = threading.local()


def _module(name: str) -> ModuleType | None:
    """The backend's module, or None when it cannot be imported (the error is kept)."""
    with _load_lock:
        if name not in _loaded:
            try:
                _loaded[name] = importlib.import_module(_MODULES[name])
            except Exception as exc:  # an optional dependency missing or broken
                _loaded[name] = exc
    mod = _loaded[name]
    return mod if isinstance(mod, ModuleType) else None


def _check_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown frkd backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def backend_status(name: str) -> tuple[bool, str]:
    """(live, reason) for one backend in this process."""
    _check_name(name, "backend_status")
    mod = _module(name)
    if mod is None:
        return False, f"import of {_MODULES[name]} failed: {_loaded[name]!r}"
    return mod.status()


def backends(verbose: bool = False) -> dict[str, bool] | dict[str, str]:
    """{name: live} for every backend; with ``verbose=True``, {name: 'live (...)' or why it is off}."""
    out = {}
    for name in BACKENDS:
        live, reason = backend_status(name)
        out[name] = (f"live ({reason})" if reason else "live") if verbose and live else (reason if verbose else live)
    return out


def can_serve(name: str, device: torch.device) -> tuple[bool, str]:
    """Whether backend ``name`` can run ops on tensors of ``device``, and why not."""
    live, reason = backend_status(name)
    if not live:
        return False, reason
    return _module(name).serves(torch.device(device))


@contextlib.contextmanager
def use_backend(name: str):
    """Force backend ``name`` for frkd ops called in this thread inside the block (innermost wins)."""
    _check_name(name, "use_backend")
    stack = getattr(_forced, "stack", None)
    if stack is None:
        stack = _forced.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` or ``FRKD_BACKEND``, if any."""
    stack = getattr(_forced, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("FRKD_BACKEND", "").strip()
    if env:
        return _check_name(env, "FRKD_BACKEND")
    return None


def resolve(device: torch.device, op: str) -> str:
    """The backend that serves ``op`` on ``device`` under the rule above."""
    device = torch.device(device)
    forced = forced_backend()
    if forced is not None:
        ok, reason = can_serve(forced, device)
        if not ok:
            raise RuntimeError(
                f"frkd.{op}: backend {forced!r} was forced but cannot serve {device.type} tensors: {reason}"
            )
        return forced
    for name in _DEFAULT_ORDER.get(device.type, ("torch",)):
        if can_serve(name, device)[0]:
            return name
    raise RuntimeError(f"frkd.{op}: no backend serves {device.type} tensors")


def implementation(name: str, func: str):
    """The function ``func`` of backend ``name`` (resolved before, so the module is loaded)."""
    return getattr(_module(name), func)
