"""Training augmentation (paper §4): scaling, random crop and illumination change, with every
random draw taken from a caller-supplied generator so that a resumed run repeats them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from glam.preprocess import IMAGENET_MEAN, IMAGENET_STD
from glam.recipe import AugmentConfig


@dataclass(frozen=True)
class AugmentDraw:
    """The random values of one image's augmentation."""

    zoom: float  # in [1, max_zoom]
    crop_x: float  # in [0, 1]: left edge as a fraction of the slack
    crop_y: float
    brightness: float  # factors around 1
    contrast: float
    saturation: float


def draw(rng: np.random.Generator, config: AugmentConfig) -> AugmentDraw:
    zoom, cx, cy, b, c, s = rng.random(6).tolist()
    return AugmentDraw(
        zoom=1.0 + zoom * (config.max_zoom - 1.0),
        crop_x=cx,
        crop_y=cy,
        brightness=1.0 + (2 * b - 1) * config.brightness,
        contrast=1.0 + (2 * c - 1) * config.contrast,
        saturation=1.0 + (2 * s - 1) * config.saturation,
    )


def scale_and_crop(img: Image.Image, size: tuple[int, int], d: AugmentDraw) -> Image.Image:
    """Scale ``img`` to cover ``size`` (W, H) times ``d.zoom``, then crop ``size`` out of it."""
    w, h = img.size
    tw, th = size
    scale = max(tw / w, th / h) * d.zoom
    # The crop's box in the source image: (tw, th) / scale pixels at a random offset within
    # the slack; resampling only that region gives the same pixels for less work.
    bw, bh = min(w, tw / scale), min(h, th / scale)
    x0, y0 = (w - bw) * d.crop_x, (h - bh) * d.crop_y
    return img.resize((tw, th), Image.Resampling.BILINEAR, box=(x0, y0, x0 + bw, y0 + bh))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB x: (..., 3, H, W) -> (..., 1, H, W)."""
    r, g, b = x.unbind(dim=-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def illumination_factors(draws: list[AugmentDraw]) -> torch.Tensor:
    """(B, 3): brightness, contrast, saturation of each image."""
    return torch.tensor(
        [[d.brightness, d.contrast, d.saturation] for d in draws], dtype=torch.float32
    )


def illuminate(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast, then saturation on RGB x in [0, 1]: (B, 3, H, W), with
    per-image factors (B, 3)."""
    # NOTE: not in paper: the order is fixed (ColorJitter draws a random order).
    b, c, s = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = (x * b).clamp_(0.0, 1.0)
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)  # (B, 1, 1, 1)
    x = ((x - mean) * c + mean).clamp_(0.0, 1.0)
    gray = grayscale(x)
    return ((x - gray) * s + gray).clamp_(0.0, 1.0)


def crop_uint8(img: Image.Image, size: tuple[int, int], d: AugmentDraw) -> torch.Tensor:
    """The geometric half on the CPU: scale + random crop -> uint8 (3, H, W)."""
    crop = scale_and_crop(img, size, d)
    return torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)


def photometric(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The photometric half, batched on any device: uint8 (B, 3, H, W) -> illumination change
    -> ImageNet-normalised float32 (B, 3, H, W). On a GPU it moves 4x fewer bytes from the
    host and takes the float work off the decode threads."""
    x = illuminate(images.float().div_(255.0), factors.to(images.device))
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(img: Image.Image, size: tuple[int, int], d: AugmentDraw) -> torch.Tensor:
    """RGB PIL image -> augmented, ImageNet-normalised (3, H, W) float32 of ``size`` (W, H)."""
    return photometric(crop_uint8(img, size, d)[None], illumination_factors([d]))[0]
