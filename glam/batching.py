"""Size-bucketed batching: images of equal size share a batch, so no padding is needed and an
image's descriptor never depends on its batch-mates. The buckets hold at most ``max_held``
items: past that the fullest bucket goes out as a partial batch, so memory does not grow with
the stream (a shard of many aspect ratios would otherwise hold every image to its end).

The one batching rule of the code base: ``GlamExtractor`` batches its inputs with it, and the
pipeline's shard worker its decoded samples (``pipeline.extract.batching``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SizeBuckets(Generic[T]):
    """Collects items per image size (``size_of(item)``, e.g. (H, W)); releases a bucket once
    it holds ``batch_size``."""

    def __init__(
        self,
        batch_size: int,
        size_of: Callable[[T], Hashable],
        max_held: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_held is not None and max_held < batch_size:
            raise ValueError(f"max_held must be >= batch_size, got {max_held} < {batch_size}")
        self.batch_size = batch_size
        self.max_held = max_held
        self._size_of = size_of
        self._buckets: dict[Hashable, list[T]] = {}
        self._held = 0

    @property
    def held(self) -> int:
        """Items collected and not released yet."""
        return self._held

    def add(self, item: T) -> list[list[T]]:
        """Add an item; return the batches to run now: its bucket when full, and the fullest
        partial bucket while more than ``max_held`` items are held (empty: none yet)."""
        size = self._size_of(item)
        bucket = self._buckets.setdefault(size, [])
        bucket.append(item)
        self._held += 1
        out = []
        if len(bucket) == self.batch_size:
            out.append(self._release(size))
        if self.max_held is not None and self._held > self.max_held:
            fullest = max(self._buckets, key=lambda k: len(self._buckets[k]))
            out.append(self._release(fullest))
        return out

    def flush(self) -> list[list[T]]:
        """The partial batches left at the end of the stream."""
        return [self._release(size) for size in list(self._buckets)]

    def _release(self, size: Hashable) -> list[T]:
        bucket = self._buckets.pop(size)
        self._held -= len(bucket)
        return bucket
