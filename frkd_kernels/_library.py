"""Machinery every op slice (``frkd_kernels/ops/<op>.py``) shares: the rules of the op contract
that more than one op uses, input checks, and the registration helpers.

The contract is docs/ops.md. Each rule here has one source:
- ``IGNORE_INDEX`` (255), the default ignore label;
- ``stat_dtype``: statistics are float32, float64 when any input is float64;
- ``valid_labels``: a pixel is valid when 0 <= label < K and label != ignore_index;
- ``cosines``: cos = f·c / (|f||c|), 0 where |f||c| < eps (no gradient there either).
"""
from __future__ import annotations

import torch

from . import _backend

IGNORE_INDEX = 255
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --- rules ------------------------------------------------------------------------------------

def stat_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def valid_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """labels B×H×W -> (valid B×N bool, class index B×N int64 with invalid pixels sent to bucket K)."""
    y = labels.flatten(1).long()
    valid = (y >= 0) & (y < num_classes) & (y != ignore_index)
    return valid, torch.where(valid, y, num_classes)


def cosines(f: torch.Tensor, c: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f B×C×N, c B×K×C -> (cos B×K×N, ok = |f||c| >= eps, den = |f||c|); cos is 0 where not ok."""
    dots = torch.bmm(c, f)
    den = torch.linalg.vector_norm(c, dim=2)[:, :, None] * torch.linalg.vector_norm(f, dim=1)[:, None, :]
    ok = den >= eps
    cos = torch.where(ok, dots / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(dots))
    return cos, ok, den


# --- input checks: one clear line naming the argument -------------------------------------------

def describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def check_tensor(op: str, name: str, t, ndim: int, dtypes: tuple, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"frkd.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != ndim or t.dtype not in dtypes:
        raise ValueError(f"frkd.{op}: {name} must be {what}, got {describe(t)}")


def check_feat(op: str, name: str, t) -> None:
    check_tensor(op, name, t, 4, FLOAT_DTYPES, "a 4-D B×C×H×W float32/float16/bfloat16/float64 tensor")


def check_labels(op: str, feat_name: str, feat: torch.Tensor, labels) -> None:
    check_tensor(op, "labels", labels, 3, LABEL_DTYPES, "a 3-D B×H×W uint8/int32/int64 tensor")
    B, _, H, W = feat.shape
    if tuple(labels.shape) != (B, H, W):
        raise ValueError(
            f"frkd.{op}: labels must be B×H×W = {(B, H, W)} to match {feat_name} {tuple(feat.shape)}, "
            f"got {tuple(labels.shape)} (resize labels with nearest interpolation first)"
        )


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"frkd.{op}: all tensors must be on one device, got {listing}")


def check_ignore_index(op: str, ignore_index) -> None:
    if not isinstance(ignore_index, int):
        raise TypeError(f"frkd.{op}: ignore_index must be an int, got {ignore_index!r}")


# --- registration -----------------------------------------------------------------------------

KERNEL_SCHEMAS: dict[str, str] = {}  # private kernel op (no prefix) -> schema with a {deterministic} slot
KERNEL_PREFIXES = {"cpu": "_cpu_", "cuda": "_cuda_"}


def define(name: str, schema: str) -> None:
    """Define ``frkd::<name>``."""
    torch.library.define(f"frkd::{name}", schema)


def forward_schema(schema: str, *extra_outputs: str) -> str:
    """The schema of an op's private forward: the public schema with ``extra_outputs`` appended."""
    args, returns = schema.split(" -> ")
    returns = returns[1:-1] if returns.startswith("(") else returns
    return f"{args} -> ({', '.join((returns,) + extra_outputs)})"


def kernel_schema(name: str, backend: str) -> str:
    """The schema of the private kernel op ``name`` of a compiled backend: one text per kernel
    (``KERNEL_SCHEMAS``); the ``cuda`` kernels of the class-sum ops also take ``bool deterministic``."""
    return KERNEL_SCHEMAS[name].format(deterministic="bool deterministic, " if backend == "cuda" else "")


def define_kernels(kernels: dict[str, str], namespace: str = "frkd", backends: tuple[str, ...] = ("cpu", "cuda")):
    """Record the kernel schemas of one op and define ``<namespace>::_cpu_<kernel>`` and
    ``_cuda_<kernel>`` for each (the C++ library registers kernels for them, never a schema)."""
    KERNEL_SCHEMAS.update(kernels)
    for name in kernels:
        for backend in backends:
            torch.library.define(f"{namespace}::{KERNEL_PREFIXES[backend]}{name}", kernel_schema(name, backend))


def register_routed(name: str, fn) -> None:
    """Register ``fn`` as the CPU and CUDA kernel of ``frkd::<name>`` (it picks the backend itself)."""
    torch.library.impl(f"frkd::{name}", ("CPU", "CUDA"), fn)


def resolved(op: str, device: torch.device):
    """The function ``op`` of the backend that serves ``device`` now, and that backend as a 0-dim
    int8 CPU tensor (its index in ``_backend.BACKENDS``) for the backward to run on."""
    name = _backend.resolve(device, op)
    return _backend.implementation(name, op), torch.tensor(_backend.BACKENDS.index(name), dtype=torch.int8)


def recorded(func: str, backend: torch.Tensor):
    """The function ``func`` of the backend a forward recorded in ``backend`` (0-dim int8)."""
    return _backend.implementation(_backend.BACKENDS[int(backend)], func)


def fake_backend() -> torch.Tensor:
    """The fake of the backend tensor the real forwards return: 0-dim int8 on the CPU."""
    return torch.empty((), dtype=torch.int8, device="cpu")


def empty_or_like(t: torch.Tensor, needed: bool) -> torch.Tensor:
    return torch.empty_like(t) if needed else t.new_empty(0)


def no_double_backward(op: str) -> None:
    """Register an autograd formula on the backward op ``frkd::<op>`` that refuses double backward."""
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"frkd.{op} does not support double backward (create_graph=True through it)")

    torch.library.register_autograd(f"frkd::{op}", backward, setup_context=setup)
