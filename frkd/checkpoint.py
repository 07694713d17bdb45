"""Atomic checkpoint files and the RNG state needed for an exact resume."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

from .config import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be used (missing, unreadable, truncated, foreign): names the file."""


def seed_everything(seed: int) -> None:
    """Seeds python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Snapshot of the python, numpy, torch (CPU) and CUDA generators."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restores a snapshot taken by ``rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: str) -> None:
    """Writes ``obj`` with torch.save to a temp file in the same folder, then os.replace()s it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str, role: str = "checkpoint", hint: str = "", map_location="cpu") -> dict:
    """Loads a checkpoint written by ``save_atomic`` (full pickle: RNG states are numpy/python objects).

    role: how the user gave the file (a flag such as ``--resume``), named in errors with ``hint``
    (what to do instead). A missing or unreadable file raises CheckpointError.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{role} {path}: expected a checkpoint file, found no such file{hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # a user's file: pickle, zip and EOF errors all mean "not a readable checkpoint"
        reason = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{role} {path}: expected a PyTorch checkpoint, found a truncated or foreign file "
                              f"({type(error).__name__}: {reason}){hint}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{role} {path}: expected a dict (frkd checkpoint or state_dict), "
                              f"found a {type(state).__name__}{hint}")
    return state


def model_state(checkpoint: dict, path: str = "checkpoint", role: str = "checkpoint") -> dict:
    """The model weights of a frkd checkpoint, or the dict itself when it is a bare state_dict."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{role} {path}: expected a frkd checkpoint ('model' key) or a state_dict of "
                              f"tensors, found keys {', '.join(map(str, list(checkpoint)[:6]))}")
    return {k.removeprefix("module."): v for k, v in state.items()}
