"""Decoding and preprocessing: modes, EXIF orientation, resizing, bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from glam.preprocess import (
    EXIF_ORIENTATION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    decode_image,
    decode_rgb,
    draft_request,
    orient,
    preprocess,
    resize_longer_side,
    resize_uint8,
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


def photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    from pipeline.datasets.synthetic import photo

    return photo(np.random.default_rng(seed), w, h)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_on_tensors_is_exif_transpose(orientation: int) -> None:
    img = photo_like(40, 24)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    upright = to_rgb(decode_image(encode(img, "PNG", exif=exif.tobytes())))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # (3, H, W) as stored
    assert torch.equal(orient(x, orientation).permute(1, 2, 0), torch.from_numpy(np.array(upright)))


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (97, 61)])
def test_resize_on_tensors_is_close_to_pils(size: tuple[int, int]) -> None:
    """The device resize (for images decoded there) against PIL's antialiased bilinear."""
    img = photo_like(*size)
    pil = np.asarray(resize_longer_side(img, 128)).astype(int)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    mine = resize_uint8(x, 128).numpy().astype(int)
    assert mine.shape == pil.shape
    diff = np.abs(mine - pil)
    assert diff.mean() < 0.3 and diff.max() <= 1, (diff.mean(), diff.max())


def test_draft_decode_keeps_the_side_and_reports_the_full_size() -> None:
    img = photo_like(1200, 800)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown portrait
    data = encode(img, "JPEG", quality=90, exif=exif.tobytes())
    full, full_size = decode_rgb(data)
    assert full.size == (800, 1200) and full_size == (800, 1200)
    drafted, size = decode_rgb(data, draft_side=300)  # 1200 >= 2 x 300: 1/4 scale
    assert size == (800, 1200) and drafted.size == (200, 300)
    kept, _ = decode_rgb(data, draft_side=700)  # 1200 < 2 x 700: decoded fully
    assert kept.size == (800, 1200)
    png, _ = decode_rgb(encode(img, "PNG"), draft_side=300)  # only JPEGs have a draft mode
    assert png.size == (1200, 800)
    # The draft is a DCT-domain downscale: close to the full decode after the same resize.
    a = np.asarray(resize_longer_side(drafted, 256)).astype(float)
    b = np.asarray(resize_longer_side(full, 256)).astype(float)
    assert 10 * np.log10(255**2 / ((a - b) ** 2).mean()) > 35  # PSNR in dB


@pytest.mark.parametrize(
    "size,side,expected",
    [
        ((4000, 3000), 1448, (1448, 1086)),
        ((2895, 2000), 1448, None),
        ((3000, 4000), 1448, (1086, 1448)),
    ],
)
def test_draft_request_only_from_twice_the_side(size, side, expected) -> None:
    assert draft_request(size, side) == expected
