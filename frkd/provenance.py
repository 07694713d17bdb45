"""What decides a run's bits besides its config: the machine, the library versions, the weights it starts from.

``machine()`` is recorded in ``summary.json`` and in the pretext backbones' manifest; ``state_hash``
identifies weights by their tensors (names, dtypes, shapes, values), whatever file holds them.
"""
from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata

import torch

# environment variables that change which CPU kernels torch and oneDNN run (and so the bits)
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU model, the instruction set torch's CPU kernels use, ISA overrides in the environment, versions."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_environment": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
            "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": _version("numpy"), "pillow": _version("pillow")}


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) over the tensors of a state dict: names, dtypes, shapes and bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def file_state_hash(path: str) -> str:
    """``state_hash`` of the state dict in a ``.pth`` file (a frkd checkpoint: its ``model`` weights)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state_hash({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
