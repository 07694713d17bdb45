"""Dilated ResNet-18/50/101 (output stride 8) with torchvision's parameter names.

Layer3 and layer4 keep stride 1 and use dilation 2 and 4 instead, so a B×3×H×W input gives
layer3 and layer4 maps of ceil(H/8)×ceil(W/8). Module and parameter names are those of
torchvision's ``ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``downsample.0/1``) minus
``fc``, so its ImageNet state dicts load into this module (see ``frkd.models.pretrained``).
``width`` is the stem width: stage i has ``width * 2**i`` planes (64 = torchvision sizes).
``output_stride=32`` builds the plain ResNet instead (strides 4/8/16/32, no dilation), whose
``stages`` feed an FPN head (UperNet).
"""
import torch
from torch import nn

# backbone name -> (block kind, blocks per stage)
RESNET_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
# output stride -> (stage strides, stage dilations)
STAGE_LAYOUTS = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 32: ((1, 2, 2, 2), (1, 1, 1, 1))}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs (torchvision names conv1/bn1/conv2/bn2), both dilated."""

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, dilated) → 1×1 ×4, torchvision's v1.5 layout and names."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class DilatedResNet(nn.Module):
    """ResNet backbone returning (layer3, layer4) feature maps, both at output stride 8.

    Channels: layer3 has ``4 * width * expansion``, layer4 ``8 * width * expansion``
    (expansion 1 for resnet18, 4 for resnet50/101); available as ``layer3_channels`` and
    ``layer4_channels``.
    """

    def __init__(self, name: str, width: int = 64, output_stride: int = 8):
        super().__init__()
        if name not in RESNET_LAYOUTS:
            raise ValueError(f"backbone: expected one of {sorted(RESNET_LAYOUTS)}, got {name!r}")
        if output_stride not in STAGE_LAYOUTS:
            raise ValueError(f"output_stride: expected one of {sorted(STAGE_LAYOUTS)}, got {output_stride!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width: expected a positive int, got {width!r}")
        kind, depths = RESNET_LAYOUTS[name]
        block = BLOCKS[kind]
        self.name = name
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels, previous_dilation = width, 1
        for i, (depth, stride, dilation) in enumerate(zip(depths, *STAGE_LAYOUTS[output_stride])):
            planes = width * 2**i
            layer = self._make_layer(block, in_channels, planes, depth, stride, dilation, previous_dilation)
            self.add_module(f"layer{i + 1}", layer)
            in_channels, previous_dilation = planes * block.expansion, dilation
        self.stage_channels = tuple(width * 2**i * block.expansion for i in range(4))
        self.layer3_channels = 4 * width * block.expansion
        self.layer4_channels = 8 * width * block.expansion
        self.frozen_stages = -1
        self._init_weights()

    def freeze_stages(self, frozen_stages: int) -> None:
        """Freezes the stem (``frozen_stages`` >= 0) and layer1..layer<frozen_stages>, as mmseg's ResNet
        ``frozen_stages``: no gradients, and their BatchNorms stay in eval mode (running statistics kept).
        -1 freezes nothing."""
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages: expected an int in [-1, 4], got {frozen_stages!r}")
        self.frozen_stages = frozen_stages
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def train(self, mode: bool = True) -> "DilatedResNet":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    @staticmethod
    def _make_layer(block, in_channels, planes, depth, stride, dilation, previous_dilation) -> nn.Sequential:
        """One stage; as torchvision, its first block uses the previous stage's dilation."""
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        blocks = [block(in_channels, planes, stride, previous_dilation, downsample)]
        blocks += [block(out_channels, planes, 1, dilation) for _ in range(depth - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x B×3×H×W -> (layer3, layer4), each B×C×ceil(H/8)×ceil(W/8)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x B×3×H×W -> [layer1, layer2, layer3, layer4] maps (``stage_channels`` channels)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out.append(x)
        return out
