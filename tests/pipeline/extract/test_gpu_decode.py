"""``--decode gpu``: which samples the device decoder takes (tested on the CPU, with
torchvision's CPU JPEG decoder standing in for nvjpeg), the per-sample fallback, and equality
with CPU decode on a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from glam.preprocess import EXIF_ORIENTATION
from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES, bad_sample, encode, odd_mode, photo
from pipeline.extract.decode import DecodedSample, SampleError, decode_sample, sample_rows
from pipeline.extract.gpu_decode import (
    DeviceJpegDecoder,
    device_refusal,
    read_header,
    route,
    torchvision_decode,
)
from pipeline.io.shard_reader import RawSample

SIZE = 96
MAX_PIXELS = 10_000_000


def picture(seed: int = 0, w: int = 160, h: int = 120) -> Image.Image:
    return photo(np.random.default_rng(seed), w, h)


def jpeg(img: Image.Image, **kw: object) -> bytes:
    return encode(img, "JPEG", quality=90, **kw)


def adobe_rgb(data: bytes) -> bytes:
    """The same JPEG with an APP14 'Adobe' segment saying transform 0 (RGB-coded)."""
    body = b"Adobe" + b"\x00\x64" + b"\x00\x00" + b"\x00\x00" + b"\x00"
    return data[:2] + b"\xff\xee" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def rotated(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return jpeg(img, exif=exif.tobytes())


def refusal(data: bytes) -> str | None:
    return device_refusal(data, read_header(data), MAX_PIXELS)


def test_the_device_takes_baseline_jpegs_in_colour_or_grey() -> None:
    img = picture()
    header = read_header(jpeg(img))
    assert header is not None
    assert (header.sof, header.bits, header.width, header.height, header.components) == (
        0xC0,
        8,
        160,
        120,
        3,
    )
    assert refusal(jpeg(img)) is None
    assert refusal(jpeg(img.convert("L"))) is None
    assert refusal(rotated(img, 6)) is None  # the device turns it upright


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda im: jpeg(im, progressive=True), "progressive"),
        (lambda im: jpeg(im.convert("CMYK")), "CMYK"),
        (lambda im: encode(im, "PNG"), "not a JPEG"),
        (lambda im: jpeg(im)[:-400], "end-of-image"),
        (lambda im: adobe_rgb(jpeg(im)), "Adobe transform 0"),
        (lambda im: b"\xff\xd8\xff\xe0\x00", "not a JPEG"),
    ],
)
def test_what_the_device_cannot_take_goes_to_the_cpu(make, reason: str) -> None:
    why = refusal(make(picture()))
    assert why is not None and reason in why


def test_oversized_jpegs_are_left_to_the_cpu_path() -> None:
    data = jpeg(picture())
    assert device_refusal(data, read_header(data), 160 * 120 - 1) is not None


def samples() -> list[tuple[int, RawSample]]:
    """Every kind: baseline (some rotated, grey), progressive, odd modes, bad samples."""
    rng = np.random.default_rng(7)
    out: list[tuple[int, RawSample]] = []

    def add(key: str, members: dict[str, bytes]) -> None:
        out.append((len(out), RawSample(key, members)))

    for i in range(4):
        add(f"base{i}", {"jpg": jpeg(picture(i, 160 + 16 * i, 120))})
    add("grey", {"jpg": jpeg(picture(5).convert("L"))})
    for o in (3, 6, 8):
        add(f"exif{o}", {"jpg": rotated(picture(o, 150, 100), o)})
    add("progressive", {"jpg": jpeg(picture(9), progressive=True)})
    for mode in ODD_MODES:
        ext, data = odd_mode(picture(10), mode)
        add(f"mode_{mode}", {ext: data})
    for kind in BAD_KINDS:
        add(f"bad_{kind}", bad_sample(kind, rng))
    return out


def test_routing_splits_by_what_the_device_takes() -> None:
    device, cpu, errors, reasons = route(samples(), MAX_PIXELS)
    assert [r.key for r in device] == [
        *(f"base{i}" for i in range(4)),
        "grey",
        "exif3",
        "exif6",
        "exif8",
    ]
    assert {e.key for e in errors} == {"bad_empty", "bad_no_image"}
    assert "progressive" in reasons and "CMYK/YCCK" in reasons
    assert len(device) + len(cpu) + len(errors) == len(samples())


def test_samples_with_several_image_members_take_the_cpu_path() -> None:
    """Two baseline JPEGs in one sample: the CPU path decides which gives the descriptor and
    makes the other's row, so the rows are those of CPU decode; one-image samples still go to
    the device."""
    two = RawSample("photo", {"2023.jpg": jpeg(picture(1)), "2024.jpg": jpeg(picture(2))})
    chunk = [(0, two), (1, RawSample("solo", {"jpg": jpeg(picture(3))}))]
    device, cpu, errors, reasons = route(chunk, MAX_PIXELS)
    assert [r.key for r in device] == ["solo"]
    assert [(i, raw.key) for i, raw in cpu] == [(0, "photo")]
    assert errors == [] and reasons == {"several image members": 1}
    decoder = DeviceJpegDecoder(torch.device("cpu"), SIZE, MAX_PIXELS, None)
    items, on_device = decoder.decode(chunk)
    assert on_device == 1
    expected = sample_rows(decode_sample(0, two, SIZE, MAX_PIXELS))
    assert [(type(x), x.index, x.key) for x in items] == [
        *((type(x), x.index, x.key) for x in expected),
        (DecodedSample, 1, "solo"),
    ]
    assert items[1] == expected[1] and items[1].key == "photo.2024.jpg"
    assert isinstance(items[0], DecodedSample) and isinstance(expected[0], DecodedSample)
    assert np.array_equal(items[0].image, expected[0].image)


def assert_same_as_cpu_decode(items: list, tol_mean: float, tol_max: float) -> None:
    expected = [decode_sample(i, raw, SIZE, MAX_PIXELS) for i, raw in samples()]
    assert [type(x) for x in items] == [type(x) for x in expected]
    for got, want in zip(items, expected, strict=True):
        assert (got.index, got.key) == (want.index, want.key)
        if isinstance(want, SampleError):
            assert got.error == want.error
            continue
        assert (got.width, got.height) == (want.width, want.height)
        assert got.image.shape[:2] == want.image.shape[:2]
        rgb = got.image.cpu().numpy() if isinstance(got.image, torch.Tensor) else got.image
        diff = np.abs(rgb[..., :3].astype(float) - want.image[..., :3])
        assert diff.mean() <= tol_mean and diff.max() <= tol_max, (got.key, diff.mean(), diff.max())


def test_every_sample_ends_as_an_image_or_an_error_row() -> None:
    """The decoder's whole path on the CPU: batch, orientation and resize on tensors, CPU
    fallback; results as CPU decode gives them (the resize differs by rounding only)."""
    decoder = DeviceJpegDecoder(torch.device("cpu"), SIZE, MAX_PIXELS, None)
    items, on_device = decoder.decode(samples())
    assert on_device == 8
    assert_same_as_cpu_decode(items, tol_mean=0.3, tol_max=1)


def test_a_batch_the_device_refuses_is_retried_sample_by_sample() -> None:
    poisoned = samples()[1][1].members["jpg"]
    calls: list[int] = []

    def picky(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(bytes(t.numpy()) == poisoned for t in data):
            raise RuntimeError("nvjpeg: JPEG not supported")
        return torchvision_decode(data, device)

    decoder = DeviceJpegDecoder(torch.device("cpu"), SIZE, MAX_PIXELS, None, decoder=picky)
    items, on_device = decoder.decode(samples())
    assert calls[0] == 8 and calls[1:] == [1] * 8  # the batch, then one by one
    assert on_device == 7  # the poisoned sample was decoded on the CPU
    assert_same_as_cpu_decode(items, tol_mean=0.3, tol_max=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_nvjpeg_decode_equals_cpu_decode() -> None:
    decoder = DeviceJpegDecoder(torch.device("cuda"), SIZE, MAX_PIXELS, None)
    items, on_device = decoder.decode(samples())
    assert on_device == 8
    assert all(
        x.image.is_cuda for x in items if isinstance(x, DecodedSample) and x.key.startswith("base")
    )
    # nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a level or two on
    # average, more at sharp colour edges; a wrong channel order or orientation gives tens.
    assert_same_as_cpu_decode(items, tol_mean=2.0, tol_max=255)
