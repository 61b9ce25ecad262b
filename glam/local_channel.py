"""Local channel attention of GLAM (arXiv 2107.08000, §3.1, Eq. 1).

ECA-style: Wang et al., "ECA-Net: Efficient Channel Attention", CVPR 2020, arXiv 1910.03151.
"""

from __future__ import annotations

import torch
from torch import nn


class LocalChannelAttention(nn.Module):
    """A_c^l = sigmoid(Conv1d_k(GAP(F))); F_c^l = F ⊙ A_c^l + F (Eq. 1)."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """A_c^l: (B, C, 1, 1) from F: (B, C, H, W)."""
        b, c = f.shape[:2]
        y = f.mean(dim=(-2, -1)).view(b, 1, c)  # GAP over the actual H x W: (B, 1, C)
        return torch.sigmoid(self.conv(y)).view(b, c, 1, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # F_c^l: (B, C, H, W)
        return f * self.attention(f) + f
