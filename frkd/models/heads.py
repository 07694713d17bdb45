"""Segmentation heads on stride-8 backbone maps: DeepLabV3 (ASPP), PSPNet, auxiliary FCN.

Every head maps B×C_in×h×w to B×K×h×w logits; the main heads also return the penultimate
feature (B×channels×h×w) that distillation losses use: after the 3×3 conv+BN+ReLU
(``feature_tap="pre-dropout"``) or after the Dropout(0.1) that follows it, as CIRKD taps it
(``"post-dropout"``; the same tensor in eval mode).
"""
import torch
import torch.nn.functional as F
from torch import nn

ASPP_RATES = (12, 24, 36)
PYRAMID_SIZES = (1, 2, 3, 6)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AtrousConv2d(nn.Conv2d):
    """3×3 conv with dilation d and padding d that skips taps lying wholly in the padding.

    When d ≥ h (or w) every off-centre row (column) of the kernel reads only zero padding, so
    the conv equals the one with that centre row (column) alone: same output and gradients,
    much less work on small maps (a 64×64 crop gives 8×8 maps against rates 12/24/36).
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation[0]
        rows = slice(1, 2) if d >= x.shape[-2] else slice(0, 3)
        cols = slice(1, 2) if d >= x.shape[-1] else slice(0, 3)
        padding = (0 if d >= x.shape[-2] else d, 0 if d >= x.shape[-1] else d)
        return F.conv2d(x, self.weight[:, :, rows, cols], None, 1, padding, d)


class ImagePooling(nn.Module):
    """Global average pool → 1×1 conv+BN+ReLU → broadcast back to h×w."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.project = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, three dilated 3×3 and image pooling, projected."""

    def __init__(self, in_channels: int, out_channels: int, rates=ASPP_RATES):
        super().__init__()
        branches = [conv_bn_relu(in_channels, out_channels)]
        for rate in rates:
            branches.append(nn.Sequential(
                AtrousConv2d(in_channels, out_channels, rate), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
            ))
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(conv_bn_relu(len(branches) * out_channels, out_channels), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class PyramidPooling(nn.Module):
    """PSPNet pyramid: x concatenated with 1×1/2×2/3×3/6×6 pooled, reduced, upsampled maps (2·C_in)."""

    def __init__(self, in_channels: int, sizes=PYRAMID_SIZES):
        super().__init__()
        self.sizes = tuple(sizes)
        self.reduce = nn.ModuleList(conv_bn_relu(in_channels, in_channels // len(self.sizes)) for _ in self.sizes)
        self.out_channels = in_channels + len(self.sizes) * (in_channels // len(self.sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(reduce(F.adaptive_avg_pool2d(x, s)), size=size, mode="bilinear", align_corners=False)
            for s, reduce in zip(self.sizes, self.reduce)
        ]
        return torch.cat([x, *pooled], dim=1)


FEATURE_TAPS = ("pre-dropout", "post-dropout")


class TappedClassifier(nn.Module):
    """Dropout 0.1 → 1×1 classifier; returns (logits, feat) with feat tapped before or after the dropout."""

    def _classify(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dropped = self.dropout(feat)
        return self.classifier(dropped), dropped if self.feature_tap == "post-dropout" else feat

    def _set_tap(self, feature_tap: str) -> None:
        if feature_tap not in FEATURE_TAPS:
            raise ValueError(f"feature_tap: expected one of {FEATURE_TAPS}, got {feature_tap!r}")
        self.feature_tap = feature_tap


class DeepLabV3Head(TappedClassifier):
    """ASPP → 3×3 conv+BN+ReLU (feat) → dropout 0.1 → 1×1 classifier; returns (logits, feat)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, feature_tap: str = "pre-dropout"):
        super().__init__()
        self._set_tap(feature_tap)
        self.aspp = ASPP(in_channels, channels)
        self.refine = conv_bn_relu(channels, channels, 3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._classify(self.refine(self.aspp(x)))


class PSPHead(TappedClassifier):
    """Pyramid pooling → 3×3 conv+BN+ReLU (feat) → dropout 0.1 → 1×1 classifier; returns (logits, feat)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, feature_tap: str = "pre-dropout"):
        super().__init__()
        self._set_tap(feature_tap)
        self.pyramid = PyramidPooling(in_channels)
        self.refine = conv_bn_relu(self.pyramid.out_channels, channels, 3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._classify(self.refine(self.pyramid(x)))


class FCNHead(nn.Module):
    """Auxiliary head: 3×3 conv+BN+ReLU to C_in/4 → dropout 0.1 → 1×1 classifier (logits only)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        channels = max(1, in_channels // 4)
        self.block = nn.Sequential(conv_bn_relu(in_channels, channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block(x))
