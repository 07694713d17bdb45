"""Load ImageNet backbone weights into a backbone: torchvision ResNet files (``resnet50-*.pth`` ...)
into a ``DilatedResNet``, torchvision MobileNetV3 files into ``MobileNetV3``, and the Hugging Face
checkpoints of MiT (``nvidia/mit-b0`` ...) and MobileViT (``apple/mobilevit-xx-small``) into their
``transformers`` models (``pytorch_model.bin`` or ``model.safetensors``).

The check is strict: every backbone key must be in the file and every file key in the
backbone, except the ImageNet classifier (``fc.*`` / ``classifier.*``, not used) and BatchNorm
``num_batches_tracked`` (absent from torchvision's older checkpoints). A file prefix (``segformer.``)
is stripped first. Shapes must match, which fails for ``width`` ≠ 64 against torchvision files.
"""
import os

import torch
from torch import nn

OPTIONAL_KEY_SUFFIX = "num_batches_tracked"


def _read_state_dict(path: str) -> dict:
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


def _short_list(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:8])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def load_backbone_weights(backbone: nn.Module, path: str, *, ignored=("fc.",), file_prefix: str = "",
                          names: str = "torchvision ResNet names") -> None:
    """Copy the state dict at ``path`` into ``backbone`` (strict, see module doc): file keys that start with
    ``ignored`` are dropped, then ``file_prefix`` is stripped; ``names`` says in errors whose names are expected."""
    state = {k.removeprefix(file_prefix): v for k, v in _read_state_dict(path).items() if not k.startswith(ignored)}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        name = getattr(backbone, "name", type(backbone).__name__)
        parts = [f"pretrained: {path!r} does not match the {name} backbone ({names})"]
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        raise ValueError("; ".join(parts))
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items() if v.shape != expected[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"pretrained: {path!r} has tensors of other shapes than the backbone "
            f"(torchvision ResNet files need width=64): {_short_list(mismatched)}"
        )
    backbone.load_state_dict(state, strict=False)
