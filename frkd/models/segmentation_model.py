"""The segmentation network: dilated ResNet + main head (+ auxiliary FCN head on layer3)."""
from typing import NamedTuple, Optional

import torch
from torch import nn


class SegOutput(NamedTuple):
    """What a model returns, all at output stride 8 (h = ceil(H/8), w = ceil(W/8)).

    logits: B×K×h×w main-head logits; aux: B×K×h×w auxiliary logits or None;
    feat: B×feat_channels×h×w penultimate feature of the main head.
    """

    logits: torch.Tensor
    aux: Optional[torch.Tensor]
    feat: torch.Tensor


class SegmentationModel(nn.Module):
    """``forward(x B×3×H×W) -> SegOutput``; ``backbone`` returns (layer3, layer4) maps.

    ``feature_path`` / ``logits_path``: the modules that emit ``feat`` and ``logits`` (what a
    ``frkd.distill.Distiller`` hooks).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: Optional[nn.Module], feat_channels: int, *,
                 feature_path: str, logits_path: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.feat_channels = feat_channels
        self.feature_path, self.logits_path = feature_path, logits_path

    def forward(self, x: torch.Tensor) -> SegOutput:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"input: expected a B×3×H×W image batch, got shape {tuple(x.shape)}")
        c3, c4 = self.backbone(x)
        logits, feat = self.head(c4)
        aux = self.aux_head(c3) if self.aux_head is not None else None
        return SegOutput(logits, aux, feat)
