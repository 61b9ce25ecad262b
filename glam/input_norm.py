"""The input normalisation of weights trained with another one than ImageNet's.

Extraction feeds every model RGB images normalised with the ImageNet mean and std
(``glam.preprocess``). Weights converted from elsewhere may expect other statistics; this module
maps one to the other exactly, per channel: x_src = (x σ_in + μ_in - μ_src) / σ_src. It is in
the model's graph only when the config names another normalisation (``GlamConfig.input_mean``).

It cannot be folded into the first convolution exactly: that convolution zero-pads in the
source's normalised space, which is not zero in ImageNet's.
"""

from __future__ import annotations

import torch
from torch import nn

from glam.preprocess import IMAGENET_MEAN, IMAGENET_STD


class InputNormalization(nn.Module):
    """ImageNet-normalised RGB (B, 3, H, W) -> the same images normalised with (mean, std)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        scale = torch.tensor(IMAGENET_STD, dtype=torch.float64) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN, dtype=torch.float64) - torch.tensor(mean)) / (
            torch.tensor(std)
        )
        # Not persistent: derived from the config, so checkpoints hold no extra keys.
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", scale.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
