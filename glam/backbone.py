"""ResNet trunk up to conv5 (torchvision `layer4`: 2048 channels, stride 32)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from glam.config import BACKBONE_CHANNELS


class ResNetTrunk(nn.Module):
    """torchvision ResNet without `avgpool` and `fc`; its keys match torchvision's."""

    def __init__(self, name: str = "resnet101") -> None:
        super().__init__()
        if name not in BACKBONE_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONE_CHANNELS)}")
        # zero_init_residual: a randomly initialised trunk starts near identity per block, so
        # its activations stay O(1) instead of growing ~100x per stage in eval mode.
        net = torchvision.models.get_model(name, weights=None, zero_init_residual=True)
        for child_name, child in net.named_children():
            if child_name not in ("avgpool", "fc"):
                self.add_module(child_name, child)
        self.out_channels = BACKBONE_CHANNELS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) ImageNet-normalised RGB -> F: (B, C, ceil(H/32), ceil(W/32))
        for module in self.children():
            x = module(x)
        return x
