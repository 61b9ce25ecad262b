"""The extraction driver: list shards, skip committed ones, run the rest on Ray actors,
re-queue shards of dead actors, record the job in ``_job.json``."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from glam import IMAGENET, RANDOM, build_glam
from pipeline.extract.actors import MAX_CPUS_PER_GPU_ACTOR, ActorInfo, create_actors
from pipeline.extract.spec import ExtractionJob, fingerprint, spec_dict
from pipeline.extract.stats import FailedShard, ShardStats, ShardTotals, publish
from pipeline.io.layout import job_uri, marker_uri, markers_folder
from pipeline.io.redact import redact
from pipeline.io.shards import list_shards, shard_id
from pipeline.io.storage import filesystem, join, read_json, write_json_atomic
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.lease import DEFAULT_TTL_S, Lease
from pipeline.runtime.preflight import preflight
from pipeline.runtime.progress import ProgressReporter
from pipeline.runtime.records import check_fingerprint, differing_keys, now, versions
from pipeline.runtime.resources import plan_workers

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    shards: int = 0
    skipped: int = 0
    committed: int = 0
    failed: list[FailedShard] = field(default_factory=list)
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

    def add(self, stats: ShardStats) -> None:
        """Count one finished shard."""
        if not stats.committed:
            log.error("shard %s failed: %s", stats.shard, stats.error)
            self.failed.append(FailedShard(stats.source, stats.error))
            return
        self.committed += 1
        self.samples += stats.samples
        self.ok += stats.ok
        self.errors += stats.errors


def check_output(
    output: str, fp: dict[str, Any], shard_ids: list[str]
) -> tuple[dict[str, Any] | None, dict[str, ShardStats]]:
    """The output's previous ``_job.json`` and the committed shards (by shard id) of this
    configuration; refuse an output that holds shards of another one. A configuration that
    committed no shard does not bind the output: the next run's replaces it."""
    previous = read_json(job_uri(output))
    if previous is not None and previous.get("fingerprint", {}) != fp:
        # The shards committed bind the output (they all share one fingerprint: this very
        # check keeps it so), not the record of a run that may have committed nothing.
        bound = committed_fingerprint(output)
        if bound is not None:
            check_fingerprint(output, bound, fp)
        log.warning(
            "%s: the previous run's configuration (differs in: %s) committed no shard; "
            "this run's replaces it",
            output,
            ", ".join(differing_keys(previous.get("fingerprint", {}), fp)),
        )
        previous = None
    committed = {}
    for sid in shard_ids:
        marker = read_json(marker_uri(output, sid))
        if marker is None:
            continue
        check_fingerprint(f"shard {sid} in {output}", marker.get("fingerprint", {}), fp)
        committed[sid] = ShardStats.from_dict(marker)
    return previous, committed


def committed_fingerprint(output: str) -> dict[str, Any] | None:
    """The fingerprint of the output's committed shards (one marker's), or None if none."""
    fs, path = filesystem(markers_folder(output))
    fs.invalidate_cache(path)
    markers = sorted(fs.glob(join(path, "*.json")))
    if not markers:
        return None
    marker = read_json(join(markers_folder(output), markers[0].rsplit("/", 1)[1]))
    return dict((marker or {}).get("fingerprint", {}))


def run_extraction(job: ExtractionJob, lease_ttl_s: float = DEFAULT_TTL_S) -> JobResult:
    """Run ``job`` on the connected Ray cluster; returns totals (failed shards included).

    A finished output is only read. Otherwise the run holds the output's lease while it
    works: a second run on the same output is refused, naming this one."""
    t0 = time.monotonic()
    shards = list_shards(job.input)
    ids = [shard_id(s) for s in shards]
    weights = [] if job.spec.weights in (None, RANDOM, IMAGENET) else [job.spec.weights]
    preflight(read=[shards[0], *weights], write=[job.output])
    model = build_glam(weights=job.spec.weights, seed=job.spec.seed)
    fp = fingerprint(job.spec, model.config.to_dict(), model.weights_sha256)
    del model
    previous, committed = check_output(job.output, fp, ids)
    if previous is not None and len(committed) == len(shards):
        result = JobResult(shards=len(shards), skipped=len(shards))
        result.wall_s = time.monotonic() - t0
        log.info("every shard is committed: nothing to do")
        log.info("%s", result.summary())
        return result
    with Lease(job.output, "extract", ttl_s=lease_ttl_s) as lease:
        previous, committed = check_output(job.output, fp, ids)  # as it is now, under the lease
        return _extract(job, shards, ids, fp, previous, committed, lease, t0)


def _extract(
    job: ExtractionJob,
    shards: list[str],
    ids: list[str],
    fp: dict[str, Any],
    previous: dict[str, Any] | None,
    committed: dict[str, ShardStats],
    lease: Lease,
    t0: float,
) -> JobResult:
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
        "started_at": now(),
    }
    new_stats: list[ShardStats] = []
    if todo:
        write_json_atomic(job_uri(job.output), redact(record))
        workers = _run_shards(job, todo, result, new_stats, lease)
        record["workers"] = [w.record() for w in workers]
    result.wall_s = time.monotonic() - t0
    if todo or previous is None:
        # Markers read at the start plus this run's stats: no second pass over the markers.
        totals = ShardTotals.over([*committed.values(), *new_stats])
        record.update(
            status="succeeded" if result.succeeded else "failed",
            finished_at=now(),
            totals={**asdict(totals), "shards": len(shards)},
            last_run=asdict(result),
            failed_shards=[asdict(f) for f in result.failed],
        )
        lease.check()
        write_json_atomic(job_uri(job.output), redact(record))  # no credentials in records
    log.info("%s", result.summary())
    return result


def _run_shards(
    job: ExtractionJob,
    todo: list[str],
    result: JobResult,
    stats_out: list[ShardStats],
    lease: Lease,
) -> list[ActorInfo]:
    """Process ``todo`` on fresh actors, appending each shard's stats to ``stats_out``;
    returns what each actor reported about itself."""
    plan = plan_workers(
        ray.cluster_resources(), job.actors, job.device, MAX_CPUS_PER_GPU_ACTOR, "--actors"
    )
    log.info(
        "starting %d %s actors (%s CPUs each)",
        plan.count,
        "GPU" if plan.use_gpu else "CPU",
        plan.num_cpus,
    )
    actors = create_actors(job.spec, plan)
    workers: list[ActorInfo] = ray.get([a.info.remote() for a in actors])
    for w in workers:
        log.info(
            "actor pid %s on %s: device %s, CUDA_VISIBLE_DEVICES=%s",
            w.pid,
            w.host,
            w.device,
            w.cuda_visible_devices,
        )
    pending = deque(todo)
    restarts: Counter[str] = Counter()
    idle = list(range(len(actors)))
    in_flight: dict[Any, tuple[int, str]] = {}
    progress = ProgressReporter(len(todo))
    try:
        while pending or in_flight:
            lease.check()  # a run whose lease was taken over starts no more shards
            while idle and pending:
                index, shard = idle.pop(), pending.popleft()
                in_flight[actors[index].process.remote(shard, job.output)] = (index, shard)
            metrics.set_gauge("pending", len(pending))
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                index, shard = in_flight.pop(ref)
                idle.append(index)
                try:
                    stats: ShardStats = ray.get(ref)
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
                publish(stats)
                result.add(stats)
                stats_out.append(stats)
                progress.update(stats.samples, stats.errors, failed=not stats.committed)
                if failpoints.trigger("driver_exit_after_shards", str(result.committed)):
                    os._exit(1)  # a hard driver crash between two shards
    finally:
        progress.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return workers


def _failed(shard: str, error: str) -> ShardStats:
    return ShardStats(shard=shard_id(shard), source=shard, status="failed", error=error)
