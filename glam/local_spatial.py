"""Local spatial attention of GLAM (arXiv 2107.08000, §3.1, Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

from glam.config import SpatialActivation


class LocalSpatialAttention(nn.Module):
    """A_s^l from multi-dilation 3x3 convolutions; F^l = F_c^l ⊙ A_s^l + F_c^l (Eq. 2).

    F' = Conv1x1_{C->c'}(F); A_s^l = Conv1x1_{4c'->1}([F', D_1(F'), D_2(F'), D_3(F')]) where
    D_d is a 3x3 convolution with dilation d.
    """

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        dilations: tuple[int, ...] = (1, 2, 3),
        activation: SpatialActivation = "none",
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.dilated = nn.ModuleList(
            nn.Conv2d(reduced_channels, reduced_channels, 3, padding=d, dilation=d)
            for d in dilations
        )
        self.fuse = nn.Conv2d(reduced_channels * (len(dilations) + 1), 1, 1)
        self.activation = activation

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """A_s^l: (B, 1, H, W) from F: (B, C, H, W)."""
        f_reduced = self.reduce(f)  # F': (B, c', H, W)
        stacked = torch.cat([f_reduced, *(conv(f_reduced) for conv in self.dilated)], dim=1)
        a = self.fuse(stacked)  # (B, 1, H, W)
        # NOTE: not in paper: the activation is a configuration choice (GlamConfig).
        return torch.sigmoid(a) if self.activation == "sigmoid" else a

    def forward(self, f: torch.Tensor, f_cl: torch.Tensor) -> torch.Tensor:
        """F^l from F (for A_s^l, computed in parallel) and F_c^l: both (B, C, H, W)."""
        return f_cl * self.attention(f) + f_cl
