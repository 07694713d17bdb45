"""Loads the compiled extension ``frkd_kernels._C`` (its import registers the private C++ ops).

If it was not built, the package still imports, says so once, and the ``torch`` backend serves.
"""
from __future__ import annotations

import importlib
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which the extension links against)

try:  # registers frkd::_cpu_* and, in CUDA builds, frkd::_cuda_* ops
    importlib.import_module("frkd_kernels._C")
    LOAD_ERROR: Exception | None = None
except ImportError as exc:  # not built, or built against another torch
    LOAD_ERROR = ImportError("not built") if isinstance(exc, ModuleNotFoundError) else exc
    warnings.warn(
        f"frkd_kernels: the C++ extension is not available ({LOAD_ERROR}); the 'cpu' and 'cuda' backends are "
        "off and the 'torch' backend serves. Build it with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )


def loaded() -> bool:
    return LOAD_ERROR is None


def reason() -> str:
    return "" if LOAD_ERROR is None else f"C++ extension frkd_kernels._C not loaded: {LOAD_ERROR}"
