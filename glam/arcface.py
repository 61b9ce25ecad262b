"""ArcFace: additive angular margin loss.

Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019, arXiv 1801.07698. GLAM is trained with it on GLDv2-clean (paper §4, margin 0.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import nn


class ArcFaceHead(nn.Module):
    """Class centres W (K, d) and the margin logits of ArcFace Eq. 3:

    L = -log e^{s cos(θ_y + m)} / (e^{s cos(θ_y + m)} + Σ_{j≠y} e^{s cos θ_j}),
    cos θ_j = <x / ||x||, W_j / ||W_j||>.
    """

    def __init__(self, dim: int, num_classes: int, margin: float, scale: float) -> None:
        super().__init__()
        if dim <= 0 or num_classes <= 0:
            raise ValueError(f"dim and num_classes must be positive, got {dim}, {num_classes}")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, π/2), got {margin}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.margin, self.scale = margin, scale
        self.weight = nn.Parameter(torch.empty(num_classes, dim))  # W: (K, d)
        # NOTE: not in paper: the centres' initialisation is not stated; Xavier uniform as in
        # the ArcFace reference implementation.
        nn.init.xavier_uniform_(self.weight)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """cos θ: (B, K) from descriptors x: (B, d), in the head's precision (fp32 under
        autocast)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = Fn.normalize(self.weight, dim=-1)
            return Fn.linear(Fn.normalize(x.to(w.dtype), dim=-1), w)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits s·cos(θ_y + m) at the label, s·cos θ_j elsewhere: (B, K)."""
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"labels must be (B,) for x {tuple(x.shape)}, got {tuple(labels.shape)}"
            )
        cos = self.cosine(x)  # (B, K)
        cos_y = cos.gather(1, labels[:, None]).clamp(-1.0, 1.0)  # (B, 1)
        sin_y = (1.0 - cos_y * cos_y).clamp(min=0.0).sqrt()
        m = self.margin
        target = cos_y * math.cos(m) - sin_y * math.sin(m)  # cos(θ_y + m)
        # NOTE: not in paper: where θ_y + m > π, cos(θ_y + m) stops decreasing in θ_y; the
        # ArcFace reference implementation then uses the CosFace-like cos θ_y - m·sin m.
        target = torch.where(cos_y > math.cos(math.pi - m), target, cos_y - m * math.sin(m))
        logits = cos.scatter(1, labels[:, None], target)
        return logits * self.scale


def arcface_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the ArcFace logits (Eq. 3 averaged over the batch)."""
    return Fn.cross_entropy(logits, labels)
