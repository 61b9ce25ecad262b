from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES, bad_sample, encode, image, odd_mode
from pipeline.extract.batching import SizeBuckets
from pipeline.extract.decode import DecodedSample, SampleError, decode_sample
from pipeline.io.shard_reader import RawSample


@pytest.mark.parametrize("kind,error", sorted(BAD_KINDS.items()))
def test_bad_samples_become_typed_errors(kind: str, error: str) -> None:
    raw = RawSample(key=f"k_{kind}", members=bad_sample(kind, np.random.default_rng(0)))
    out = decode_sample(7, raw, image_size=64, max_pixels=10_000_000)
    assert isinstance(out, SampleError)
    assert (out.index, out.key, out.error) == (7, f"k_{kind}", error)
    assert out.message


@pytest.mark.parametrize("mode", ODD_MODES)
def test_odd_modes_decode_to_rgb_tensors(mode: str) -> None:
    ext, data = odd_mode(image(np.random.default_rng(1), 90, 60), mode)
    out = decode_sample(0, RawSample("k", {ext: data, "cls": b"1"}), 64, 10_000_000)
    assert isinstance(out, DecodedSample)
    assert tuple(out.image.shape) == (3, 43, 64) and (out.width, out.height) == (90, 60)


def test_pixel_limit_is_configurable() -> None:
    raw = RawSample("k", {"jpg": encode(image(np.random.default_rng(2), 90, 60))})
    assert isinstance(decode_sample(0, raw, 64, 90 * 60), DecodedSample)
    out = decode_sample(0, raw, 64, 90 * 60 - 1)
    assert isinstance(out, SampleError) and out.error == "oversized"


def _sample(i: int, h: int, w: int) -> DecodedSample:
    return DecodedSample(i, str(i), torch.zeros(3, h, w), w, h)


def test_size_buckets_release_full_batches_and_flush_the_rest() -> None:
    buckets = SizeBuckets(2)
    assert buckets.add(_sample(0, 4, 6)) is None
    assert buckets.add(_sample(1, 6, 4)) is None
    full = buckets.add(_sample(2, 4, 6))
    assert full is not None and [s.index for s in full] == [0, 2]
    assert buckets.add(_sample(3, 4, 6)) is None
    rest = buckets.flush()
    assert sorted(s.index for b in rest for s in b) == [1, 3]
    assert all(len({tuple(s.image.shape) for s in b}) == 1 for b in rest)
    assert buckets.flush() == []
    with pytest.raises(ValueError):
        SizeBuckets(0)


def test_shard_stats_round_trip_through_a_commit_marker() -> None:
    from pipeline.extract.stats import ShardStats, ShardTotals

    stats = ShardStats("000001", "s3://b/000001.tar", samples=5, ok=4, errors=1, infer_s=2.0)
    stats.errors_by_type["empty"] = 1
    marker = {**stats.to_dict(), "fingerprint": {"model": "GLAM"}}
    assert ShardStats.from_dict(marker) == stats
    failed = ShardStats("000002", "s3://b/000002.tar", status="failed", error="gone")
    totals = ShardTotals.over([stats, failed, stats])
    assert (totals.committed_shards, totals.samples, totals.ok, totals.infer_s) == (2, 10, 8, 4.0)
