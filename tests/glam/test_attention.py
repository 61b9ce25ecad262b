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

SIZES = [(5, 7), (8, 8), (3, 11), (1, 1)]
C, C_RED = 12, 4


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return module.double().eval()


def feature_map(h: int, w: int, seed: int = 0, c: int = C) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, c, h, w, generator=g, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def conv1d_channels(y: list[float], w: list[float]) -> list[float]:
    """Zero-padded cross-correlation over the channel axis, one output per channel."""
    k = len(w)
    return [
        sum(w[j] * y[c + j - k // 2] for j in range(k) if 0 <= c + j - k // 2 < len(y))
        for c in range(len(y))
    ]


def ref_local_channel(f: torch.Tensor, w: list[float]) -> torch.Tensor:
    """Eq. 1 per sample: A = sigmoid(conv1d(GAP(F))), F_c^l = F ⊙ A + F."""
    out = torch.empty_like(f)
    for b in range(f.shape[0]):
        gap = [float(f[b, c].mean()) for c in range(f.shape[1])]
        a = [sigmoid(z) for z in conv1d_channels(gap, w)]
        for c in range(f.shape[1]):
            out[b, c] = f[b, c] * a[c] + f[b, c]
    return out


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # x: (B, Cin, H, W), weight: (Cout, Cin, 1, 1)
    return torch.einsum("oi,bihw->bohw", weight[:, :, 0, 0], x) + bias.view(1, -1, 1, 1)


def conv3x3_dilated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, d: int):
    """Zero-padded 3x3 convolution with dilation d as a sum of shifted 1x1 products."""
    b, cin, h, w = x.shape
    padded = torch.zeros(b, cin, h + 2 * d, w + 2 * d, dtype=x.dtype)
    padded[:, :, d : d + h, d : d + w] = x
    out = bias.view(1, -1, 1, 1).expand(b, -1, h, w).clone()
    for u in range(3):
        for v in range(3):
            window = padded[:, :, u * d : u * d + h, v * d : v * d + w]
            out += torch.einsum("oi,bihw->bohw", weight[:, :, u, v], window)
    return out


def ref_local_spatial_map(f: torch.Tensor, m: LocalSpatialAttention, dilations) -> torch.Tensor:
    fr = conv1x1(f, m.reduce.weight, m.reduce.bias)
    parts = [fr] + [
        conv3x3_dilated(fr, conv.weight, conv.bias, d)
        for conv, d in zip(m.dilated, dilations, strict=True)
    ]
    return conv1x1(torch.cat(parts, 1), m.fuse.weight, m.fuse.bias)


def ref_global_channel(f: torch.Tensor, wq: list[float], wk: list[float]) -> torch.Tensor:
    """F_c^g = F ⊙ G_c, G_c = V_c A_c^g, A_c^g = softmax over rows of K_c^T Q_c (Eq. 5)."""
    bsz, c, h, w = f.shape
    out = torch.empty_like(f)
    for b in range(bsz):
        gap = [float(f[b, i].mean()) for i in range(c)]
        q = [sigmoid(z) for z in conv1d_channels(gap, wq)]
        k = [sigmoid(z) for z in conv1d_channels(gap, wk)]
        a = torch.empty(c, c, dtype=torch.float64)
        for j in range(c):
            col = [math.exp(k[i] * q[j]) for i in range(c)]
            for i in range(c):
                a[i, j] = col[i] / sum(col)
        v = f[b].reshape(c, h * w).T  # V_c: (HW, C)
        g = (v @ a).T.reshape(c, h, w)
        out[b] = f[b] * g
    return out


def ref_global_spatial(f: torch.Tensor, m: GlobalSpatialAttention) -> torch.Tensor:
    """G_s = Conv1x1(V_s A_s^g), A_s^g[m, n] = exp(K_m·Q_n) / Σ_m' exp(K_m'·Q_n)."""
    bsz, _, h, w = f.shape
    q = conv1x1(f, m.conv_q.weight, m.conv_q.bias).reshape(bsz, -1, h * w)
    k = conv1x1(f, m.conv_k.weight, m.conv_k.bias).reshape(bsz, -1, h * w)
    v = conv1x1(f, m.conv_v.weight, m.conv_v.bias).reshape(bsz, -1, h * w)
    out = []
    for b in range(bsz):
        logits = torch.einsum("cm,cn->mn", k[b], q[b])
        a = torch.exp(logits - logits.max(0).values) / torch.exp(logits - logits.max(0).values).sum(
            0
        )
        y = torch.einsum("cm,mn->cn", v[b], a).reshape(1, -1, h, w)
        out.append(conv1x1(y, m.conv_out.weight, m.conv_out.bias))
    return torch.cat(out)


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
