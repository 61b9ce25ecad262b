"""Size-bucketed batching: images of equal (H, W) share a batch, so no padding is needed and a
sample's descriptor never depends on its batch-mates."""

from __future__ import annotations

from collections import defaultdict

from pipeline.extract.decode import DecodedSample


class SizeBuckets:
    """Collects samples per image size and releases a bucket once it holds ``batch_size``."""

    def __init__(self, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self._buckets: dict[tuple[int, ...], list[DecodedSample]] = defaultdict(list)

    def add(self, sample: DecodedSample) -> list[DecodedSample] | None:
        """Add a sample; return a full batch when its bucket fills, else None."""
        bucket = self._buckets[tuple(sample.image.shape)]
        bucket.append(sample)
        if len(bucket) < self.batch_size:
            return None
        del self._buckets[tuple(sample.image.shape)]
        return bucket

    def flush(self) -> list[list[DecodedSample]]:
        """The partial batches left at the end of a shard."""
        batches = [b for b in self._buckets.values() if b]
        self._buckets.clear()
        return batches
