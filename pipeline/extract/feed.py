"""A shard's samples decoded in parallel and handed over in shard order.

A reader thread streams the shard and submits chunks of samples to the actor's decode threads
(``DecodePool``, shared by the shards the actor has in flight); the consumer takes the results
in submission order, so the output order is the shard's whatever the threads' timing. Threads,
not processes: PIL releases the GIL while it decodes and resizes, and a decoded image then
needs no pickling (measured in BENCHMARKS.md). At most ``depth`` chunks are read ahead, which
bounds the memory a shard holds whatever its size.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pipeline.extract.decode import Item
from pipeline.io.redact import redact_text
from pipeline.io.shard_reader import RawSample, ShardFormatError, ShardStorageError, iter_shard
from pipeline.io.shards import shard_id
from pipeline.io.storage import filesystem
from pipeline.runtime.producer import Producer

# Decodes a chunk of (position, sample): every sample's rows (``decode.sample_rows``: an image or
# an error row, then a row for each other image member), in order, and how many images were
# decoded on the device.
ChunkDecoder = Callable[[Sequence[tuple[int, RawSample]]], tuple[list[Item], int]]


class ShardReadError(RuntimeError):
    """A shard whose bytes could not be fetched to the end (storage, network): retried."""


class ShardUnreadableError(RuntimeError):
    """A shard whose bytes are not a readable tar (or that does not exist): not retried,
    since a retry reads the same bytes."""


@dataclass
class Decoded:
    """One chunk's results and the seconds its decode took."""

    items: list[Item]
    seconds: float
    on_device: int


class DecodePool:
    """An actor's decode threads; ``chunk`` samples per task (1 for CPU decode, a batch for
    the device decoder)."""

    def __init__(self, workers: int, decode: ChunkDecoder, chunk: int = 1) -> None:
        if workers <= 0 or chunk <= 0:
            raise ValueError(f"decode workers and chunk must be positive, got {workers}, {chunk}")
        self.workers = workers
        self.chunk = chunk
        self._decode = decode
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="decode")

    def submit(self, samples: list[tuple[int, RawSample]]) -> Future[Decoded]:
        return self._executor.submit(self._run, samples)

    def _run(self, samples: list[tuple[int, RawSample]]) -> Decoded:
        t = time.perf_counter()
        items, on_device = self._decode(samples)
        return Decoded(items, time.perf_counter() - t, on_device)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class FeedCounters:
    """What the reader saw: bytes read (live: ``bytes_read[0]``), the shard's size when the
    store says it, seconds spent reading; and what the decoders did."""

    bytes_read: list[int]
    shard_bytes: int | None = None
    read_s: float = 0.0
    decode_s: float = 0.0
    on_device: int = 0

    @property
    def fraction(self) -> float | None:
        """The share of the shard's bytes read so far (None: size unknown)."""
        if not self.shard_bytes:
            return None
        return min(1.0, self.bytes_read[0] / self.shard_bytes)


class ShardFeed:
    """The decoded samples of one shard, in shard order; reading starts at ``start()``.

    Iterating raises ``ShardReadError`` when the shard's bytes cannot be fetched to their end,
    ``ShardUnreadableError`` when they are not a readable tar; an error in a
    decode thread (a bug: bad images are error rows) is raised as it is. ``close()`` stops the
    reader and cancels the decodes not yet started.
    """

    def __init__(self, shard_uri: str, pool: DecodePool, prefetch: int) -> None:
        self.shard_uri = shard_uri
        self.pool = pool
        self.counters = FeedCounters(bytes_read=[0])
        self._submitted: deque[Future[Decoded]] = deque()
        self._producer = Producer(
            self._submit_chunks,
            depth=max(1, prefetch // pool.chunk),
            name=f"read-{shard_id(shard_uri)}",
        )
        self._lock = threading.Lock()

    def start(self) -> None:
        self._producer.start()

    def _submit_chunks(self) -> Iterator[Future[Decoded]]:
        """On the reader thread: stream the shard, submit chunks to the decode pool."""
        c = self.counters
        t = time.perf_counter()
        fs, path = filesystem(self.shard_uri)
        try:
            c.shard_bytes = int(fs.size(path))
        except Exception:  # best effort; the read below reports what is wrong with the shard
            c.shard_bytes = None  # unknown: progress is counted in images only
        chunk: list[tuple[int, RawSample]] = []
        for index, raw in enumerate(iter_shard(self.shard_uri, c.bytes_read)):
            chunk.append((index, raw))
            if len(chunk) < self.pool.chunk:
                continue
            c.read_s += time.perf_counter() - t
            yield self._submit(chunk)
            chunk = []
            t = time.perf_counter()
        if chunk:
            yield self._submit(chunk)
        c.read_s += time.perf_counter() - t

    def _submit(self, chunk: list[tuple[int, RawSample]]) -> Future[Decoded]:
        future = self.pool.submit(chunk)
        with self._lock:
            self._submitted.append(future)
        return future

    def __iter__(self) -> Iterator[Item]:
        futures = iter(self._producer)
        try:
            while True:
                try:
                    future = next(futures)
                except StopIteration:
                    return
                except ShardStorageError as e:  # worth a retry
                    raise ShardReadError(redact_text(str(e))[:1000]) from e
                except ShardFormatError as e:  # the same bytes again: not worth one
                    raise ShardUnreadableError(redact_text(str(e))[:1000]) from e
                with self._lock:
                    self._submitted.popleft()
                decoded = future.result()
                self.counters.decode_s += decoded.seconds
                self.counters.on_device += decoded.on_device
                yield from decoded.items
        finally:
            self.close()

    @property
    def queued(self) -> int:
        """Chunks read and not yet taken by the consumer."""
        return self._producer.depth

    def close(self) -> None:
        self._producer.close()
        with self._lock:
            while self._submitted:
                self._submitted.popleft().cancel()
