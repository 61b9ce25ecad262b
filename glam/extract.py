"""Descriptor extraction: multi-scale test, same-size batching, and the fast path
(``inference_mode``, channels_last, optional bf16 autocast)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as Fn

from glam.batchnorm_fold import fold_batchnorm
from glam.config import ExtractConfig
from glam.model import GLAM


def select_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA when torch sees a device, else the CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    """Autocast to ``dtype`` on ``device``'s type; ``None``: plain fp32 (a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of a batch (B, 3, H, W) by ``scale`` (the multi-resolution test)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return Fn.interpolate(x, size=size, mode="bilinear", align_corners=False)


class GlamExtractor:
    """Callable that turns preprocessed images into unit-norm multi-scale descriptors.

    Holds an eval-mode model on ``device``; plain Python, usable with or without Ray.
    """

    def __init__(
        self, model: GLAM, config: ExtractConfig | None = None, device: str | None = None
    ) -> None:
        self.config = config or ExtractConfig()
        self.device = select_device(device)
        memory_format = (
            torch.channels_last if self.config.channels_last else torch.contiguous_format
        )
        self.memory_format = memory_format
        if self.config.fold_batchnorm:
            model = fold_batchnorm(model)
        self.model = model.eval().to(self.device).to(memory_format=memory_format)

    @torch.inference_mode()
    def extract_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors (B, dim) float32 on the CPU from same-size images (B, 3, H, W).

        d = L2(Σ_s GLAM(rescale(x, s))): averaged over the scales, then re-normalised.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        total = None
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        with autocast(self.device, dtype):
            for s in self.config.scales:
                xs = rescale(x, s).contiguous(memory_format=self.memory_format)
                d = self.model(xs).float()  # (B, dim), unit norm
                total = d if total is None else total + d
        assert total is not None  # scales is non-empty (ExtractConfig validates it)
        return Fn.normalize(total, dim=-1).cpu()

    def __call__(self, images: Sequence[torch.Tensor], batch_size: int = 8) -> torch.Tensor:
        """Descriptors (N, dim) for images of any sizes, in input order; same-size images
        are batched together, at most ``batch_size`` at a time."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = torch.empty(len(images), self.model.config.dim)
        for idx in same_size_batches(images, batch_size):
            out[idx] = self.extract_batch(torch.stack([images[i] for i in idx]))
        return out


def same_size_batches(images: Sequence[torch.Tensor], batch_size: int) -> Iterator[list[int]]:
    """Index lists of images with equal (H, W), at most ``batch_size`` long."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape)].append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            yield idx[start : start + batch_size]
