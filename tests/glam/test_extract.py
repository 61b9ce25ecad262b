"""The extractor's uint8 path (normalised and rescaled on the device) against the float path
of ``preprocess``; the streamed batches; the precision that fits the hardware."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from glam import ExtractConfig, GlamConfig, GlamExtractor, build_glam
from glam import extract as glam_extract
from glam.extract import resolve_precision
from glam.preprocess import normalize, preprocess, to_uint8
from pipeline.datasets.synthetic import photo

SIZE = 96


@pytest.fixture(scope="module")
def model():
    return build_glam(config=GlamConfig(backbone="resnet18", dim=64, reduced_channels=64), seed=5)


def photos(n: int, w: int = SIZE, h: int = 72, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [photo(rng, w, h) for _ in range(n)]


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-6), ("bf16", 1e-3)])
def test_uint8_path_equals_the_float_path(model, precision: str, atol: float) -> None:
    """uint8 to the device, normalisation and scales there == preprocess() on the host."""
    cfg = ExtractConfig(precision=precision)
    ex = GlamExtractor(model, cfg, device="cpu")
    imgs = photos(3)
    today = ex.extract_batch(torch.stack([preprocess(im, SIZE) for im in imgs]))
    now = ex.extract_images([to_uint8(im) for im in imgs])
    torch.testing.assert_close(now, today, rtol=0, atol=atol)
    assert float((now * today).sum(-1).min()) > 1 - atol
    padded = [np.asarray(im.convert("RGBA")) for im in imgs]  # (H, W, 4) arrays, as decoded
    torch.testing.assert_close(ex.extract_images(padded), now, rtol=0, atol=0)


def test_normalize_is_to_tensor_on_any_layout() -> None:
    imgs = photos(2, 40, 30)
    x = normalize(torch.stack([to_uint8(im) for im in imgs]))
    assert x.shape == (2, 3, 30, 40) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, torch.stack([preprocess(im, 40) for im in imgs]))
    with pytest.raises(ValueError, match="uint8"):
        normalize(x)


def test_stream_keeps_order_and_tags(model) -> None:
    ex = GlamExtractor(model, ExtractConfig(scales=(1.0,)), device="cpu")
    small, large = photos(3, 64, 48, seed=1), photos(2, SIZE, 72, seed=2)
    batches = [("a", [to_uint8(im) for im in small]), ("b", [to_uint8(im) for im in large])]
    out = list(ex.stream(iter(batches)))
    assert [tag for tag, _ in out] == ["a", "b"]
    alone = ex.extract_images([to_uint8(large[1])])
    torch.testing.assert_close(out[1][1][1:], alone, rtol=1e-4, atol=1e-5)  # batch-invariant
    with pytest.raises(ValueError, match="same-size"):
        ex.extract_images([to_uint8(small[0]), to_uint8(large[0])])


def native(monkeypatch, cpu: bool) -> None:
    monkeypatch.setattr(glam_extract, "cpu_has_native_bf16", lambda: cpu)


@pytest.mark.parametrize("has_native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch, has_native: bool, expected: str) -> None:
    native(monkeypatch, has_native)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_explicit_bf16_without_native_support_warns_once(monkeypatch, caplog) -> None:
    native(monkeypatch, False)
    with caplog.at_level(logging.WARNING, logger="glam.extract"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    (record,) = caplog.records
    assert "~11x slower" in record.getMessage() and "\n" not in record.getMessage()
    caplog.clear()
    native(monkeypatch, True)
    with caplog.at_level(logging.WARNING, logger="glam.extract"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert not caplog.records
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", torch.device("cpu"))


def test_this_cpu_is_probed_through_onednn() -> None:
    """The probe agrees with oneDNN: no native bf16 without oneDNN's bf16 support."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not glam_extract.cpu_has_native_bf16()
    else:
        flags = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        assert glam_extract.cpu_has_native_bf16() == flags


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_stream_equals_the_cpu_path(model, precision: str) -> None:
    """Pinned copies on their own stream, overlapped with compute: same descriptors as the
    CPU, for host images, device images and a batch mixing both."""
    cfg = ExtractConfig(precision=precision)
    cpu = GlamExtractor(model, ExtractConfig(), device="cpu")
    gpu = GlamExtractor(model, cfg, device="cuda")
    imgs = [to_uint8(im) for im in photos(6, seed=3)]
    expected = cpu.extract_images(imgs)
    batches = [
        (0, imgs[:2]),
        (1, [im.cuda() for im in imgs[2:4]]),
        (2, [imgs[4], imgs[5].cuda()]),
    ]
    got = torch.cat([d for _, d in gpu.stream(iter(batches))])
    tol = 1e-3 if precision == "fp32" else 2e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=tol)


@cuda
@pytest.mark.cuda
def test_auto_precision_on_cuda_is_bf16_from_ampere() -> None:
    major, _ = torch.cuda.get_device_capability()
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if major >= 8 else "fp32")
