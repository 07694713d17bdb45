"""The model registry of the trainer: frkd's DeepLabV3/PSPNet and CIRKD's student families by CIRKD's
names, and a user's own factory ``package.module:callable``.

Every model built here returns ``SegOutput(logits, aux, feat)`` and has ``feat_channels``,
``feature_path`` / ``logits_path`` (the modules a ``frkd.distill.Distiller`` hooks) and ``backbone``
(the part trained at the base LR). ``feat`` is None where the feature is read by path only
(SegFormer, user models).

Written here: the heads (DeepLabV3 / PSP heads of ``heads``, 128 channels on the mobile backbones as
CIRKD; UperNet-lite: PPM + FPN with 128 channels on a plain ResNet-18), MobileNetV3 at stride 8
(``mobilenetv3``). From ``transformers`` (the ``models`` extra): SegFormer (MiT-B0…B4 with its all-MLP
decoder) and MobileViT-XX-Small (at output stride 8).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from .heads import DeepLabV3Head, PSPHead, TappedClassifier, conv_bn_relu
from .mobilenetv3 import MobileNetV3
from .pretrained import load_backbone_weights, load_transformers_weights
from .resnet import DilatedResNet
from .segmentation_model import SegOutput

RESNETS = ("resnet18", "resnet50", "resnet101")
MOBILENETS = ("mobilenetv3_small", "mobilenetv3_large")
MOBILEVITS = ("mobilevit_xx_small",)
MITS = ("MiT_B0", "MiT_B1", "MiT_B2", "MiT_B3", "MiT_B4")
# --student-model / --teacher-model name -> the backbones it takes (CIRKD's names)
MODEL_BACKBONES = {
    "deeplabv3": RESNETS, "pspnet": RESNETS, "psp": RESNETS,
    "deeplabv3_mobilenet_ssseg": MOBILENETS, "psp_mobile": MOBILENETS + MOBILEVITS,
    "deeplab_mobile": MOBILEVITS, "upernet_lite": ("resnet18",), "segformer": MITS,
}
ALIASES = {"psp": "pspnet"}
BACKBONES = RESNETS + MOBILENETS + MOBILEVITS + MITS
MOBILE_HEAD_CHANNELS = 128  # CIRKD's heads on MobileNetV3 / MobileViT
UPERNET_FPN_CHANNELS, UPERNET_PPM_CHANNELS = 128, 512  # CIRKD's upernet_lite
# MiT: (hidden sizes, depths, decoder channels) of SegFormer B0..B4; the rest is transformers' default
MIT_CONFIGS = {
    "MiT_B0": ((32, 64, 160, 256), (2, 2, 2, 2), 256), "MiT_B1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "MiT_B2": ((64, 128, 320, 512), (3, 4, 6, 3), 768), "MiT_B3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "MiT_B4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
}
# MobileViT-XX-Small as apple/mobilevit-xx-small
MOBILEVIT_XX_SMALL = dict(hidden_sizes=(64, 80, 96), neck_hidden_sizes=(16, 16, 24, 48, 64, 80, 320),
                          expand_ratio=2.0)
# the public ImageNet files each backbone loads (docs/distill.md)
PRETRAINED_FILES = {
    "resnet18": "torchvision resnet18-f37072fd.pth", "resnet50": "torchvision resnet50-0676ba61.pth (or -19c8e357)",
    "resnet101": "torchvision resnet101-63fe2227.pth (or -5d3b4d8f)",
    "mobilenetv3_small": "torchvision mobilenet_v3_small-047dcff4.pth",
    "mobilenetv3_large": "torchvision mobilenet_v3_large-8738ca79.pth or -5c1a4163.pth",
    "mobilevit_xx_small": "apple/mobilevit-xx-small pytorch_model.bin / model.safetensors",
    **{name: f"nvidia/mit-b{name[-1]} pytorch_model.bin / model.safetensors" for name in MITS},
}


def is_factory(name: str) -> bool:
    """A ``package.module:callable`` model name."""
    return isinstance(name, str) and ":" in name


def transformers_module():
    try:
        import transformers
    except ImportError as error:
        raise ValueError("SegFormer and MobileViT need the transformers package: pip install 'frkd[models]'") \
            from error
    return transformers


class HeadedModel(nn.Module):
    """``backbone(x)`` -> one map -> ``head`` (a TappedClassifier) -> ``SegOutput(logits, None, feat)``."""

    def __init__(self, backbone: nn.Module, head: TappedClassifier, feat_channels: int):
        super().__init__()
        self.backbone, self.head, self.feat_channels = backbone, head, feat_channels
        self.feature_path = "head.refine" if head.feature_tap == "pre-dropout" else "head.dropout"
        self.logits_path = "head.classifier"

    def forward(self, x: torch.Tensor) -> SegOutput:
        logits, feat = self.head(self.backbone(x))
        return SegOutput(logits, None, feat)


class MobileViTBackbone(nn.Module):
    """transformers' MobileViTModel at output stride 8 with its 1×1 expansion (320 channels for XX-Small);
    ``pretrained``: apple/mobilevit-xx-small's weights file."""

    def __init__(self, pretrained: str | None = None):
        super().__init__()
        t = transformers_module()
        config = t.MobileViTConfig(**MOBILEVIT_XX_SMALL, output_stride=8)
        self.mobilevit = t.MobileViTModel(config, expand_output=True) if pretrained is None else \
            load_transformers_weights(t.MobileViTModel, config, pretrained, new_prefixes=(),
                                      names="apple/mobilevit-xx-small names")
        self.out_channels = config.neck_hidden_sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mobilevit(pixel_values=x).last_hidden_state


class UperNetHead(TappedClassifier):
    """UperNet on stage maps at strides 4/8/16/32: pyramid pooling on the last, FPN top-down sum, the four
    levels upsampled to stride 4, concatenated and fused by a 3×3 conv+BN+ReLU (feat) → dropout 0.1 →
    1×1 classifier. (CIRKD's upernet_lite has no dropout before its classifier.)"""

    def __init__(self, in_channels: tuple[int, ...], channels: int, num_classes: int, feature_tap: str,
                 pool_sizes=(1, 2, 3, 6)):
        super().__init__()
        self._set_tap(feature_tap)
        top = in_channels[-1]
        self.pool_sizes = tuple(pool_sizes)
        self.pool_convs = nn.ModuleList(conv_bn_relu(top, UPERNET_PPM_CHANNELS) for _ in self.pool_sizes)
        self.ppm_fuse = conv_bn_relu(top + len(self.pool_sizes) * UPERNET_PPM_CHANNELS, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.refine = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, stages: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        top = stages[-1]
        pooled = [F.interpolate(conv(F.adaptive_avg_pool2d(top, s)), size=top.shape[-2:], mode="bilinear",
                                align_corners=False) for s, conv in zip(self.pool_sizes, self.pool_convs)]
        f = self.ppm_fuse(torch.cat([top, *pooled], dim=1))
        levels = [f]
        for i in reversed(range(len(stages) - 1)):
            lateral = self.lateral[i](stages[i])
            f = lateral + F.interpolate(f, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            levels.insert(0, self.fpn[i](f))
        size = levels[0].shape[-2:]
        fused = torch.cat([levels[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                                         for x in levels[1:]], dim=1)
        return self._classify(self.refine(fused))


class StagesBackbone(nn.Module):
    """A plain ResNet whose forward returns its four stage maps (for UperNet)."""

    def __init__(self, resnet: DilatedResNet):
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.resnet.stages(x)


class SegFormer(nn.Module):
    """transformers' SegformerForSemanticSegmentation (MiT encoder + all-MLP decoder): logits and the fused
    decoder feature at stride 4; ``pretrained``: nvidia/mit-b<i>'s weights file for the encoder."""

    def __init__(self, name: str, num_classes: int, feature_tap: str, pretrained: str | None = None):
        super().__init__()
        t = transformers_module()
        hidden, depths, decoder = MIT_CONFIGS[name]
        heads = (1, 2, 5, 8)
        config = t.SegformerConfig(hidden_sizes=list(hidden), depths=list(depths), decoder_hidden_size=decoder,
                                   num_attention_heads=list(heads), num_labels=num_classes)
        cls = t.SegformerForSemanticSegmentation
        self.net = cls(config) if pretrained is None else load_transformers_weights(
            cls, config, pretrained, new_prefixes=("decode_head.",), names=f"nvidia/mit-b{name[-1]} names")
        self.feat_channels = decoder
        self.feature_path = "net.decode_head." + ("activation" if feature_tap == "pre-dropout" else "dropout")
        self.logits_path = "net.decode_head.classifier"

    @property
    def backbone(self) -> nn.Module:
        return self.net.segformer

    def forward(self, x: torch.Tensor) -> SegOutput:
        return SegOutput(self.net(pixel_values=x).logits, None, None)


class FactoryModel(nn.Module):
    """A user's model (``model``) whose logits the module at ``logits_path`` emits: SegOutput(logits, None, None).
    Paths are the user's, under ``model.``."""

    def __init__(self, model: nn.Module, feature_path: str, logits_path: str, feat_channels: int):
        super().__init__()
        self.model, self.feat_channels = model, feat_channels
        self.feature_path, self.logits_path = f"model.{feature_path}", f"model.{logits_path}"
        self._logits_module = dict(model.named_modules())[logits_path]

    @property
    def backbone(self) -> nn.Module | None:
        return getattr(self.model, "backbone", None)

    def forward(self, x: torch.Tensor) -> SegOutput:
        captured = []
        handle = self._logits_module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            self.model(x)
        finally:
            handle.remove()
        return SegOutput(captured[-1], None, None)


def build_factory(name: str, num_classes: int, feature_path: str | None, logits_path: str | None,
                  role: str) -> FactoryModel:
    """``package.module:callable`` called with num_classes=K; ValueError naming ``role`` on any misfit. The
    feature's channels come from one eval-mode forward of a 1×3×64×64 zero image (C of B×C×h×w, or of B×N×C
    tokens)."""
    from ..distill import find_module

    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{role} {name}: expected an importable package.module:callable, got {error}") from error
    if not feature_path or not logits_path:
        raise ValueError(f"{role} {name}: a module:callable model needs its feature and logits module paths "
                         "(--student-feature/--student-logits, --teacher-feature/--teacher-logits)")
    model = factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{role} {name}: expected the callable to return an nn.Module, got {type(model).__name__}")
    feature = find_module(model, feature_path, f"{role} {name} feature")
    find_module(model, logits_path, f"{role} {name} logits")
    shapes = []
    handle = feature.register_forward_hook(lambda m, i, o: shapes.append(tuple((o[0] if isinstance(o, tuple) else o).shape)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64))
    finally:
        handle.remove()
        model.train(was_training)
    if not shapes or len(shapes[-1]) not in (3, 4):
        raise ValueError(f"{role} {name} feature {feature_path!r}: expected a module that emits B×C×H×W or B×N×C, "
                         f"got {shapes[-1] if shapes else 'no output (it did not run)'}")
    channels = shapes[-1][1] if len(shapes[-1]) == 4 else shapes[-1][-1]
    return FactoryModel(model, feature_path, logits_path, channels)


def build_family(arch: str, backbone: str, num_classes: int, *, width: int = 64, pretrained: str | None = None,
                 feature_tap: str = "pre-dropout") -> nn.Module:
    """One of CIRKD's student families (not deeplabv3/pspnet, which ``build_model`` builds)."""
    if backbone in MOBILENETS:
        net = MobileNetV3(backbone)
        if pretrained is not None:
            load_backbone_weights(net, pretrained, ignored=("classifier.",), names="torchvision MobileNetV3 names")
        channels = net.out_channels
    elif backbone in MOBILEVITS:
        net = MobileViTBackbone(pretrained)
        channels = net.out_channels
    elif arch == "upernet_lite":
        resnet = DilatedResNet(backbone, width, output_stride=32)
        if pretrained is not None:
            load_backbone_weights(resnet, pretrained)
        head = UperNetHead(resnet.stage_channels, UPERNET_FPN_CHANNELS, num_classes, feature_tap)
        return HeadedModel(StagesBackbone(resnet), head, UPERNET_FPN_CHANNELS)
    else:  # segformer
        return SegFormer(backbone, num_classes, feature_tap, pretrained)
    head_class = DeepLabV3Head if arch in ("deeplabv3_mobilenet_ssseg", "deeplab_mobile") else PSPHead
    return HeadedModel(net, head_class(channels, MOBILE_HEAD_CHANNELS, num_classes, feature_tap),
                       MOBILE_HEAD_CHANNELS)
