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
    """ITU-R 601 luma of RGB x: (3, H, W) -> (1, H, W)."""
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def illuminate(x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
    """Brightness, then contrast, then saturation on RGB x in [0, 1]: (3, H, W)."""
    # NOTE: not in paper: the order is fixed (ColorJitter draws a random order).
    x = (x * d.brightness).clamp_(0.0, 1.0)
    mean = grayscale(x).mean()
    x = ((x - mean) * d.contrast + mean).clamp_(0.0, 1.0)
    gray = grayscale(x)
    return ((x - gray) * d.saturation + gray).clamp_(0.0, 1.0)


def augment(img: Image.Image, size: tuple[int, int], d: AugmentDraw) -> torch.Tensor:
    """RGB PIL image -> ImageNet-normalised (3, H, W) float32 tensor of ``size`` (W, H)."""
    crop = scale_and_crop(img, size, d)
    x = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    x = illuminate(x, d)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std
