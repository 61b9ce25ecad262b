"""Generalized-mean (GeM) pooling.

Radenović, Tolias, Chum, "Fine-tuning CNN image retrieval with no human annotation",
TPAMI 2018, arXiv 1711.02512: f_k = (mean_{h,w} x_{k,h,w}^p)^{1/p}, p learnable.
"""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """GeM pooling over the actual H x W; p = 1 is average pooling, p -> inf max pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) -> (B, C)
        p = self.p.to(x.dtype)
        x = x.clamp(min=self.eps)
        # (mean x^p)^(1/p) = m (mean (x/m)^p)^(1/p) with m = max x: same value, no overflow.
        m = x.amax(dim=(-2, -1), keepdim=True)
        return (x / m).pow(p).mean(dim=(-2, -1)).pow(1.0 / p) * m[..., 0, 0]
