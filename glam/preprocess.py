"""Image decoding and preprocessing: EXIF orientation, any PIL mode -> RGB, longer side to
``image_size`` keeping the aspect ratio, ImageNet mean/std.

Two ways to the same tensor: ``preprocess`` (a PIL image -> a normalised float tensor on the
host), and the extraction path, which keeps pixels in uint8 until they reach the device:
``decode_rgb`` (optionally a DCT-domain draft decode) -> ``resize_longer_side`` (bilinear, or
cirtorch's LANCZOS thumbnail) ->
uint8 (H, W, 3|4) on the host, then ``normalize`` (B, H, W, 3|4) -> (B, 3, H, W) float on
the device. Both apply the same operations in the same order, so on the CPU they give the same
floats. ``resize_uint8`` and ``orient`` do the resize and the EXIF orientation on tensors, for
images decoded on the device.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Larger images are refused before their pixels are decoded (decompression bombs).
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how to turn the stored pixels upright


_OBJECT_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


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
    return _decode(data, max_pixels, lambda size: draft)


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode to RGB with the EXIF orientation applied; returns the image and the full image's
    size (W, H), orientation applied, which a draft decode does not change.

    ``draft_side``: a JPEG whose longer side is at least twice ``draft_side`` is decoded at
    1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT), the largest reduction that
    keeps its longer side >= ``draft_side``. Smaller images and other formats decode fully.
    """
    full: list[tuple[int, int]] = []

    def request(size: tuple[int, int]) -> tuple[int, int] | None:
        full.append(size)
        return draft_request(size, draft_side) if draft_side else None

    img = _decode(data, max_pixels, request)
    w, h = full[0]
    swapped = orientation_of(img) in (5, 6, 7, 8)  # orientations 5-8 transpose the image
    return to_rgb(img), ((h, w) if swapped else (w, h))


def orientation_of(img: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) when absent or unreadable: a crafted EXIF
    block must not cost the image, and the device decode path reads it the same way."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
        return value if isinstance(value, int) and value in _ORIENTATION else 1
    except Exception:
        return 1


def draft_request(size: tuple[int, int], side: int) -> tuple[int, int] | None:
    """The (W, H) to ask PIL's ``draft`` for so that the longer side stays >= ``side``; None
    when the image is less than twice that long (no DCT-domain reduction possible)."""
    w, h = size
    longer = max(w, h)
    if longer < 2 * side:
        return None
    return (math.ceil(w * side / longer), math.ceil(h * side / longer))


def _decode(
    data: bytes,
    max_pixels: int,
    draft: Callable[[tuple[int, int]], tuple[int, int] | None],
) -> Image.Image:
    """Open, refuse over ``max_pixels``, ask ``draft(size)`` for a JPEG draft size, load."""
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
            requested = draft((w, h))
            if requested is not None and img.format == "JPEG":
                img.draft(None, requested)
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"decompression bomb: {e}") from e
    except Exception as e:
        # Whatever else crafted bytes make a decoder raise (OSError, SyntaxError, EOFError,
        # struct.error, TypeError, OverflowError, …) is the image's fault, not the caller's.
        raise ImageDecodeError(_described(e)) from e
    return img


def _described(e: Exception) -> str:
    """An exception's type and message, without object addresses: PIL names the in-memory
    file by its address ("<_io.BytesIO object at 0x…>"), noise that differs on every run."""
    return f"{type(e).__name__}: {_OBJECT_ADDRESS.sub('the image bytes', str(e))}"


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any PIL mode (L, P, RGBA, CMYK, I;16, F) to RGB.

    The orientation is applied as ``ImageOps.exif_transpose`` does, from the tag alone:
    ``exif_transpose`` also re-serialises the whole EXIF block, which raises (``struct.error``)
    on a crafted tag stored with the wrong type. Raises ``ImageDecodeError`` whatever else
    goes wrong (pixel data that fails on conversion).
    """
    try:
        return _to_rgb(img)
    except Exception as e:
        raise ImageDecodeError(_described(e)) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    op = _ORIENTATION.get(orientation_of(img))
    if op is not None:
        img = img.transpose(op)
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


# How the longer side is brought to the image size. bilinear: PIL's antialiased bilinear, up or
# down, to exactly the size. lanczos-shrink: what cirtorch's ``imresize`` does, PIL's
# ``thumbnail`` with LANCZOS (its own rounding and reducing gap): larger images shrink to the
# size, smaller ones are left as they are, never enlarged.
# NOTE: not in paper (GLAM does not say how images are resized); bilinear stays the default,
# lanczos-shrink gives converted cirtorch networks their own descriptors.
RESIZE_FILTERS = ("bilinear", "lanczos-shrink")


def resize_longer_side(img: Image.Image, size: int, resize: str = "bilinear") -> Image.Image:
    """Resize so that max(W, H) == size keeping the aspect ratio (``bilinear``: up- or
    down-sampling), or so that max(W, H) <= size (``lanczos-shrink``: never enlarging)."""
    if resize == "lanczos-shrink":
        if max(img.size) <= size:
            return img
        out = img.copy()  # thumbnail works in place
        out.thumbnail((size, size), Image.Resampling.LANCZOS)
        return out
    if resize != "bilinear":
        raise ValueError(f"resize must be one of {', '.join(RESIZE_FILTERS)}, got {resize!r}")
    w, h = img.size
    new_h, new_w = longer_side_size(h, w, size)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ImageNet-normalised float32 tensor (3, H, W)."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    x = arr.permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def preprocess(img: Image.Image, image_size: int = 1024, resize: str = "bilinear") -> torch.Tensor:
    """Any PIL image -> (3, H, W) tensor with max(H, W) == image_size (``lanczos-shrink``:
    at most image_size)."""
    return to_tensor(resize_longer_side(to_rgb(img), image_size, resize))


def to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (H, W, 3): a quarter of a float tensor's bytes to move."""
    return torch.from_numpy(np.array(img, dtype=np.uint8))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, C) -> ImageNet-normalised float32 (B, 3, H, W), channels_last.

    The first three channels are R, G, B (a fourth, padding, is dropped). (x / 255 − mean) / std
    per channel, the operations of ``to_tensor`` in its order, on whatever device ``x`` is on.
    The permuted view of (B, H, W, C) is already the channels_last layout of (B, C, H, W).
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected uint8 images (B, H, W, 3|4), got {x.dtype} {tuple(x.shape)}")
    y = x[..., :3].permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    y = y.contiguous(memory_format=torch.channels_last).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return y.sub_(mean).div_(std)


def longer_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with max(H, W) == size and the aspect ratio kept, as ``resize_longer_side``."""
    scale = size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> uint8 (H', W', 3) with max(H', W') == size.

    Antialiased bilinear (the filter of PIL's ``resize`` with BILINEAR, which
    ``resize_longer_side`` uses), rounded back to uint8; for images decoded on the device.
    """
    h, w = longer_side_size(x.shape[-2], x.shape[-1], size)
    if (h, w) != tuple(x.shape[-2:]):
        y = Fn.interpolate(
            x[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )
        x = y[0].round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0)


# EXIF orientation value -> the PIL transpose that shows the image upright, as
# ImageOps.exif_transpose applies it.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` (1-8) to an image tensor (C, H, W) on any device, as
    ``ImageOps.exif_transpose`` does to a PIL image; other values leave it as it is."""
    op = _ORIENTATION.get(orientation)
    if op is None:
        return x
    if op == Image.Transpose.FLIP_LEFT_RIGHT:
        return x.flip(-1)
    if op == Image.Transpose.FLIP_TOP_BOTTOM:
        return x.flip(-2)
    if op == Image.Transpose.ROTATE_180:
        return x.flip(-2, -1)
    if op == Image.Transpose.TRANSPOSE:  # over the main diagonal
        return x.transpose(-2, -1)
    if op == Image.Transpose.TRANSVERSE:  # over the anti-diagonal
        return x.transpose(-2, -1).flip(-2, -1)
    if op == Image.Transpose.ROTATE_90:  # counter-clockwise
        return x.rot90(1, (-2, -1))
    return x.rot90(-1, (-2, -1))  # ROTATE_270: clockwise
