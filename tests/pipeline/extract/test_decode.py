from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.datasets.synthetic import (
    BAD_KINDS,
    ODD_MODES,
    bad_sample,
    crafted_exif,
    encode,
    encode_with_exif,
    image,
    odd_mode,
    photo,
)
from pipeline.extract.batching import SizeBuckets
from pipeline.extract.decode import (
    DecodedSample,
    SampleError,
    decode_sample,
    pixels,
    sample_rows,
)
from pipeline.io.shard_reader import RawSample


@pytest.mark.parametrize("kind,error", sorted(BAD_KINDS.items()))
def test_bad_samples_become_typed_errors(kind: str, error: str) -> None:
    raw = RawSample(key=f"k_{kind}", members=bad_sample(kind, np.random.default_rng(0)))
    out = decode_sample(7, raw, image_size=64, max_pixels=10_000_000)
    assert isinstance(out, SampleError)
    assert (out.index, out.key, out.error) == (7, f"k_{kind}", error)
    assert out.message and "object at 0x" not in out.message  # no addresses in the data


@pytest.mark.parametrize("mode", ODD_MODES)
def test_odd_modes_decode_to_rgb_tensors(mode: str) -> None:
    ext, data = odd_mode(image(np.random.default_rng(1), 90, 60), mode)
    out = decode_sample(0, RawSample("k", {ext: data, "cls": b"1"}), 64, 10_000_000)
    assert isinstance(out, DecodedSample)
    assert tuple(out.image.shape) == (43, 64, 4) and (out.width, out.height) == (90, 60)
    assert out.image.dtype == np.uint8  # RGB + PIL's pad byte: a third of float32's bytes


def test_pixel_limit_is_configurable() -> None:
    raw = RawSample("k", {"jpg": encode(image(np.random.default_rng(2), 90, 60))})
    assert isinstance(decode_sample(0, raw, 64, 90 * 60), DecodedSample)
    out = decode_sample(0, raw, 64, 90 * 60 - 1)
    assert isinstance(out, SampleError) and out.error == "oversized"


def test_a_second_image_member_is_an_extra_image_row() -> None:
    """``photo.2023.jpg`` and ``photo.2024.jpg``: one sample, a descriptor and an error row."""
    rng = np.random.default_rng(5)
    first, second = encode(image(rng, 90, 60)), encode(image(rng, 60, 90))
    raw = RawSample("photo", {"2023.jpg": first, "2024.jpg": second})
    rows = sample_rows(decode_sample(3, raw, 64, 10_000_000))
    assert [type(r) for r in rows] == [DecodedSample, SampleError]
    sample, extra = rows
    assert isinstance(sample, DecodedSample) and isinstance(extra, SampleError)
    assert (sample.index, sample.key, sample.width, sample.height) == (3, "photo", 90, 60)
    assert (extra.index, extra.key, extra.error) == (3, "photo.2024.jpg", "extra_image")
    assert "photo" in extra.message and "2023.jpg" in extra.message


def test_a_corrupt_member_falls_back_to_the_next_image_member() -> None:
    """A corrupt ``x.jpg`` next to a valid ``x.png``: the descriptor is the PNG's, and the JPEG
    is an error row of its own type keyed by its member name."""
    rng = np.random.default_rng(6)
    png = encode(image(rng, 90, 60), "PNG")
    raw = RawSample("x", {"jpg": rng.bytes(2000), "png": png, "cls": b"1"})
    out = decode_sample(0, raw, 64, 10_000_000)
    assert isinstance(out, DecodedSample) and (out.key, out.width, out.height) == ("x", 90, 60)
    only_png = decode_sample(0, RawSample("x", {"png": png}), 64, 10_000_000)
    assert isinstance(only_png, DecodedSample)
    assert np.array_equal(out.image, only_png.image)
    rows = sample_rows(out)
    assert [(r.key, getattr(r, "error", None)) for r in rows] == [
        ("x", None),
        ("x.jpg", "undecodable"),
    ]
    assert all(r.index == 0 for r in rows)


def test_a_sample_whose_members_all_fail_is_one_row_naming_each_failure() -> None:
    rng = np.random.default_rng(7)
    raw = RawSample("y", {"png": b"", "jpg": rng.bytes(2000), "0.webp": b"RIFF"})
    rows = sample_rows(decode_sample(4, raw, 64, 10_000_000))
    assert len(rows) == 1
    (row,) = rows
    assert isinstance(row, SampleError)
    assert (row.index, row.key, row.error) == (4, "y", "undecodable")  # the first member's type
    for part in ("jpg: undecodable", "png: empty", "0.webp: undecodable"):
        assert part in row.message, row.message


def test_a_single_image_member_keeps_its_own_row() -> None:
    """One image member: the same row as before members were tried in turn."""
    out = decode_sample(1, RawSample("k", {"jpg": b"\xff\xd8 not a jpeg", "txt": b"t"}), 64, 10**7)
    assert sample_rows(out) == [out]
    assert isinstance(out, SampleError) and out.key == "k" and out.error == "undecodable"
    assert not out.message.startswith("jpg")


def _sample(i: int, h: int, w: int) -> DecodedSample:
    return DecodedSample(i, str(i), torch.zeros(h, w, 3, dtype=torch.uint8), w, h)


def test_size_buckets_release_full_batches_and_flush_the_rest() -> None:
    buckets = SizeBuckets(2)
    assert buckets.add(_sample(0, 4, 6)) == []
    assert buckets.add(_sample(1, 6, 4)) == []
    (full,) = buckets.add(_sample(2, 4, 6))
    assert [s.index for s in full] == [0, 2]
    assert buckets.add(_sample(3, 4, 6)) == []
    rest = buckets.flush()
    assert sorted(s.index for b in rest for s in b) == [1, 3]
    assert all(len({tuple(s.image.shape) for s in b}) == 1 for b in rest)
    assert buckets.flush() == []
    with pytest.raises(ValueError):
        SizeBuckets(0)


def test_size_buckets_hold_at_most_max_held_images() -> None:
    """Many sizes, none filling a batch: memory stays bounded, every sample comes out once."""
    buckets = SizeBuckets(4, max_held=6)
    out = []
    for i in range(40):
        out += buckets.add(_sample(i, 8 + i % 9, 8))
        assert buckets.held <= 6
    out += buckets.flush()
    assert sorted(s.index for b in out for s in b) == list(range(40))
    assert all(len({tuple(s.image.shape) for s in b}) == 1 and len(b) <= 4 for b in out)
    with pytest.raises(ValueError, match="max_held"):
        SizeBuckets(4, max_held=3)


def test_large_jpegs_decode_in_draft_to_the_same_size() -> None:
    """Draft decode: same output size, full width/height reported, close to the full decode."""
    rng = np.random.default_rng(3)
    raw = RawSample("k", {"jpg": encode(photo(rng, 1000, 600), quality=90)})
    full = decode_sample(0, raw, 200, 10_000_000)
    draft = decode_sample(0, raw, 200, 10_000_000, draft_side=250)  # 1000 >= 2 x 250
    assert isinstance(full, DecodedSample) and isinstance(draft, DecodedSample)
    assert full.image.shape == draft.image.shape == (120, 200, 4)
    assert (draft.width, draft.height) == (full.width, full.height) == (1000, 600)
    diff = np.abs(full.image[..., :3].astype(float) - draft.image[..., :3])
    assert 0 < diff.mean() < 3


def test_shard_stats_round_trip_through_a_commit_marker() -> None:
    from pipeline.extract.stats import ShardStats, ShardTotals

    stats = ShardStats("000001", "s3://b/000001.tar", samples=5, ok=4, errors=1, infer_s=2.0)
    stats.errors_by_type["empty"] = 1
    marker = {**stats.to_dict(), "fingerprint": {"model": "GLAM"}}
    assert ShardStats.from_dict(marker) == stats
    failed = ShardStats("000002", "s3://b/000002.tar", status="failed", error="gone")
    totals = ShardTotals.over([stats, failed, stats])
    assert (totals.committed_shards, totals.samples, totals.ok, totals.infer_s) == (2, 10, 8, 4.0)


@pytest.mark.parametrize("size", [(90, 60), (2100, 2100)])  # one block of PIL memory, or several
def test_pixels_are_rgb_plus_a_pad_byte(size: tuple[int, int]) -> None:
    img = image(np.random.default_rng(4), *size)
    px = pixels(img)
    assert px.shape == (size[1], size[0], 4) and px.dtype == np.uint8
    assert np.array_equal(px[..., :3], np.asarray(img))


def test_a_crafted_exif_block_still_gives_the_upright_image() -> None:
    """Orientation 6 beside a tag stored with the wrong type: PIL opens the image but
    ``exif_transpose`` raises ``struct.error``; the image is still turned upright."""
    data = encode_with_exif(image(np.random.default_rng(4), 64, 48), crafted_exif())
    out = decode_sample(0, RawSample("k", {"jpg": data}), 64, 10**7)
    assert isinstance(out, DecodedSample)
    assert (out.width, out.height) == (48, 64) and tuple(out.image.shape) == (64, 48, 4)
    stored = Image.open(io.BytesIO(data)).convert("RGB")  # the pixels as stored, 64 x 48
    upright = np.asarray(stored.transpose(Image.Transpose.ROTATE_270))  # what 6 means
    np.testing.assert_array_equal(out.image[..., :3], upright)


def test_every_exception_a_mutated_image_raises_is_an_error_row() -> None:
    """Bounded fuzz: bytes flipped in JPEGs with and without (headers, EXIF block,
    entropy data) give a decoded sample or an error row, never an exception (a shard's other
    samples would be lost)."""
    rng = np.random.default_rng(5)
    seeds = [encode_with_exif(image(rng, 40, 30), crafted_exif()), encode(image(rng, 40, 30))]
    kinds = set()
    for n in range(400):
        data = bytearray(seeds[n % len(seeds)])
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, min(len(data), 400)))  # mostly headers and EXIF
            data[at] = int(rng.integers(0, 256))
        out = decode_sample(n, RawSample("k", {"jpg": bytes(data)}), 32, 1_000_000)
        kinds.add(type(out).__name__)
    assert kinds == {"DecodedSample", "SampleError"}


def query_crop(full: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[bytes, Image.Image]:
    """A query crop as prepare_revisitop.py writes it, and the crop itself."""
    from pipeline.datasets.revisitop import _crop_png

    whole = image(np.random.default_rng(6), *full)
    data = _crop_png(encode(whole, quality=95), box)
    return data, Image.open(io.BytesIO(data)).convert("RGB")


@pytest.mark.parametrize("size", [64, 100])
def test_query_crops_are_scaled_by_the_full_images_factor_as_cirtorch_does(size) -> None:
    """cirtorch's ImagesFromList: ``imresize(crop, imsize * max(crop.size) / imfullsize)``,
    where imresize is PIL's ``thumbnail`` (it floors the size it is given): the crop keeps
    its scale relative to the database images instead of being enlarged to ``size``."""
    data, crop = query_crop((160, 120), (30, 20, 110, 70))  # an 80 x 50 crop
    out = decode_sample(0, RawSample("q", {"png": data}), size, 10**7)
    assert isinstance(out, DecodedSample)
    reference = crop.copy()
    reference.thumbnail((size * max(crop.size) / 160,) * 2)  # cirtorch's formula, literally
    assert tuple(out.image.shape[:2]) == (reference.size[1], reference.size[0])
    assert max(out.image.shape[:2]) == int(size * 80 / 160) < size


def test_query_crops_can_be_scaled_like_any_image_by_name() -> None:
    data, _ = query_crop((160, 120), (30, 20, 110, 70))
    out = decode_sample(0, RawSample("q", {"png": data}), 64, 10**7, crop_scale="crop")
    assert isinstance(out, DecodedSample) and tuple(out.image.shape[:2]) == (40, 64)


def cirtorch_input(img: Image.Image) -> torch.Tensor:
    """cirtorch's test transform: ToTensor, then ImageNet's Normalize -> (1, 3, H, W)."""
    from tests.support.foreign_networks import imagenet_input

    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    return imagenet_input(x.permute(2, 0, 1)[None])


def decoded_input(out: object) -> torch.Tensor:
    from glam.preprocess import normalize

    assert isinstance(out, DecodedSample)
    return normalize(torch.from_numpy(np.array(out.image))[None])


def test_lanczos_shrink_gives_a_converted_cirtorch_network_its_own_descriptors(tmp_path) -> None:
    """cirtorch's ImagesFromList resizes with ``imresize`` = PIL ``thumbnail(LANCZOS)``, never
    enlarging, query crops by the full image's factor. ``--resize lanczos-shrink`` feeds the
    converted network the same pixels: cosine >= 0.9999 to cirtorch's own pipeline on images
    that need resizing (bilinear, the default, does not), an unchanged small image, a crop."""
    from glam.builder import build_glam
    from jobs.convert_weights import main as convert_main
    from tests.support.foreign_networks import CirtorchGeM, cirtorch_checkpoint

    net = CirtorchGeM("resnet18", whiten=True, seed=3).eval()
    src = tmp_path / "rSfM120k-tl-resnet18-gem-w.pth"
    src.write_bytes(cirtorch_checkpoint(net, "resnet18"))
    out = str(tmp_path / "converted.safetensors")
    assert convert_main(["--source", str(src), "--format", "cirtorch", "--output", out]) == 0
    model = build_glam(out).eval()
    size = 96
    big = photo(np.random.default_rng(11), 230, 170)  # W x H, shrunk to 96 x 71
    small = photo(np.random.default_rng(12), 90, 60)  # smaller than size: left as it is
    crop_data, crop = query_crop((320, 240), (30, 20, 230, 170))  # 200 x 150 of 320

    def cosines(resize: str) -> list[float]:
        got = []
        for data, reference in [
            (encode(big, fmt="PNG"), _thumbnail(big, size)),
            (encode(small, fmt="PNG"), small),
            (crop_data, _thumbnail(crop, size * max(crop.size) / 320)),
        ]:
            raw = RawSample("k", {"png": data})
            item = decode_sample(0, raw, size, 10**7, None, "full_image", resize)
            with torch.no_grad():
                a, b = model(decoded_input(item)), net(cirtorch_input(reference))
            got.append(float(torch.nn.functional.cosine_similarity(a, b)[0]))
        return got

    lanczos = cosines("lanczos-shrink")
    assert min(lanczos) >= 0.99999, lanczos  # the same pixels: equal up to float rounding
    # Bilinear: another filter (1 - cos ~ 1e-4 with these random weights, 2e-3 with trained
    # ones on real photos) and the small image enlarged.
    bilinear = cosines("bilinear")
    assert bilinear[1] < 0.999 and min(bilinear[0], bilinear[2]) < 0.99999, bilinear


def _thumbnail(img: Image.Image, side: float) -> Image.Image:
    """cirtorch's ``imresize``, literally (``Image.ANTIALIAS`` is LANCZOS)."""
    out = img.convert("RGB")
    out.thumbnail((side, side), Image.Resampling.LANCZOS)
    return out


def test_lanczos_shrink_never_enlarges_and_is_refused_with_device_decode() -> None:
    from pipeline.extract.spec import ExtractionSpec

    data = encode(photo(np.random.default_rng(1), 50, 40), fmt="PNG")
    out = decode_sample(0, RawSample("k", {"png": data}), 64, 10**7, resize="lanczos-shrink")
    assert isinstance(out, DecodedSample) and tuple(out.image.shape[:2]) == (40, 50)
    with pytest.raises(ValueError, match="lanczos-shrink is PIL's filter"):
        ExtractionSpec(resize="lanczos-shrink", decode="gpu")
    with pytest.raises(ValueError, match="resize must be one of bilinear, lanczos-shrink"):
        ExtractionSpec(resize="bicubic")  # type: ignore[arg-type]
