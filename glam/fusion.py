"""Fusion of the local, global and original features (arXiv 2107.08000, §3.3, Eq. 7)."""

from __future__ import annotations

import torch
from torch import nn


class GlobalLocalFusion(nn.Module):
    """F^gl = w_l F^l + w_g F^g + w F, with (w_l, w_g, w) = softmax of three learnable scalars.

    ``terms`` = 2 serves the single-stream variants of Table 4 (Eq. 7 without the absent
    stream's term): w_x F^x + w F with (w_x, w) = softmax of two scalars.
    """

    def __init__(self, terms: int = 3) -> None:
        super().__init__()
        if terms < 2:
            raise ValueError(f"a fusion needs at least two terms, got {terms}")
        # Equal logits: the untrained fusion is the plain average of the terms.
        self.logits = nn.Parameter(torch.zeros(terms))

    def weights(self) -> torch.Tensor:
        """(w_l, w_g, w) (or (w_x, w)): positive, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """The weighted sum of ``features`` (each (B, C, H, W)), in the order of the logits."""
        if len(features) != len(self.logits):
            raise ValueError(f"expected {len(self.logits)} feature maps, got {len(features)}")
        w = self.weights().to(features[0].dtype)
        out = w[0] * features[0]
        for i in range(1, len(features)):
            out = out + w[i] * features[i]
        return out
