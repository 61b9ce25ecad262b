"""GLAM with its training head: descriptors for retrieval, ArcFace logits for the loss."""

from __future__ import annotations

import torch
from torch import nn

from glam.arcface import ArcFaceHead
from glam.model import GLAM


class GlamClassifier(nn.Module):
    """GLAM (the part exported for extraction) followed by an ArcFace head (training only)."""

    def __init__(self, glam: GLAM, head: ArcFaceHead) -> None:
        super().__init__()
        if head.weight.shape[1] != glam.config.dim:
            raise ValueError(
                f"head dimension {head.weight.shape[1]} != descriptor dim {glam.config.dim}"
            )
        self.glam = glam
        self.head = head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin logits (B, K), plain cos θ (B, K)) for images x: (B, 3, H, W)."""
        d = self.glam(x)  # (B, dim), unit norm
        return self.head(d, labels), self.head.cosine(d).detach()
