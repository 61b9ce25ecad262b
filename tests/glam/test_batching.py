"""glam's batching rule: items of one size share a batch, at most batch_size, every item once."""

from __future__ import annotations

import pytest

from glam.batching import SizeBuckets


def test_buckets_release_full_batches_of_one_size_and_flush_the_rest() -> None:
    sizes = [(4, 6), (6, 4), (4, 6), (4, 6), (6, 4), (4, 6)]
    buckets = SizeBuckets(2, lambda i: sizes[i])
    out = [batch for i in range(len(sizes)) for batch in buckets.add(i)]
    assert out == [[0, 2], [1, 4], [3, 5]] and buckets.held == 0 and buckets.flush() == []


def test_max_held_releases_the_fullest_bucket_early() -> None:
    buckets = SizeBuckets(4, lambda i: i % 5, max_held=6)
    out = []
    for i in range(30):
        out += buckets.add(i)
        assert buckets.held <= 6
    out += buckets.flush()
    assert sorted(i for b in out for i in b) == list(range(30))
    assert all(len({i % 5 for i in b}) == 1 and len(b) <= 4 for b in out)


@pytest.mark.parametrize("batch_size,max_held", [(0, None), (4, 3)])
def test_bad_sizes_are_refused(batch_size: int, max_held: int | None) -> None:
    with pytest.raises(ValueError):
        SizeBuckets(batch_size, lambda i: i, max_held)
