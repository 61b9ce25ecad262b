"""Global spatial attention of GLAM (arXiv 2107.08000, §3.2, Eq. 6).

A non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018, arXiv 1711.07971).
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalSpatialAttention(nn.Module):
    """G_s = Conv1x1_{c'->C}(V_s A_s^g), A_s^g = softmax(K_s^T Q_s); F^g = F_c^g ⊙ G_s + F_c^g.

    Q_s, K_s, V_s = Conv1x1_{C->c'}(F): (c', HW) each. A_s^g is HW x HW and normalised over
    the locations m for every query position n (columns sum to 1).
    """

    def __init__(self, channels: int, reduced_channels: int, softmax_scale: float = 1.0) -> None:
        super().__init__()
        self.conv_q = nn.Conv2d(channels, reduced_channels, 1)
        self.conv_k = nn.Conv2d(channels, reduced_channels, 1)
        self.conv_v = nn.Conv2d(channels, reduced_channels, 1)
        self.conv_out = nn.Conv2d(reduced_channels, channels, 1)
        # NOTE: not in paper: softmax scaling is a configuration choice (GlamConfig).
        self.softmax_scale = softmax_scale

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """A_s^g: (B, HW, HW), entry [m, n] = softmax_m(K_s[:, m] · Q_s[:, n])."""
        q = self.conv_q(f).flatten(2)  # Q_s: (B, c', HW)
        k = self.conv_k(f).flatten(2)  # K_s: (B, c', HW)
        logits = k.transpose(1, 2) @ q  # K_s^T Q_s: (B, HW, HW)
        return torch.softmax(logits * self.softmax_scale, dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """G_s: (B, C, H, W) from F: (B, C, H, W)."""
        b, _, h, w = f.shape
        v = self.conv_v(f).flatten(2)  # V_s: (B, c', HW)
        y = v @ self.attention(f)  # V_s A_s^g: (B, c', HW)
        return self.conv_out(y.view(b, -1, h, w))
