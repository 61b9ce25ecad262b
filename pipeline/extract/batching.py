"""Size buckets over a shard's decoded samples: glam's batching rule (``glam.batching``) keyed
by the samples' pixel size (H, W), so only equal-size images share a batch."""

from __future__ import annotations

from glam.batching import SizeBuckets as _SizeBuckets
from pipeline.extract.decode import DecodedSample


def pixel_size(sample: DecodedSample) -> tuple[int, int]:
    """(H, W) of a decoded sample's pixels (host or device)."""
    h, w = sample.image.shape[:2]
    return int(h), int(w)


class SizeBuckets(_SizeBuckets[DecodedSample]):
    """Decoded samples per pixel size; a bucket is released once it holds ``batch_size``, and
    the fullest one early while more than ``max_held`` samples are held."""

    def __init__(self, batch_size: int, max_held: int | None = None) -> None:
        super().__init__(batch_size, pixel_size, max_held)
