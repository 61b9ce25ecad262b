"""Fusion of the local, global and original features (arXiv 2107.08000, §3.3, Eq. 7)."""

from __future__ import annotations

import torch
from torch import nn


class GlobalLocalFusion(nn.Module):
    """F^gl = w_l F^l + w_g F^g + w F, with (w_l, w_g, w) = softmax of three learnable scalars."""

    def __init__(self) -> None:
        super().__init__()
        # Equal logits: the untrained fusion is the plain average of the three terms.
        self.logits = nn.Parameter(torch.zeros(3))

    def weights(self) -> torch.Tensor:
        """(w_l, w_g, w): (3,), positive, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, f_l: torch.Tensor, f_g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        w = self.weights().to(f.dtype)
        return w[0] * f_l + w[1] * f_g + w[2] * f
