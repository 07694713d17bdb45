"""Load ImageNet backbone weights into a backbone: torchvision ResNet files (``resnet50-*.pth`` ...)
into a ``DilatedResNet``, torchvision MobileNetV3 files into ``MobileNetV3``, and the Hugging Face
checkpoints of MiT (``nvidia/mit-b0`` ...) and MobileViT (``apple/mobilevit-xx-small``) into their
``transformers`` models (``pytorch_model.bin`` or ``model.safetensors``).

The check is strict: every backbone key must be in the file and every file key in the
backbone, except the ImageNet classifier (``fc.*`` / ``classifier.*``, not used) and BatchNorm
``num_batches_tracked`` (absent from torchvision's older checkpoints). Shapes must match, which
fails for ``width`` ≠ 64 against torchvision files. The ``transformers`` models load through their
own ``from_pretrained`` (which knows the checkpoints' older names), checked as strictly
(``load_transformers_weights``).
"""
import os

import torch
from torch import nn

OPTIONAL_KEY_SUFFIX = "num_batches_tracked"


def read_state_dict(path: str) -> dict:
    """The tensors of a .pth/.bin (torch) or .safetensors file (a ``state_dict`` entry is unwrapped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained: no such file {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"pretrained: cannot read {path!r} as a PyTorch state dict: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained: {path!r} does not hold a state dict of tensors (name -> Tensor)")
    return state


def short_list(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:8])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def load_backbone_weights(backbone: nn.Module, path: str, *, ignored=("fc.",),
                          names: str = "torchvision ResNet names") -> None:
    """Copy the state dict at ``path`` into ``backbone`` (strict, see module doc): file keys that start with
    ``ignored`` are dropped; ``names`` says in errors whose names are expected."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignored)}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        name = getattr(backbone, "name", type(backbone).__name__)
        parts = [f"pretrained: {path!r} does not match the {name} backbone ({names})"]
        if missing:
            parts.append(f"missing keys: {short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {short_list(unexpected)}")
        raise ValueError("; ".join(parts))
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items() if v.shape != expected[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"pretrained: {path!r} has tensors of other shapes than the backbone "
            f"(torchvision ResNet files need width=64): {short_list(mismatched)}"
        )
    backbone.load_state_dict(state, strict=False)


def load_transformers_weights(cls, config, path: str, *, new_prefixes: tuple[str, ...], names: str):
    """``cls.from_pretrained`` (a ``transformers`` model class) on the state dict at ``path`` with ``config``;
    every model key must come from the file except those starting with ``new_prefixes`` (a new head), and
    every file key must be used except the ImageNet ``classifier.*``. Returns the model."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its own load report; the checks below replace it
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=read_state_dict(path),
                                          output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)
    missing = [k for k in info["missing_keys"] if not k.startswith(new_prefixes) and not k.endswith(OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("classifier.")]
    mismatched = [str(k) for k in info.get("mismatched_keys") or []]
    if missing or unexpected or mismatched:
        parts = [f"pretrained: {path!r} does not match the {cls.__name__} ({names})"]
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", mismatched)):
            if keys:
                parts.append(f"{what}: {short_list(keys)}")
        raise ValueError("; ".join(parts))
    return model
