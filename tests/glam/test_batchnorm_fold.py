"""Folding batch norms into convolutions keeps the function."""

from __future__ import annotations

import torch

from glam import GlamConfig, build_glam
from glam.batchnorm_fold import fold_batchnorm


def test_folded_model_computes_the_same_descriptor() -> None:
    model = build_glam(config=GlamConfig(backbone="resnet50", reduced_channels=32), seed=5)
    with torch.no_grad():  # non-trivial running statistics, as in a trained model
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    fused = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    x = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)
