"""Size-bucketed batching: images of equal (H, W) share a batch, so no padding is needed and a
sample's descriptor never depends on its batch-mates. The buckets hold at most ``max_held``
images: past that the fullest bucket goes out as a partial batch, so memory does not grow with
the shard (a shard of many aspect ratios would otherwise hold every image to its end)."""

from __future__ import annotations

from pipeline.extract.decode import DecodedSample


class SizeBuckets:
    """Collects samples per image size; releases a bucket once it holds ``batch_size``."""

    def __init__(self, batch_size: int, max_held: int | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_held is not None and max_held < batch_size:
            raise ValueError(f"max_held must be >= batch_size, got {max_held} < {batch_size}")
        self.batch_size = batch_size
        self.max_held = max_held
        self._buckets: dict[tuple[int, ...], list[DecodedSample]] = {}
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def add(self, sample: DecodedSample) -> list[list[DecodedSample]]:
        """Add a sample; return the batches to run now: its bucket when full, and the fullest
        partial bucket while more than ``max_held`` images are held (empty: none yet)."""
        size = tuple(sample.image.shape[:2])
        bucket = self._buckets.setdefault(size, [])
        bucket.append(sample)
        self._held += 1
        out = []
        if len(bucket) == self.batch_size:
            out.append(self._release(size))
        if self.max_held is not None and self._held > self.max_held:
            fullest = max(self._buckets, key=lambda k: len(self._buckets[k]))
            out.append(self._release(fullest))
        return out

    def flush(self) -> list[list[DecodedSample]]:
        """The partial batches left at the end of a shard."""
        return [self._release(size) for size in list(self._buckets)]

    def _release(self, size: tuple[int, ...]) -> list[DecodedSample]:
        bucket = self._buckets.pop(size)
        self._held -= len(bucket)
        return bucket
