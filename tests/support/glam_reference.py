"""GLAM's attention blocks in float64, written from the paper's equations (arXiv 2107.08000),
independent of the implementation's helpers: the references the model tests compare with."""

from __future__ import annotations

import math

import torch

from glam.global_spatial import GlobalSpatialAttention
from glam.local_spatial import LocalSpatialAttention

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
