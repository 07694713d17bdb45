"""MobileNetV3-Small/Large at output stride 8, with torchvision's module and parameter names.

Written here because torchvision's network stops at stride 16 (its ``dilated`` option) and torchvision
is not a dependency; the names (``features.<i>.block.<j>.<0|1>``, ``fc1``/``fc2`` of squeeze-excitation,
the last 1×1 conv ``features.<n>``) are torchvision's, so its ImageNet files
(``mobilenet_v3_small-047dcff4.pth``, ``mobilenet_v3_large-8738ca79.pth`` / ``-5c1a4163.pth``) load
strictly, less their ``classifier.*``. The two stride-2 blocks past stride 8 keep stride 1 and dilate
their depthwise convs (2, then 4) from there on, as CIRKD's ssseg MobileNetV3. ``forward`` returns the
last map: B×576 (small) or B×960 (large) × ceil(H/8)×ceil(W/8).
"""
import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_STRIDE = 8
BN_EPS, BN_MOMENTUM = 0.001, 0.01  # torchvision's MobileNetV3 BatchNorm
# (kernel, expanded, out channels, squeeze-excitation, activation, stride), torchvision's tables
ARCHS = {
    "mobilenetv3_small": (16, [
        (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]),
    "mobilenetv3_large": (16, [
        (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)]),
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` ≥ ``divisor`` that keeps at least 90 % of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_act(in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, activation=None):
    """Conv (no bias) → BatchNorm → activation: a Sequential named 0/1/2 as torchvision's Conv2dNormActivation."""
    padding = (kernel_size - 1) // 2 * dilation
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
              nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: avg pool → fc1 (1×1) → ReLU → fc2 (1×1) → hard sigmoid, times the input."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """[1×1 expand] → k×k depthwise (strided or dilated) → [SE] → 1×1 project, + input when shapes agree."""

    def __init__(self, in_channels, kernel, expanded, out_channels, use_se, activation, stride, dilation):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = []
        if expanded != in_channels:
            layers.append(conv_norm_act(in_channels, expanded, 1, activation=act))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, dilation, groups=expanded, activation=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(conv_norm_act(expanded, out_channels, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """``name`` ∈ {mobilenetv3_small, mobilenetv3_large}; x B×3×H×W -> B×out_channels×ceil(H/8)×ceil(W/8)."""

    def __init__(self, name: str):
        super().__init__()
        if name not in ARCHS:
            raise ValueError(f"backbone: expected one of {sorted(ARCHS)}, got {name!r}")
        stem, table = ARCHS[name]
        layers = [conv_norm_act(3, stem, 3, stride=2, activation=nn.Hardswish)]
        in_channels, stride_so_far, dilation = stem, 2, 1
        for kernel, expanded, out_channels, use_se, activation, stride in table:
            if stride == 2 and stride_so_far >= OUTPUT_STRIDE:
                stride, dilation = 1, dilation * 2
            stride_so_far *= stride
            layers.append(InvertedResidual(in_channels, kernel, expanded, out_channels, use_se, activation, stride,
                                           dilation))
            in_channels = out_channels
        self.out_channels = 6 * in_channels
        layers.append(conv_norm_act(in_channels, self.out_channels, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.name = name
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
