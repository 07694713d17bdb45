"""Shared pytest setup for frkd.

- Without a CUDA device, Triton runs on CPU tensors through its interpreter: ``TRITON_INTERPRET=1``
  is set here, before anything imports triton or frkd_kernels.
- A test that takes a ``backend_device`` argument runs once per (backend, device) pair, devices cpu
  and (when present) cuda; pairs the backend cannot serve are skipped with its reason.
- Allocations made by ``frkd_kernels`` code (``torch.empty*``, ``Tensor.new_empty``) are pre-filled
  with NaN (integers with a sentinel) in every test, so an output element a kernel forgets to write
  shows up as a mismatch instead of passing by luck.
"""
from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch._dynamo.trace_rules  # noqa: E402

# torch.compile recognises torch functions by identity, from a table it builds once on first use.
# Build it now, before the poisoning fixture below swaps torch.empty & co. for wrappers; otherwise
# the table would hold a wrapper and compiled code in every later test would break on the real one.
torch._dynamo.trace_rules.get_torch_obj_rule_map()

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
INT_SENTINEL = 0x5A5A  # not a class, not -1 ("no class"), not 255
UINT8_SENTINEL = 0xA5


def backend_device_params() -> list:
    """One pytest param per (backend, device) pair, skipped when the backend cannot serve it.
    A backend whose ``can_serve`` itself raises gets a param that fails with that error.
    frkd_kernels is imported here, not at the top, so a broken op library fails only the op tests."""
    import frkd_kernels

    params = []
    for device in DEVICES:
        for name in frkd_kernels.BACKENDS:
            try:
                ok, reason = frkd_kernels.can_serve(name, device)
            except Exception as exc:  # a broken backend module must fail its tests, not vanish
                error = f"can_serve({name!r}, {device!r}) raised {exc!r}"
                params.append(pytest.param((name, device, error), id=f"{name}-{device}"))
                continue
            marks = () if ok else pytest.mark.skip(reason=f"{name} cannot serve {device}: {reason}")
            params.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return params


def pytest_generate_tests(metafunc):
    if "backend_device" in metafunc.fixturenames:
        metafunc.parametrize("backend_device", backend_device_params(), indirect=True)


@pytest.fixture
def backend_device(request) -> tuple[str, str]:
    """(backend name, device type) for a test parametrized over every pair (see above)."""
    if len(request.param) == 3:
        pytest.fail(request.param[2])
    return request.param


def _poison(t):
    if isinstance(t, torch.Tensor) and t.numel() and t.device.type != "meta":
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.uint8:
            t.fill_(UINT8_SENTINEL)
        elif t.dtype in (torch.int16, torch.int32, torch.int64):
            t.fill_(INT_SENTINEL)
    return t


def _from_frkd_kernels() -> bool:
    """Whether the allocation being wrapped was called from frkd_kernels code (two frames up)."""
    return sys._getframe(2).f_globals.get("__name__", "").startswith("frkd_kernels")


def _poisoning(original):
    def allocate(*args, **kwargs):
        out = original(*args, **kwargs)
        if torch.compiler.is_compiling():  # keep code traced by torch.compile free of frame inspection
            return out
        return _poison(out) if _from_frkd_kernels() else out

    return allocate


def _poisoning_new_empty(original):
    def new_empty(self, *size, **kwargs):
        if torch.compiler.is_compiling():  # dynamo cannot call the unbound C method: the same allocation
            options = {"dtype": self.dtype, "device": self.device}
            options.update((k, v) for k, v in kwargs.items() if v is not None)
            return torch.empty(*size, **options)
        out = original(self, *size, **kwargs)
        return _poison(out) if _from_frkd_kernels() else out

    return new_empty


@pytest.fixture(autouse=True)
def poison_frkd_allocations(monkeypatch):
    """Fill what frkd_kernels allocates with NaN / a sentinel for the duration of the test."""
    # torch.distributed.init_process_group clears dynamo's table of torch functions (a DDP test): rebuild it
    # from the real functions before they are swapped for wrappers (see the module's top)
    torch._dynamo.trace_rules.get_torch_obj_rule_map()
    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, _poisoning(getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoning_new_empty(torch.Tensor.new_empty))
