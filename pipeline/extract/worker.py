"""The shard worker: stream a shard -> decode in parallel -> size-bucketed uint8 batches ->
GLAM on the device -> Parquet -> commit marker. Plain Python (the Ray actor in
``pipeline.extract.actors`` wraps it), so tests and benchmarks can call it directly.

Three things overlap, so that the model never waits for what is not its work:

- reading and decoding (``feed``): a shard's reader thread and the actor's decode threads
  start when ``process`` is called, so the next shard decodes while this one computes;
- compute: one thread owns the device and runs the shards' batches one shard after another
  (uint8 crosses to the device, normalisation and the scales happen there; on CUDA the next
  batch's copy overlaps this one's compute);
- commit: the calling thread encodes the Parquet files, uploads them and writes the marker
  last, while the compute thread goes on with the next shard.

``process`` is safe to call from several threads at once (the actor calls it once per shard in
flight) and returns when the shard is committed. Memory is bounded by the prefetch depth and
the batch size, whatever the shard's size: image tensors are dropped once their batch has
been computed; only descriptors (2 KB an image) stay until the commit.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

import glam
from glam import ExtractConfig, GlamExtractor, build_glam
from glam.extract import Pixels, resolve_precision, select_device
from pipeline.extract.batching import SizeBuckets
from pipeline.extract.decode import DecodedSample, SampleError, decode_sample, sample_rows
from pipeline.extract.feed import (
    ChunkDecoder,
    DecodePool,
    Item,
    ShardFeed,
    ShardReadError,
    ShardUnreadableError,
)
from pipeline.extract.gpu_decode import DeviceJpegDecoder
from pipeline.extract.spec import ExtractionSpec, draft_side, fingerprint
from pipeline.extract.stats import ShardStats
from pipeline.io.descriptor_writer import (
    descriptor_table,
    error_table,
    file_metadata,
    parquet_bytes,
)
from pipeline.io.layout import descriptors_uri, errors_uri, marker_uri
from pipeline.io.redact import redact, redact_text
from pipeline.io.shard_reader import RawSample
from pipeline.io.shards import shard_id
from pipeline.io.storage import WEIGHTS_STORE, write_bytes_atomic, write_json_atomic
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.lease import FenceCheck, LeaseFence, LeaseLostError
from pipeline.runtime.progress import UnitProgress

log = logging.getLogger(__name__)

__all__ = ["ShardReadError", "ShardUnreadableError", "ShardWorker"]

# Samples per decode task: a few for the CPU (fewer futures and hand-offs under the GIL), many
# per device-decoder call (--decode gpu: nvjpeg's batched decode wants them at once).
CPU_DECODE_CHUNK = 4
DEVICE_DECODE_CHUNK = 32


Kept = tuple[int, str, int, int]  # a sample's position, key, width and height
Tagged = tuple[list[Kept], list[Pixels]]  # a batch: what the commit needs, the images


@dataclass
class Computed:
    """A shard's results once its batches have run: what the commit writes."""

    kept: list[Kept] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)  # (B, dim) float32 each
    failed: list[SampleError] = field(default_factory=list)


@dataclass
class _Job:
    """One shard attempt queued for the compute thread."""

    feed: ShardFeed
    stats: ShardStats
    dispatch: int
    result: Future[Computed] = field(default_factory=Future)


class ShardWorker:
    """Loads GLAM once; ``process(shard_uri, output)`` turns one shard into committed output."""

    def __init__(
        self,
        spec: ExtractionSpec,
        device: str | None = None,
        name: str = "",
        on_retry: Callable[[str, int, str], None] | None = None,
        cpus: int | None = None,
        progress: Callable[[UnitProgress], None] | None = None,
        report_interval_s: float = 1.0,
        extractor: GlamExtractor | None = None,
    ) -> None:
        """``cpus``: the CPUs this worker holds (decode threads default to it; None: the
        machine's). ``progress``: called with the images done during a shard, at most every
        ``report_interval_s``. ``extractor``: a ready extractor (benchmarks replace the model)."""
        self.spec = spec
        self.name = name
        # Called as on_retry(shard_uri, failed_attempt, error) before each retry's backoff.
        self.on_retry = on_retry
        self.progress = progress
        self.report_interval_s = report_interval_s
        dev = select_device(device)
        self.precision = resolve_precision(spec.precision, dev)
        if extractor is None:
            model = build_glam(weights=spec.weights, seed=spec.seed, store=WEIGHTS_STORE)
            extract_cfg = ExtractConfig(scales=spec.scales, precision=self.precision)
            extractor = GlamExtractor(model, extract_cfg, device=device)
        self.extractor = extractor
        model = extractor.model
        self.fingerprint = fingerprint(
            spec, model.config.to_dict(), model.weights_sha256, self.precision
        )
        # Where the weights are, for search by image (jobs/search_index.py --image).
        self.metadata = file_metadata(
            self.fingerprint, glam.__version__, redact_text(spec.weights or "random"), spec.seed
        )
        self.dim = model.config.dim
        self.decode = self._resolve_decode(dev)
        workers = spec.decode_workers or cpus or os.cpu_count() or 1
        self.pool = DecodePool(workers, *self._chunk_decoder(dev))
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._compute_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._fence: FenceCheck | None = None
        log.info(
            "worker %s ready on %s: precision %s (asked %s), %s decode, %d decode threads",
            name,
            self.extractor.device,
            self.precision,
            spec.precision,
            self.decode,
            workers,
        )

    def _resolve_decode(self, device: torch.device) -> str:
        if self.spec.decode == "gpu" and device.type != "cuda":
            log.warning("--decode gpu on %s: no CUDA device, decoding on the CPU", device.type)
            return "cpu"
        return self.spec.decode

    def _chunk_decoder(self, device: torch.device) -> tuple[ChunkDecoder, int]:
        spec, side = self.spec, draft_side(self.spec)
        if self.decode == "gpu":
            decoder = DeviceJpegDecoder(
                device, spec.image_size, spec.max_pixels, side, spec.query_crop_scale
            )
            return decoder.decode, DEVICE_DECODE_CHUNK

        def on_cpu(samples: Sequence[tuple[int, RawSample]]) -> tuple[list[Item], int]:
            items = [
                row
                for i, raw in samples
                for row in sample_rows(
                    decode_sample(
                        i,
                        raw,
                        spec.image_size,
                        spec.max_pixels,
                        side,
                        spec.query_crop_scale,
                        spec.resize,
                    )
                )
            ]
            return items, 0

        return on_cpu, CPU_DECODE_CHUNK

    def process(
        self, shard_uri: str, output: str, dispatch: int = 0, fence: LeaseFence | None = None
    ) -> ShardStats:
        """Process one shard with retries (never raises for a bad shard: a shard that stays
        unreadable comes back with status ``failed``). ``dispatch`` numbers the driver's
        hand-outs of the shard, for the progress reports. ``fence``: the run's lease, checked
        before each write of the commit; a shard whose run lost the lease is not committed
        (status ``failed``, nothing written)."""
        check = self._fence_check(fence)
        sid = shard_id(shard_uri)
        start = time.perf_counter()
        last_error = ""

        def failed(attempts: int, error: str) -> ShardStats:
            return ShardStats(
                shard=sid,
                source=shard_uri,
                status="failed",
                worker=self.name,
                attempts=attempts,
                error=error,
                wall_s=time.perf_counter() - start,
            )

        for attempt in range(1, self.spec.shard_attempts + 1):
            stats = ShardStats(shard=sid, source=shard_uri, attempts=attempt, worker=self.name)
            try:
                computed = self._compute(shard_uri, stats, dispatch)
                self._commit(computed, output, stats, start, check)
                return stats
            except LeaseLostError as e:
                log.error("shard %s not committed: %s", sid, e)
                return failed(attempt, str(e))
            except ShardUnreadableError as e:
                log.warning("shard %s is unreadable: %s", sid, e)
                return failed(attempt, str(e))
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
        return failed(self.spec.shard_attempts, last_error)

    def _fence_check(self, fence: LeaseFence | None) -> Callable[[], None]:
        """The fence's check, kept across shards of one run (its trusted period with it)."""
        if fence is None:
            return lambda: None
        with self._lock:
            if self._fence is None or self._fence.fence != fence:
                self._fence = FenceCheck(fence)
            return self._fence.check

    def _compute(self, shard_uri: str, stats: ShardStats, dispatch: int) -> Computed:
        """Start reading and decoding now; wait for the compute thread to run the batches."""
        feed = ShardFeed(shard_uri, self.pool, self.spec.prefetch)
        feed.start()
        job = _Job(feed, stats, dispatch)
        try:
            self._ensure_compute_thread()
            self._jobs.put(job)
            return job.result.result()
        finally:
            feed.close()
            c = feed.counters
            stats.bytes, stats.read_s, stats.decode_s = c.bytes_read[0], c.read_s, c.decode_s
            stats.device_decoded = c.on_device

    def _ensure_compute_thread(self) -> None:
        with self._lock:
            if self._compute_thread is None:
                self._compute_thread = threading.Thread(
                    target=self._compute_loop, name="compute", daemon=True
                )
                self._compute_thread.start()

    def _compute_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.result.set_result(self._run(job))
            except BaseException as e:  # handed to the shard's thread
                job.result.set_exception(e)

    def _run(self, job: _Job) -> Computed:
        """On the compute thread: the shard's batches through the model, in shard order."""
        stats, out = job.stats, Computed()
        buckets = SizeBuckets(
            self.spec.batch_size, max_held=max(self.spec.prefetch, self.spec.batch_size)
        )
        done, waited = 0, 0.0
        last_report = time.perf_counter()

        def report(force: bool = False) -> None:
            nonlocal last_report
            now = time.perf_counter()
            if self.progress is None or (not force and now - last_report < self.report_interval_s):
                return
            last_report = now
            self.progress(UnitProgress(stats.shard, job.dispatch, done, job.feed.counters.fraction))

        def batches() -> Iterator[Tagged]:
            nonlocal done, waited
            items = iter(job.feed)
            while True:
                t = time.perf_counter()
                item = next(items, None)
                waited += time.perf_counter() - t
                if item is None:
                    break
                if isinstance(item, SampleError):
                    out.failed.append(item)
                    done += 1
                    continue
                for batch in buckets.add(item):
                    metrics.set_gauge("queue", job.feed.queued)  # chunks decoded ahead
                    yield _tagged(batch)
            for batch in buckets.flush():
                yield _tagged(batch)

        t0 = time.perf_counter()
        report(force=True)
        for kept, d in self.extractor.stream(batches()):
            out.kept.extend(kept)
            out.descriptors.append(d.numpy())
            done += len(kept)
            report()
            if failpoints.trigger("actor_crash_in_shard", stats.shard) or (
                failpoints.armed("actor_crash_always_in_shard") == stats.shard
            ):
                os._exit(1)  # a hard crash mid-shard, after some work, before any output
        report(force=True)
        stats.wait_s = waited
        stats.infer_s = time.perf_counter() - t0 - waited
        return out

    def _commit(
        self,
        computed: Computed,
        output: str,
        stats: ShardStats,
        start: float,
        check: Callable[[], None],
    ) -> None:
        """Descriptors file, errors file (both atomic), then the marker: off the compute path;
        ``check`` (the run's lease fence) before each write."""
        t = time.perf_counter()
        sid = stats.shard
        order = np.argsort([k[0] for k in computed.kept], kind="stable")
        kept = [computed.kept[i] for i in order]
        descriptors = (
            np.concatenate(computed.descriptors)[order]
            if computed.descriptors
            else np.zeros((0, self.dim), np.float32)
        )
        failed = sorted(computed.failed, key=lambda e: e.index)
        source = redact_text(stats.source)  # no URL credentials in the data
        table = descriptor_table(
            [k[1] for k in kept],
            source,
            descriptors,
            [k[2] for k in kept],
            [k[3] for k in kept],
            self.metadata,
        )
        errors = error_table(
            [e.key for e in failed],
            source,
            [e.error for e in failed],
            [e.message for e in failed],
            self.metadata,
        )
        data, error_data = parquet_bytes(table), parquet_bytes(errors)
        check()
        write_bytes_atomic(descriptors_uri(output, sid), data)
        check()
        write_bytes_atomic(errors_uri(output, sid), error_data)
        stats.write_s = time.perf_counter() - t
        stats.ok, stats.errors = len(kept), len(failed)
        stats.samples = stats.ok + stats.errors
        for e in failed:
            stats.errors_by_type[e.error] = stats.errors_by_type.get(e.error, 0) + 1
        stats.wall_s = time.perf_counter() - start
        # The commit marker is written last: its presence means both files are complete.
        marker = redact({**stats.to_dict(), "fingerprint": self.fingerprint})
        check()
        write_json_atomic(marker_uri(output, sid, stats.source), marker)

    def close(self) -> None:
        """Stop the compute thread and the decode threads (after the shards in flight)."""
        with self._lock:
            thread, self._compute_thread = self._compute_thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()
        self.pool.close()


def _tagged(batch: list[DecodedSample]) -> Tagged:
    """A batch as (what the commit needs, the images): only the extractor holds the pixels."""
    return [(s.index, s.key, s.width, s.height) for s in batch], [s.image for s in batch]
