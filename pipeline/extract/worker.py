"""The shard worker: stream a shard -> decode -> size-bucketed batches -> GLAM -> Parquet ->
commit marker. Plain Python (the Ray actor in ``pipeline.extract.actors`` wraps it), so tests
can call it directly. Reading and decoding run on a producer thread, ahead of the model."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

import glam
from glam import ExtractConfig, GlamExtractor, build_glam
from pipeline.extract.batching import SizeBuckets
from pipeline.extract.decode import DecodedSample, SampleError, decode_sample
from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.extract.stats import ShardStats
from pipeline.io.descriptor_writer import (
    descriptor_table,
    error_table,
    file_metadata,
    parquet_bytes,
)
from pipeline.io.layout import descriptors_uri, errors_uri, marker_uri
from pipeline.io.redact import redact, redact_text
from pipeline.io.shard_reader import ShardFormatError, ShardStorageError, iter_shard
from pipeline.io.shards import shard_id
from pipeline.io.storage import write_bytes_atomic, write_json_atomic
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.producer import Producer

log = logging.getLogger(__name__)


class ShardReadError(RuntimeError):
    """A shard whose bytes could not be fetched to the end (storage, network): retried."""


class ShardUnreadableError(RuntimeError):
    """A shard whose bytes are not a readable tar (or that does not exist): not retried,
    since a retry reads the same bytes."""


class ShardWorker:
    """Loads GLAM once; ``process(shard_uri, output)`` turns one shard into committed output."""

    def __init__(
        self,
        spec: ExtractionSpec,
        device: str | None = None,
        name: str = "",
        on_retry: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        # Called as on_retry(shard_uri, failed_attempt, error) before each retry's backoff.
        self.on_retry = on_retry
        model = build_glam(weights=spec.weights, seed=spec.seed)
        extract_cfg = ExtractConfig(
            image_size=spec.image_size, scales=spec.scales, precision=spec.precision
        )
        self.extractor = GlamExtractor(model, extract_cfg, device=device)
        self.fingerprint = fingerprint(spec, model.config.to_dict(), model.weights_sha256)
        # issue 12: where the weights are, for search by image (jobs/search_index.py --image).
        self.metadata = file_metadata(
            self.fingerprint, glam.__version__, redact_text(spec.weights or "random"), spec.seed
        )
        self.dim = model.config.dim
        log.info("worker %s ready on %s", name, self.extractor.device)

    def process(self, shard_uri: str, output: str) -> ShardStats:
        """Process one shard with retries (never raises for a bad shard: a shard that stays
        unreadable comes back with status ``failed``)."""
        sid = shard_id(shard_uri)
        start = time.perf_counter()
        last_error = ""
        for attempt in range(1, self.spec.shard_attempts + 1):
            stats = ShardStats(shard=sid, source=shard_uri, attempts=attempt, worker=self.name)
            try:
                self._process_once(shard_uri, output, stats, start)
                return stats
            except ShardUnreadableError as e:
                last_error = str(e)
                log.warning("shard %s is unreadable: %s", sid, last_error)
                return ShardStats(
                    shard=sid,
                    source=shard_uri,
                    status="failed",
                    worker=self.name,
                    attempts=attempt,
                    error=last_error,
                    wall_s=time.perf_counter() - start,
                )
            except ShardReadError as e:
                last_error = str(e)
                log.warning(
                    "shard %s attempt %d/%d failed: %s",
                    sid,
                    attempt,
                    self.spec.shard_attempts,
                    last_error,
                )
                if attempt < self.spec.shard_attempts:
                    if self.on_retry is not None:
                        self.on_retry(shard_uri, attempt, last_error)
                    time.sleep(self.spec.retry_backoff_s * 2 ** (attempt - 1))
        return ShardStats(
            shard=sid,
            source=shard_uri,
            status="failed",
            worker=self.name,
            attempts=self.spec.shard_attempts,
            error=last_error,
            wall_s=time.perf_counter() - start,
        )

    def _read_and_decode(
        self, shard_uri: str, stats: ShardStats
    ) -> Iterator[DecodedSample | SampleError]:
        """The shard's samples decoded, in shard order (runs on the producer thread)."""
        counter = [0]
        try:
            t_read = time.perf_counter()
            for index, raw in enumerate(iter_shard(shard_uri, counter)):
                t_decode = time.perf_counter()
                stats.read_s += t_decode - t_read
                item = decode_sample(index, raw, self.spec.image_size, self.spec.max_pixels)
                t_read = time.perf_counter()
                stats.decode_s += t_read - t_decode
                yield item
            stats.read_s += time.perf_counter() - t_read
        finally:
            stats.bytes = counter[0]

    def _decoded(self, shard_uri: str, stats: ShardStats) -> Iterator[DecodedSample | SampleError]:
        """Read and decode on a producer thread; yield results in shard order."""
        producer = Producer(
            lambda: self._read_and_decode(shard_uri, stats),
            depth=self.spec.prefetch,
            name=f"read-{shard_id(shard_uri)}",
        )
        items = iter(producer)
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except ShardStorageError as e:  # worth a retry
                raise ShardReadError(redact_text(str(e))[:1000]) from e
            except ShardFormatError as e:  # the same bytes again: not worth one
                raise ShardUnreadableError(redact_text(str(e))[:1000]) from e
            metrics.set_gauge("queue", producer.depth)
            yield item

    def _process_once(self, shard_uri: str, output: str, stats: ShardStats, start: float) -> None:
        sid = stats.shard
        buckets = SizeBuckets(self.spec.batch_size)
        done: list[tuple[DecodedSample, np.ndarray]] = []
        failed: list[SampleError] = []

        def infer(batch: list[DecodedSample]) -> None:
            t = time.perf_counter()
            d = self.extractor.extract_batch(torch.stack([s.image for s in batch])).numpy()
            stats.infer_s += time.perf_counter() - t
            done.extend(zip(batch, d, strict=True))
            if failpoints.trigger("actor_crash_in_shard", sid):
                os._exit(1)  # a hard crash mid-shard, after some work, before any output

        for item in self._decoded(shard_uri, stats):
            if isinstance(item, SampleError):
                failed.append(item)
                continue
            full = buckets.add(item)
            if full:
                infer(full)
        for batch in buckets.flush():
            infer(batch)

        t = time.perf_counter()
        done.sort(key=lambda pair: pair[0].index)
        failed.sort(key=lambda e: e.index)
        descriptors = (
            np.stack([d for _, d in done]) if done else np.zeros((0, self.dim), np.float32)
        )
        source = redact_text(shard_uri)  # no URL credentials in the data
        table = descriptor_table(
            [s.key for s, _ in done],
            source,
            descriptors,
            [s.width for s, _ in done],
            [s.height for s, _ in done],
            self.metadata,
        )
        errors = error_table(
            [e.key for e in failed],
            source,
            [e.error for e in failed],
            [e.message for e in failed],
            self.metadata,
        )
        write_bytes_atomic(descriptors_uri(output, sid), parquet_bytes(table))
        write_bytes_atomic(errors_uri(output, sid), parquet_bytes(errors))
        stats.write_s = time.perf_counter() - t
        stats.ok, stats.errors = len(done), len(failed)
        stats.samples = stats.ok + stats.errors
        for e in failed:
            stats.errors_by_type[e.error] = stats.errors_by_type.get(e.error, 0) + 1
        stats.wall_s = time.perf_counter() - start
        # The commit marker is written last: its presence means both files are complete.
        marker = redact({**stats.to_dict(), "fingerprint": self.fingerprint})
        write_json_atomic(marker_uri(output, sid), marker)
