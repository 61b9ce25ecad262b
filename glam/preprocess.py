"""Image decoding and preprocessing: EXIF orientation, any PIL mode -> RGB, longer side to
``image_size`` keeping the aspect ratio, ImageNet mean/std."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Larger images are refused before their pixels are decoded (decompression bombs).
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image within the limits."""


class ImageTooLargeError(ImageDecodeError):
    """An image over the pixel limit (a decompression bomb), refused before decoding."""


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Decode image bytes fully, refusing images over ``max_pixels`` before decoding them.

    ``draft`` (W, H): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as it stays at
    least that large (DCT scaling: far less work when the image is downsampled anyway).
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLargeError(
                    f"image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"
                )
            if draft is not None and img.format == "JPEG":
                img.draft(None, draft)
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any PIL mode (L, P, RGBA, CMYK, I;16, F) to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # High-bit-depth grayscale: rescale the full range of the mode to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # uint8 (H, W) -> mode L
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def resize_longer_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so that max(W, H) == size, keeping the aspect ratio (up- or down-sampling)."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return img
    return img.resize(new, Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ImageNet-normalised float32 tensor (3, H, W)."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    x = arr.permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def preprocess(img: Image.Image, image_size: int = 1024) -> torch.Tensor:
    """Any PIL image -> (3, H, W) tensor with max(H, W) == image_size."""
    return to_tensor(resize_longer_side(to_rgb(img), image_size))
