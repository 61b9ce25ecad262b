"""Decoding and preprocessing: modes, EXIF orientation, resizing, bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from glam.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    decode_image,
    preprocess,
    to_rgb,
)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 77)], -1), "RGB")


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("LA", "PNG")],
)
def test_any_mode_becomes_rgb(mode: str, fmt: str) -> None:
    img = gradient(40, 30)
    if mode == "I;16":
        src = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
        assert src.mode.startswith("I;16")
    else:
        src = img.convert(mode)
    decoded = decode_image(encode(src, fmt))
    rgb = to_rgb(decoded)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    if mode == "I;16":  # full 16-bit range maps onto 8 bits
        np.testing.assert_allclose(np.asarray(rgb)[..., 0], np.asarray(img.convert("L")), atol=1)


def test_exif_orientation_is_applied() -> None:
    img = gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (40, 20)
    assert to_rgb(decoded).size == (20, 40)


@pytest.mark.parametrize("size,expected", [((400, 300), (128, 96)), ((50, 100), (64, 128))])
def test_preprocess_resizes_longer_side(size, expected) -> None:
    x = preprocess(gradient(*size), image_size=128)
    assert tuple(x.shape) == (3, expected[1], expected[0])


def test_preprocess_normalises_with_imagenet_stats() -> None:
    img = Image.new("RGB", (8, 8), (255, 0, 128))
    x = preprocess(img, image_size=8)
    expected = [
        (v / 255 - m) / s
        for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    torch.testing.assert_close(x[:, 0, 0], torch.tensor(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"this is not an image at all", "UnidentifiedImageError"),
        (encode(gradient(64, 64), "JPEG")[:300], "OSError"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data)


def test_oversized_image_is_refused_before_decoding() -> None:
    data = encode(gradient(200, 100), "PNG")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(data, max_pixels=10_000)
    assert decode_image(data, max_pixels=20_000).size == (200, 100)
