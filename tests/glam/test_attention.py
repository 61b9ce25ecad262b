"""Each attention block and the fusion against a float64 reference written from the paper's
equations (arXiv 2107.08000), independent of the implementation's helpers."""

from __future__ import annotations

import math

import pytest
import torch

from glam.fusion import GlobalLocalFusion
from glam.gem import GeM
from glam.global_channel import GlobalChannelAttention
from glam.global_spatial import GlobalSpatialAttention
from glam.local_channel import LocalChannelAttention
from glam.local_spatial import LocalSpatialAttention
from tests.support.glam_reference import (
    C_RED,
    C,
    conv1x1,
    feature_map,
    randomize,
    ref_global_channel,
    ref_global_spatial,
    ref_local_channel,
    ref_local_spatial_map,
)

SIZES = [(5, 7), (8, 8), (3, 11), (1, 1)]


@pytest.mark.parametrize("h,w", SIZES)
def test_local_channel_matches_eq1(h: int, w: int) -> None:
    m = randomize(LocalChannelAttention(3), seed=1)
    f = feature_map(h, w)
    expected = ref_local_channel(f, m.conv.weight.flatten().tolist())
    torch.testing.assert_close(m(f), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("activation", ["none", "sigmoid"])
def test_local_spatial_matches_eq2(h: int, w: int, activation: str) -> None:
    dilations = (1, 2, 3)
    m = randomize(LocalSpatialAttention(C, C_RED, dilations, activation), seed=2)  # type: ignore[arg-type]
    f = feature_map(h, w)
    f_cl = feature_map(h, w, seed=5)
    a = ref_local_spatial_map(f, m, dilations)
    if activation == "sigmoid":
        a = torch.sigmoid(a)
    torch.testing.assert_close(m.attention(f), a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(f, f_cl), f_cl * a + f_cl, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("h,w", SIZES)
def test_global_channel_matches_eq5(h: int, w: int) -> None:
    m = randomize(GlobalChannelAttention(3), seed=3)
    f = feature_map(h, w)
    expected = ref_global_channel(
        f, m.conv_q.weight.flatten().tolist(), m.conv_k.weight.flatten().tolist()
    )
    torch.testing.assert_close(m(f), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("h,w", SIZES)
def test_global_spatial_matches_reference(h: int, w: int) -> None:
    m = randomize(GlobalSpatialAttention(C, C_RED), seed=4)
    f = feature_map(h, w)
    torch.testing.assert_close(m(f), ref_global_spatial(f, m), rtol=1e-10, atol=1e-10)


def test_fusion_matches_eq7() -> None:
    m = GlobalLocalFusion().double()
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.3, -1.2, 2.0]))
    f_l, f_g, f = (feature_map(4, 6, seed=s) for s in (1, 2, 3))
    e = [math.exp(0.3), math.exp(-1.2), math.exp(2.0)]
    w_l, w_g, w = (x / sum(e) for x in e)
    torch.testing.assert_close(m(f_l, f_g, f), w_l * f_l + w_g * f_g + w * f)


def test_channel_attention_columns_sum_to_one() -> None:
    m = randomize(GlobalChannelAttention(3), seed=6)
    a = m.attention(feature_map(6, 9))  # (B, C, C)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, C, dtype=torch.float64))
    # Normalised per column, not over the flattened matrix: a column sums to 1, not 1/C.
    assert not torch.allclose(a.sum(dim=2), torch.ones(2, C, dtype=torch.float64))


def test_spatial_attention_columns_sum_to_one() -> None:
    m = randomize(GlobalSpatialAttention(C, C_RED), seed=7)
    a = m.attention(feature_map(6, 9))  # (B, HW, HW)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 54, dtype=torch.float64))


def test_softmax_scale_changes_attention() -> None:
    f = feature_map(4, 5)
    base = randomize(GlobalSpatialAttention(C, C_RED), seed=8)
    scaled = randomize(GlobalSpatialAttention(C, C_RED, softmax_scale=0.25), seed=8)
    logits = torch.einsum(
        "bcm,bcn->bmn",
        conv1x1(f, base.conv_k.weight, base.conv_k.bias).flatten(2),
        conv1x1(f, base.conv_q.weight, base.conv_q.bias).flatten(2),
    )
    torch.testing.assert_close(scaled.attention(f), torch.softmax(0.25 * logits, dim=1))


def test_gem_limit_cases() -> None:
    x = feature_map(5, 7) + 0.01
    torch.testing.assert_close(GeM(p=1.0).double()(x), x.mean(dim=(-2, -1)))
    torch.testing.assert_close(
        GeM(p=3.0).double()(x), x.pow(3).mean(dim=(-2, -1)).pow(1 / 3), rtol=1e-12, atol=1e-12
    )
    big_p = GeM(p=400.0).double()(x)
    assert torch.allclose(big_p, x.amax(dim=(-2, -1)), rtol=2e-2)
    # No overflow for large activations: the value scales linearly with the input.
    torch.testing.assert_close(GeM(p=3.0).double()(x * 1e120), GeM(p=3.0).double()(x) * 1e120)


def test_gem_p_is_learnable() -> None:
    gem = GeM(p=3.0)
    gem(torch.rand(1, 4, 3, 3) + 0.1).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0
