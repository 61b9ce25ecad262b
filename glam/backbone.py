"""ResNet trunk up to conv5 (torchvision's `layer4`: 2048 channels, stride 32).

The trunk is built here, not taken from torchvision: importing torchvision loads
torch._dynamo and sympy, seconds in every process that builds a model (each Ray actor, each
training worker). Module names, parameter keys, shapes, the order of modules and the random
initialisation are torchvision's (He et al., CVPR 2016, v1.5: stride 2 in the 3x3 conv of a
bottleneck), so torchvision and converted checkpoints load as they are, and a seeded random
trunk equals torchvision's (``tests/glam/test_backbone.py`` checks both).
"""

from __future__ import annotations

import torch
from torch import nn

from glam.config import BACKBONE_CHANNELS

# name -> (block, blocks per stage)
_DEPTHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and the identity (ResNet18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv(in_ch, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(width, width, 3)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4, and the identity (ResNet50+)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv(in_ch, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, width * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


RESIDUAL_BLOCKS = (BasicBlock, Bottleneck)


class ResNetTrunk(nn.Module):
    """A ResNet without `avgpool` and `fc`; its keys match torchvision's."""

    def __init__(self, name: str = "resnet101") -> None:
        super().__init__()
        if name not in BACKBONE_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONE_CHANNELS)}")
        kind, depths = _DEPTHS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = 64
        for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            stride = 1 if stage == 0 else 2
            out_ch = width * block.expansion
            downsample = None
            if stride != 1 or in_ch != out_ch:
                downsample = nn.Sequential(_conv(in_ch, out_ch, 1, stride), nn.BatchNorm2d(out_ch))
            layers: list[nn.Module] = [block(in_ch, width, stride, downsample)]
            layers += [block(out_ch, width, 1, None) for _ in range(1, blocks)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
            in_ch = out_ch
        # torchvision's classifier is built (and dropped) only for its random draws: with it, a
        # seeded random trunk is torchvision's (the draws of every later init follow it).
        nn.Linear(in_ch, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero_init_residual: a randomly initialised trunk starts near identity per block, so
        # its activations stay O(1) instead of growing ~100x per stage in eval mode.
        for m in self.modules():
            if isinstance(m, RESIDUAL_BLOCKS):
                nn.init.zeros_(m.last_norm().weight)
        self.out_channels = BACKBONE_CHANNELS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) ImageNet-normalised RGB -> F: (B, C, ceil(H/32), ceil(W/32))
        for module in self.children():
            x = module(x)
        return x
