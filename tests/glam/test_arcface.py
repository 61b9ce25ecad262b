"""ArcFace (arXiv 1801.07698, Eq. 3) against a float64 reference computed from the angles."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as Fn

from glam.arcface import ArcFaceHead, arcface_loss
from glam.classifier import GlamClassifier
from glam.config import GlamConfig
from glam.model import GLAM


def head(margin: float, scale: float, k: int = 5, d: int = 8, seed: int = 0) -> ArcFaceHead:
    torch.manual_seed(seed)
    return ArcFaceHead(d, k, margin, scale).double()


def reference_logits(x, w, labels, m, s) -> list[list[float]]:
    """s·cos θ_j, and s·cos(θ_y + m) at the label while θ_y + m ≤ π (else cos θ_y − m·sin m)."""
    out = []
    for i in range(x.shape[0]):
        row = []
        xi = x[i] / x[i].norm()
        for j in range(w.shape[0]):
            cos = float(xi @ (w[j] / w[j].norm()))
            if j == int(labels[i]):
                theta = math.acos(max(-1.0, min(1.0, cos)))
                cos = math.cos(theta + m) if theta + m <= math.pi else cos - m * math.sin(m)
            row.append(s * cos)
        out.append(row)
    return out


@pytest.mark.parametrize("m,s", [(0.3, 30.0), (0.5, 64.0), (0.0, 1.0)])
def test_logits_follow_eq3(m: float, s: float) -> None:
    h = head(m, s)
    x = torch.randn(6, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    got = h(x, labels)
    want = torch.tensor(reference_logits(x, h.weight.detach(), labels, m, s), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    # The loss is the cross-entropy of these logits (Eq. 3), averaged over the batch.
    ce = sum(-(want[i, labels[i]] - want[i].logsumexp(0)) for i in range(6)) / 6
    torch.testing.assert_close(arcface_loss(got, labels), ce, rtol=0, atol=1e-9)


def test_margin_past_pi_falls_back_and_stays_monotonic() -> None:
    h = head(0.5, 1.0, k=2, d=2)
    with torch.no_grad():
        h.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    angles = torch.linspace(0.0, math.pi, 200, dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin()], dim=1)  # θ to class 0 = angle
    target = h(x, torch.zeros(200, dtype=torch.long))[:, 0]
    assert torch.all(target[1:] <= target[:-1] + 1e-12)  # never rewards a larger angle
    past = angles + 0.5 > math.pi
    torch.testing.assert_close(
        target[past], angles[past].cos() - 0.5 * math.sin(0.5), rtol=0, atol=1e-9
    )


def test_margin_lowers_only_the_target_logit() -> None:
    x = torch.randn(4, 8, dtype=torch.float64)
    labels = torch.tensor([1, 1, 3, 0])
    plain, margin = head(0.0, 30.0)(x, labels), head(0.3, 30.0)(x, labels)
    mask = Fn.one_hot(labels, 5).bool()
    torch.testing.assert_close(plain[~mask], margin[~mask])
    assert torch.all(margin[mask] < plain[mask])


@pytest.mark.parametrize(
    "kw", [{"margin": -0.1}, {"margin": 2.0}, {"scale": 0.0}, {"num_classes": 0}]
)
def test_bad_arguments_are_refused(kw: dict[str, float]) -> None:
    args = {"dim": 8, "num_classes": 3, "margin": 0.3, "scale": 30.0, **kw}
    with pytest.raises(ValueError):
        ArcFaceHead(**args)  # type: ignore[arg-type]


def test_labels_must_match_the_batch() -> None:
    with pytest.raises(ValueError, match="labels"):
        head(0.3, 30.0)(torch.randn(3, 8, dtype=torch.float64), torch.tensor([0, 1]))


def test_classifier_checks_the_head_dimension_and_trains_end_to_end() -> None:
    cfg = GlamConfig(backbone="resnet18", dim=16, reduced_channels=32)
    with pytest.raises(ValueError, match="dimension"):
        GlamClassifier(GLAM(cfg), ArcFaceHead(8, 3, 0.3, 30.0))
    net = GlamClassifier(GLAM(cfg), ArcFaceHead(16, 3, 0.3, 30.0)).train()
    x, y = torch.randn(4, 3, 64, 96), torch.tensor([0, 1, 2, 0])
    logits, cos = net(x, y)
    assert logits.shape == cos.shape == (4, 3)
    arcface_loss(logits, y).backward()
    # Every parameter of GLAM and the head gets a gradient (nothing is cut off).
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_mixed_precision_training_step_on_cuda() -> None:
    """The GPU recipe: autocast in the dtype "auto" picks, loss scaling for fp16, finite
    gradients, and the loss falls on a repeated batch."""
    from glam.recipe import TrainConfig, autocast_dtype, build_optimizer

    device = torch.device("cuda")
    cfg = TrainConfig(lr=0.01)
    dtype = autocast_dtype(cfg, device)
    assert dtype in (torch.bfloat16, torch.float16)
    torch.manual_seed(0)
    glam = GLAM(GlamConfig(backbone="resnet18", dim=32, reduced_channels=32))
    net = GlamClassifier(glam, ArcFaceHead(32, 4, 0.3, 30.0)).to(device).train()
    net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(net.parameters(), cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(8, 3, 96, 128, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.arange(8, device=device) % 4
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=dtype):
            logits, _ = net(x, y)
        loss = arcface_loss(logits.float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert losses[-1] < losses[0]
