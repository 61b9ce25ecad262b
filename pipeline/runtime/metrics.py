"""Ray application metrics (``ray.util.metrics``), exported at every node's metrics endpoint
(scraped by Prometheus from the Ray head/nodes; names get Ray's ``ray_`` prefix there).

Extraction: images done, error rows by type, bytes read, per-stage seconds, queue depths, shards
by status. Index builds: vectors, build seconds, version timestamp. Training: step, loss,
accuracy, images/s per worker.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


@cache
def _metrics() -> dict[str, Any]:
    from ray.util import metrics as m

    return {
        "images": m.Counter("glam_images_total", "samples processed (descriptors + error rows)"),
        "descriptors": m.Counter("glam_descriptors_total", "descriptors written"),
        "errors": m.Counter("glam_sample_errors_total", "error rows by type", tag_keys=("type",)),
        "bytes": m.Counter("glam_bytes_read_total", "shard bytes streamed from storage"),
        "stage": m.Counter(
            "glam_stage_seconds_total", "seconds per pipeline stage", tag_keys=("stage",)
        ),
        "shards": m.Counter("glam_shards_total", "shards finished by status", tag_keys=("status",)),
        "queue": m.Gauge("glam_decode_queue_depth", "decoded samples waiting for the model"),
        "pending": m.Gauge("glam_pending_shards", "shards not yet handed to an actor"),
        "vectors": m.Gauge("glam_index_vectors", "vectors in the last built index version"),
        "build": m.Gauge("glam_index_build_seconds", "seconds of the last index build"),
        "version": m.Gauge("glam_index_version_timestamp", "unix time of the LATEST version"),
        "train_step": m.Gauge("glam_train_step", "optimiser steps done"),
        "train_loss": m.Gauge("glam_train_loss", "ArcFace loss since the last log point"),
        "train_accuracy": m.Gauge("glam_train_accuracy", "training accuracy (no margin)"),
        "train_rate": m.Gauge(
            "glam_train_images_per_second", "training images/s of a worker", tag_keys=("rank",)
        ),
    }


def _get(name: str) -> Any | None:
    try:
        import ray

        if not ray.is_initialized():
            return None
        return _metrics()[name]
    except Exception as e:  # metrics must never break the pipeline
        log.debug("metrics unavailable: %s", e)
        return None


def inc(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    """Add ``value`` to counter ``name`` (a no-op without Ray or for zero)."""
    counter = _get(name)
    if counter is not None and value:
        counter.inc(value, tags=tags)


def set_gauge(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    gauge = _get(name)
    if gauge is not None:
        gauge.set(value, tags=tags)
