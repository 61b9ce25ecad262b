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


def record_shard(stats: dict[str, Any]) -> None:
    """Count one finished shard (from its ShardStats dict)."""
    shards = _get("shards")
    if shards is None:
        return
    shards.inc(1, tags={"status": stats.get("status", "committed")})
    if stats.get("status") != "committed":
        return
    for name, key in (("images", "samples"), ("descriptors", "ok"), ("bytes", "bytes")):
        if stats.get(key):
            _metrics()[name].inc(stats[key])
    for kind, n in stats.get("errors_by_type", {}).items():
        _metrics()["errors"].inc(n, tags={"type": kind})
    for stage in ("read", "decode", "infer", "write"):
        seconds = float(stats.get(f"{stage}_s", 0.0))
        if seconds > 0:
            _metrics()["stage"].inc(seconds, tags={"stage": stage})


def set_gauge(name: str, value: float) -> None:
    gauge = _get(name)
    if gauge is not None:
        gauge.set(value)


def record_training(summary: dict[str, Any], rank: int) -> None:
    """Publish a training log point (every worker publishes its own images/s)."""
    rate = _get("train_rate")
    if rate is None:
        return
    rate.set(summary["images_per_s_per_worker"][rank], tags={"rank": str(rank)})
    if rank == 0:
        _metrics()["train_step"].set(summary["step"])
        _metrics()["train_loss"].set(summary["loss"])
        _metrics()["train_accuracy"].set(summary["accuracy"])
