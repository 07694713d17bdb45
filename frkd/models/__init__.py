"""Segmentation models of the trainer: DeepLabV3 / PSPNet on dilated ResNet-18/50/101, CIRKD's student
families and user factories (``build_segmentation_model``, the one registry: ``families``).

``build_model(arch, backbone, num_classes, *, width=64, aux=True, pretrained=None,
feature_tap="pre-dropout")`` returns a
``SegmentationModel`` whose forward gives ``SegOutput(logits, aux, feat)`` at output stride 8.
``feat`` has ``model.feat_channels`` = 2·width (resnet18) or 4·width (resnet50/101) channels,
i.e. 128 / 256 at width 64 as in CIRKD. ``width`` scales every stage (64 = torchvision sizes);
``pretrained`` is a path to a torchvision ImageNet ResNet ``.pth`` loaded into the backbone;
``feature_tap`` says whether ``feat`` is taken before or after the head's Dropout(0.1) (see heads).
All normalisation layers are BatchNorm2d (convertible to SyncBatchNorm).
"""
from __future__ import annotations

from typing import Optional

from .families import ALIASES, MODEL_BACKBONES, build_factory, build_family, is_factory
from .heads import FEATURE_TAPS, FCNHead, DeepLabV3Head, PSPHead
from .pretrained import load_backbone_weights
from .resnet import RESNET_LAYOUTS, DilatedResNet
from .segmentation_model import SegmentationModel, SegOutput

HEADS = {"deeplabv3": DeepLabV3Head, "pspnet": PSPHead}
BACKBONES = tuple(RESNET_LAYOUTS)
FEAT_CHANNELS_PER_WIDTH = {"resnet18": 2, "resnet50": 4, "resnet101": 4}

__all__ = ["BACKBONES", "FEATURE_TAPS", "HEADS", "MODEL_BACKBONES", "SegOutput", "SegmentationModel", "build_model",
           "build_segmentation_model"]


def build_model(
    arch: str, backbone: str, num_classes: int, *, width: int = 64, aux: bool = True, pretrained: Optional[str] = None,
    feature_tap: str = "pre-dropout",
) -> SegmentationModel:
    """Build ``arch`` ∈ {deeplabv3, pspnet} on ``backbone`` ∈ {resnet18, resnet50, resnet101}."""
    if arch not in HEADS:
        raise ValueError(f"arch: expected one of {sorted(HEADS)}, got {arch!r}")
    if backbone not in RESNET_LAYOUTS:
        raise ValueError(f"backbone: expected one of {sorted(RESNET_LAYOUTS)}, got {backbone!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    resnet = DilatedResNet(backbone, width)
    if pretrained is not None:
        load_backbone_weights(resnet, pretrained)
    feat_channels = FEAT_CHANNELS_PER_WIDTH[backbone] * width
    head = HEADS[arch](resnet.layer4_channels, feat_channels, num_classes, feature_tap)
    aux_head = FCNHead(resnet.layer3_channels, num_classes) if aux else None
    feature_path = "head.refine" if feature_tap == "pre-dropout" else "head.dropout"
    return SegmentationModel(resnet, head, aux_head, feat_channels, feature_path=feature_path,
                             logits_path="head.classifier")


def build_segmentation_model(arch: str, backbone: str | None, num_classes: int, *, width: int = 64, aux: bool = True,
                             pretrained: Optional[str] = None, feature_tap: str = "pre-dropout",
                             feature: Optional[str] = None, logits: Optional[str] = None, role: str = "model"):
    """Any model of the registry: ``arch`` a name of ``MODEL_BACKBONES`` (``psp`` = ``pspnet``) on one of its
    backbones, or ``package.module:callable`` (called with num_classes=K; ``feature`` / ``logits``: its module
    paths). ``aux`` applies to deeplabv3/pspnet, ``width`` to the ResNets. ValueError names ``role``."""
    if is_factory(arch):
        return build_factory(arch, num_classes, feature, logits, role)
    if arch not in MODEL_BACKBONES:
        raise ValueError(f"{role}: expected one of {', '.join(MODEL_BACKBONES)} or package.module:callable, "
                         f"got {arch!r}")
    if backbone not in MODEL_BACKBONES[arch]:
        raise ValueError(f"{role} {arch}: expected a backbone among {', '.join(MODEL_BACKBONES[arch])}, got {backbone!r}")
    arch = ALIASES.get(arch, arch)
    if arch in HEADS:
        return build_model(arch, backbone, num_classes, width=width, aux=aux, pretrained=pretrained,
                           feature_tap=feature_tap)
    return build_family(arch, backbone, num_classes, width=width, pretrained=pretrained, feature_tap=feature_tap)
