"""The extraction driver: list shards, skip committed ones, run the rest on Ray actors,
re-queue shards of dead actors, record the job in ``_job.json``."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import ray

import glam
from glam import build_glam
from pipeline import failpoints, metrics
from pipeline.actors import create_actors, plan_actors
from pipeline.layout import job_uri, marker_uri
from pipeline.progress import Progress
from pipeline.redact import redact
from pipeline.shards import list_shards, shard_id
from pipeline.spec import ExtractionJob, fingerprint, spec_dict
from pipeline.storage import read_json, write_json_atomic

log = logging.getLogger(__name__)


class OutputMismatchError(ValueError):
    """The output folder holds descriptors made with another model or configuration."""


@dataclass
class JobResult:
    shards: int = 0
    skipped: int = 0
    committed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    samples: int = 0
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0

    @property
    def succeeded(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        rate = self.samples / self.wall_s if self.wall_s else 0.0
        return (
            f"{self.shards} shards: {self.committed} done, {self.skipped} skipped, "
            f"{len(self.failed)} failed; {self.samples} images ({self.ok} descriptors, "
            f"{self.errors} error rows) in {self.wall_s:.1f}s ({rate:.2f} images/s)"
        )


def versions() -> dict[str, str]:
    import pyarrow
    import torch
    import torchvision
    import webdataset

    return {
        "glam-pipeline": glam.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "webdataset": getattr(webdataset, "__version__", "unknown"),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_output(
    output: str, fp: dict[str, Any], shard_ids: list[str]
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The output's previous ``_job.json`` and the commit markers (by shard id) of this
    configuration; refuse an output made by another one."""
    previous = read_json(job_uri(output))
    if previous is not None and previous.get("fingerprint") != fp:
        old, new = previous.get("fingerprint", {}), fp
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise OutputMismatchError(
            f"{output} holds descriptors made with a different model or configuration "
            f"(differs in: {', '.join(diff)}); use a new --output"
        )
    committed = {}
    for sid in shard_ids:
        marker = read_json(marker_uri(output, sid))
        if marker is None:
            continue
        if marker.get("fingerprint") != fp:
            raise OutputMismatchError(
                f"shard {sid} in {output} was made with a different model or configuration; "
                "use a new --output"
            )
        committed[sid] = marker
    return previous, committed


def run_extraction(job: ExtractionJob) -> JobResult:
    """Run ``job`` on the connected Ray cluster; returns totals (failed shards included)."""
    t0 = time.monotonic()
    shards = list_shards(job.input)
    ids = [shard_id(s) for s in shards]
    model = build_glam(weights=job.spec.weights, seed=job.spec.seed)
    fp = fingerprint(job.spec, model.config.to_dict(), model.weights_sha256)
    del model
    previous, committed = check_output(job.output, fp, ids)
    todo = [s for s, sid in zip(shards, ids, strict=True) if sid not in committed]
    result = JobResult(shards=len(shards), skipped=len(shards) - len(todo))
    log.info("%d shards, %d already committed, %d to do", len(shards), result.skipped, len(todo))
    record: dict[str, Any] = {
        "input": job.input,
        "output": job.output,
        "config": spec_dict(job.spec),
        "actors": job.actors,
        "fingerprint": fp,
        "weights_sha256": fp["weights_sha256"],
        "versions": versions(),
        "status": "running",
        "started_at": _now(),
    }
    new_stats: list[dict[str, Any]] = []
    if todo:
        write_json_atomic(job_uri(job.output), redact(record))
        record["workers"] = _run_shards(job, todo, result, new_stats)
    result.wall_s = time.monotonic() - t0
    if todo or previous is None:
        # Markers read at the start plus this run's stats: no second pass over the markers.
        totals = _committed_totals([*committed.values(), *new_stats])
        record.update(
            status="succeeded" if result.succeeded else "failed",
            finished_at=_now(),
            totals={**totals, "shards": len(shards)},
            last_run=asdict(result),
            failed_shards=result.failed,
        )
        write_json_atomic(job_uri(job.output), redact(record))  # no credentials in records
    log.info("%s", result.summary())
    return result


def _committed_totals(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the stats of committed shards (commit markers or fresh ShardStats)."""
    totals: dict[str, float] = defaultdict(float)
    for marker in markers:
        if marker.get("status", "committed") != "committed":
            continue
        totals["committed_shards"] += 1
        for key in ("samples", "ok", "errors", "bytes"):
            totals[key] += int(marker.get(key, 0))
        for key in ("read_s", "decode_s", "infer_s", "write_s"):
            totals[key] += float(marker.get(key, 0.0))
    return dict(totals)


def _run_shards(
    job: ExtractionJob, todo: list[str], result: JobResult, stats_out: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Process ``todo`` on fresh actors, appending each shard's stats to ``stats_out``;
    returns what each actor reported about itself."""
    plan = plan_actors(ray.cluster_resources(), job.actors, job.device)
    log.info(
        "starting %d %s actors (%s CPUs each)",
        plan.count,
        "GPU" if plan.use_gpu else "CPU",
        plan.num_cpus,
    )
    actors = create_actors(job.spec, plan)
    workers = ray.get([a.info.remote() for a in actors])
    for w in workers:
        log.info(
            "actor pid %s on %s: device %s, CUDA_VISIBLE_DEVICES=%s",
            w["pid"],
            w["host"],
            w["device"],
            w["cuda_visible_devices"],
        )
    pending = deque(todo)
    restarts: Counter[str] = Counter()
    idle = list(range(len(actors)))
    in_flight: dict[Any, tuple[int, str]] = {}
    progress = Progress(len(todo))
    try:
        while pending or in_flight:
            while idle and pending:
                index, shard = idle.pop(), pending.popleft()
                in_flight[actors[index].process.remote(shard, job.output)] = (index, shard)
            metrics.set_gauge("pending", len(pending))
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                index, shard = in_flight.pop(ref)
                idle.append(index)
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    restarts[shard] += 1
                    if restarts[shard] <= job.max_shard_restarts:
                        log.warning(
                            "actor %d died on %s; re-queued (%s)", index, shard, type(e).__name__
                        )
                        pending.appendleft(shard)
                        continue
                    stats = _failed(shard, f"actor died {restarts[shard]} times")
                except ray.exceptions.RayTaskError as e:
                    stats = _failed(shard, str(e).strip().splitlines()[-1][:500])
                _record(stats, result)
                stats_out.append(stats)
                progress.update(stats)
                if failpoints.trigger("driver_exit_after_shards", str(result.committed)):
                    os._exit(1)  # a hard driver crash between two shards
    finally:
        progress.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return [{k: w[k] for k in ("pid", "host", "device", "cuda_visible_devices")} for w in workers]


def _failed(shard: str, error: str) -> dict[str, Any]:
    return {"shard": shard_id(shard), "source": shard, "status": "failed", "error": error}


def _record(stats: dict[str, Any], result: JobResult) -> None:
    metrics.record_shard(stats)
    if stats["status"] == "failed":
        log.error("shard %s failed: %s", stats["shard"], stats.get("error"))
        result.failed.append({"shard": stats["source"], "error": stats.get("error", "")})
        return
    result.committed += 1
    result.samples += stats["samples"]
    result.ok += stats["ok"]
    result.errors += stats["errors"]
