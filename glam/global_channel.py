"""Global channel attention of GLAM (arXiv 2107.08000, §3.2, Eq. 5)."""

from __future__ import annotations

import torch
from torch import nn


class GlobalChannelAttention(nn.Module):
    """G_c = V_c A_c^g with A_c^g = softmax(K_c^T Q_c); F_c^g = F ⊙ G_c (Eq. 5, no residual).

    Q_c = sigmoid(Conv1d_q(GAP(F))), K_c = sigmoid(Conv1d_k(GAP(F))): (1, C) each.
    A_c^g is C x C and normalised per column j over the channels i, so that every output
    channel j of G_c is a convex combination of the input channels of V_c (HW x C).
    """

    def __init__(self, kernel_size: int = 3, softmax_scale: float = 1.0) -> None:
        super().__init__()
        self.conv_q = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.conv_k = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        # NOTE: not in paper: softmax scaling is a configuration choice (GlamConfig).
        self.softmax_scale = softmax_scale

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """A_c^g: (B, C, C), entry [i, j] = softmax_i(K_c[i] Q_c[j]); columns sum to 1."""
        b, c = f.shape[:2]
        y = f.mean(dim=(-2, -1)).view(b, 1, c)  # GAP: (B, 1, C)
        q = torch.sigmoid(self.conv_q(y))  # Q_c: (B, 1, C)
        k = torch.sigmoid(self.conv_k(y))  # K_c: (B, 1, C)
        logits = k.transpose(1, 2) @ q  # K_c^T Q_c: (B, C, C)
        return torch.softmax(logits * self.softmax_scale, dim=1)  # over i, per column j

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """F_c^g: (B, C, H, W)."""
        b, c, h, w = f.shape
        v = f.flatten(2)  # V_c^T: (B, C, HW)
        # G_c^T = (V_c A_c^g)^T = A_c^g^T V_c^T: (B, C, HW)
        g = self.attention(f).transpose(1, 2) @ v
        return f * g.view(b, c, h, w)
