"""The dispatch rule of every frkd op, and the ``Backend`` protocol (docs/ops.md).

One rule for ``torch.ops.frkd.*`` and the functional API alike:
``use_backend(name)`` (innermost wins) > env ``FRKD_BACKEND`` > default
(CUDA tensors: triton > cuda > torch; CPU tensors: cpu > torch).
A forced backend that cannot serve a call raises; nothing falls back silently.

Each backend is an object (``BACKEND`` in its module) with one method per backend function, see
``Backend``. Modules are imported lazily, so a broken optional backend never breaks
``import frkd_kernels``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Protocol

import torch

BACKENDS = ("triton", "cuda", "cpu", "torch")
_MODULES = {
    "triton": "frkd_kernels.triton_ops",
    "cuda": "frkd_kernels.cuda_backend",
    "cpu": "frkd_kernels.cpu_backend",
    "torch": "frkd_kernels.reference",
}
_DEFAULT_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}



class Backend(Protocol):
    """What every backend provides. Inputs arrive validated (each op slice's ``check``); shapes
    and outputs are those of the op slices' ``reference*`` functions (``frkd_kernels/ops``)."""

    def status(self) -> tuple[bool, str]: ...  # (live in this process, why / what)
    def serves(self, device: torch.device) -> tuple[bool, str]: ...  # (can run on device, why not)
    def prototype_pool(self, feat, labels, num_classes, ignore_index): ...
    def prototype_pool_backward(self, grad_protos, labels, counts, feat, ignore_index): ...
    def class_distance_maps(self, feat, labels, protos, counts, ignore_index, eps): ...
    def class_distance_maps_backward(self, grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                     ignore_index, eps, need_feat, need_protos): ...
    def masked_feature_mse(self, student, teacher, weight): ...
    def masked_feature_mse_backward(self, grad_loss, student, teacher, weight, need_student, need_teacher): ...
    def teacher_entropy(self, logits, temperature): ...
    def relation_kl(self, query_s, query_t, key_s, key_t, groups, temperature): ...
    def relation_kl_backward(self, scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                             need_key): ...


_loaded: dict[str, Backend | Exception] = {}
_load_lock = threading.Lock()
_forced = threading.local()


def backend(name: str) -> Backend | None:
    """The backend object ``name`` (its module's ``BACKEND``), or None when its module cannot be
    imported (the error is kept for ``backend_status``)."""
    with _load_lock:
        if name not in _loaded:
            try:
                _loaded[name] = importlib.import_module(_MODULES[name]).BACKEND
            except Exception as exc:  # an optional dependency missing or broken
                _loaded[name] = exc
    found = _loaded[name]
    return None if isinstance(found, Exception) else found


def _check_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown frkd backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def backend_status(name: str) -> tuple[bool, str]:
    """(live, reason) for one backend in this process."""
    _check_name(name, "backend_status")
    found = backend(name)
    if found is None:
        return False, f"import of {_MODULES[name]} failed: {_loaded[name]!r}"
    return found.status()


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
    return backend(name).serves(torch.device(device))


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
    """The method ``func`` of backend ``name`` (resolved before, so it is loaded)."""
    return getattr(backend(name), func)
