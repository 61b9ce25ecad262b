"""The source networks of jobs/convert_weights.py, rebuilt here from torchvision modules and
the published code's structure, independent of ``glam.convert``: checkpoints in their layouts
and their own descriptor computations, written out.

- cirtorch (filipradenovic/cnnimageretrieval-pytorch, ``imageretrievalnet.py``): ``features`` =
  a torchvision ResNet's children without avgpool/fc, GeM ``pool.p`` of shape (1,), optional
  ``whiten`` Linear; d = L2(whiten(L2(GeM))) with L2(x) = x / (||x|| + 1e-6); learned whitening
  ``Lw`` applied as L2(P[:dim] (d - m)) (``utils/whiten.py`` whitenapply).
- pycls (sungonce/CVNet ``model/resnet.py``): stem conv/bn, stages s1..s4 of ResBlocks with a
  projection (``proj``, ``bn``) and a bottleneck ``f`` (a, a_bn, b, b_bn, c, c_bn; stride on b);
  head GeM ``head.pool.p`` + ``head.fc``; d = L2(fc(GeM)); input BGR, normalised with ImageNet's
  statistics in BGR order (``test/dataset.py``).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as Fn
import torchvision
from torch import nn

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def imagenet_input(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (B, 3, H, W) -> what extraction feeds GLAM."""
    return (img - IMAGENET_MEAN.to(img.dtype)) / IMAGENET_STD.to(img.dtype)


def randomize_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters in every batch norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def cirtorch_l2n(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=1, keepdim=True) + 1e-6)


class CirtorchGeM(nn.Module):
    """cirtorch's ImageRetrievalNet for a ResNet with GeM (no regional, no local whitening)."""

    def __init__(self, arch: str, whiten: bool, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        net = getattr(torchvision.models, arch)()
        self.features = nn.Sequential(*list(net.children())[:-2])
        self.pool = nn.Module()
        self.pool.p = nn.Parameter(torch.ones(1) * 2.7)
        dim = 512 if arch in ("resnet18", "resnet34") else 2048
        self.whiten = nn.Linear(dim, dim, bias=True) if whiten else None
        randomize_bn(self, seed + 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.features(x)
        p = self.pool.p
        o = Fn.avg_pool2d(o.clamp(min=1e-6).pow(p), (o.size(-2), o.size(-1))).pow(1.0 / p)
        o = cirtorch_l2n(o.flatten(1))
        if self.whiten is not None:
            o = cirtorch_l2n(self.whiten(o))
        return o


def cirtorch_whitenapply(x: torch.Tensor, m: np.ndarray, p: np.ndarray, dims: int) -> torch.Tensor:
    """x: (N, D) descriptors -> L2(P[:dims] (x - m)), as cirtorch on (D, N) columns."""
    cols = np.dot(p[:dims, :], x.double().numpy().T - m)
    cols = cols / (np.linalg.norm(cols, ord=2, axis=0, keepdims=True) + 1e-6)
    return torch.from_numpy(cols.T)


def cirtorch_checkpoint(net: CirtorchGeM, arch: str, **meta: object) -> bytes:
    """torch.save bytes of ``{"state_dict", "meta", ...}`` as cirtorch writes them."""
    full_meta = {
        "architecture": arch,
        "local_whitening": False,
        "pooling": "gem",
        "regional": False,
        "whitening": net.whiten is not None,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "outputdim": 512 if arch in ("resnet18", "resnet34") else 2048,
        **meta,
    }
    buf = io.BytesIO()
    state = {"state_dict": net.state_dict(), "meta": full_meta, "epoch": 7, "min_loss": 0.1}
    torch.save(state, buf)
    return buf.getvalue()


class _Bottleneck(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, w_b: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(w_in, w_b, 1, stride=1, bias=False)  # STRIDE_1X1 = False
        self.a_bn = nn.BatchNorm2d(w_b)
        self.a_relu = nn.ReLU()
        self.b = nn.Conv2d(w_b, w_b, 3, stride=stride, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(w_b)
        self.b_relu = nn.ReLU()
        self.c = nn.Conv2d(w_b, w_out, 1, bias=False)
        self.c_bn = nn.BatchNorm2d(w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class _ResBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, w_b: int) -> None:
        super().__init__()
        self.proj_block = w_in != w_out or stride != 1
        if self.proj_block:
            self.proj = nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(w_out)
        self.f = _Bottleneck(w_in, w_out, stride, w_b)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.bn(self.proj(x)) if self.proj_block else x
        return self.relu(skip + self.f(x))


class PyclsResNet(nn.Module):
    """CVNet's global branch: pycls ResNet (depth 50: stages 3, 4, 6, 3) + GeM + fc."""

    def __init__(self, depths: tuple[int, ...] = (3, 4, 6, 3), dim: int = 2048, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.stem.bn = nn.BatchNorm2d(64)
        w_in = 64
        for i, (d, w_out, stride) in enumerate(
            zip(depths, (256, 512, 1024, 2048), (1, 2, 2, 2), strict=True)
        ):
            stage = nn.Module()
            for j in range(d):
                block = _ResBlock(
                    w_in if j == 0 else w_out, w_out, stride if j == 0 else 1, w_out // 4
                )
                stage.add_module(f"b{j + 1}", block)
            self.add_module(f"s{i + 1}", stage)
            w_in = w_out
        self.head = nn.Module()
        self.head.pool = nn.Module()
        self.head.pool.p = nn.Parameter(torch.ones(1) * 3.2)
        self.head.fc = nn.Linear(2048, dim, bias=True)
        randomize_bn(self, seed + 1)
        self.eval()

    def forward(self, x_bgr: torch.Tensor) -> torch.Tensor:
        x = Fn.max_pool2d(torch.relu(self.stem.bn(self.stem.conv(x_bgr))), 3, 2, 1)
        for i in range(1, 5):
            for block in getattr(self, f"s{i}").children():
                x = block(x)
        p = self.head.pool.p
        x = Fn.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(p), 1).pow(1.0 / p).flatten(1)
        return Fn.normalize(self.head.fc(x), dim=1)


def cvnet_input(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> CVNet's input: BGR, normalised with ImageNet's statistics in BGR order."""
    bgr = img.flip(1)
    mean = torch.tensor([0.406, 0.456, 0.485], dtype=img.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.225, 0.224, 0.229], dtype=img.dtype).view(1, 3, 1, 1)
    return (bgr - mean) / std


def cvnet_checkpoint(net: PyclsResNet) -> bytes:
    """torch.save bytes of a CVNet_Rerank checkpoint: the global network under ``encoder_q.``
    plus the re-ranking network's keys, in pycls's ``model_state``."""
    state = {f"encoder_q.{k}": v for k, v in net.state_dict().items()}
    state["conv2ds.0.weight"] = torch.zeros(256, 1024, 3, 3)
    state["cv_learner.encoder_layer4.0.weight"] = torch.zeros(4)
    buf = io.BytesIO()
    torch.save({"epoch": 10, "model_state": state, "cfg": "MODEL:\n  DEPTH: 50\n"}, buf)
    return buf.getvalue()
