"""Inference-time folding of batch norms into the preceding convolutions of the ResNet trunk.

In eval mode BN(conv(x)) = conv'(x) with W' = W γ/σ and b' = (b - μ) γ/σ + β: the same
function without the memory-bound BN passes (about 20% of a bf16 forward on the CPU).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from glam.backbone import RESIDUAL_BLOCKS, Bottleneck
from glam.model import GLAM


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
    setattr(parent, bn_name, nn.Identity())


def fold_batchnorm(model: GLAM) -> GLAM:
    """A copy of ``model`` in eval mode with every backbone BN folded into its convolution."""
    fused = copy.deepcopy(model).eval()
    trunk = fused.backbone
    _fold_pair(trunk, "conv1", "bn1")
    for block in trunk.modules():
        if isinstance(block, RESIDUAL_BLOCKS):
            n_convs = 3 if isinstance(block, Bottleneck) else 2
            for i in range(1, n_convs + 1):
                _fold_pair(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                _fold_pair(block.downsample, "0", "1")
    return fused
