"""The extraction driver: list shards, skip committed ones, run the rest on Ray actors (each
holding ``shards_per_actor`` shards at a time), re-queue shards of dead actors, show progress
in images as the actors work, register committed shards in the output's tables in batches,
record the job in ``_job.json``."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import ray

from glam import IMAGENET, RANDOM, build_glam
from glam.extract import Precision
from pipeline.extract.actors import (
    MAX_CPUS_PER_GPU_ACTOR,
    ActorInfo,
    cpus_per_gpu,
    create_actors,
    create_board,
)
from pipeline.extract.failures import FailedShards
from pipeline.extract.recovery import PING_INTERVAL_S, ActorRecovery
from pipeline.extract.registration import OutputTables, ShardRegistrar
from pipeline.extract.resume import final_totals, scan_output, trusted_totals
from pipeline.extract.scheduler import Dispatch, Recovery, ShardScheduler
from pipeline.extract.spec import ExtractionJob, fingerprint, spec_dict
from pipeline.extract.stats import FailedShard, ShardStats, ShardTotals, publish
from pipeline.io.delta_log import has_table
from pipeline.io.layout import descriptors_folder, job_uri
from pipeline.io.redact import redact
from pipeline.io.shards import list_shards, shard_id
from pipeline.io.storage import WEIGHTS_STORE, write_json_atomic
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.lease import DEFAULT_TTL_S, Lease
from pipeline.runtime.preflight import preflight
from pipeline.runtime.progress import ProgressReporter
from pipeline.runtime.records import OutputMismatchError, differing_keys, now, versions
from pipeline.runtime.resources import WorkerPlan, plan_workers, shortfall

log = logging.getLogger(__name__)

# How often the driver reads the actors' progress while waiting for shards.
PROGRESS_POLL_S = 2.0
# How often the driver says what it waits for while the actors start.
START_REPORT_S = 30.0


@dataclass
class JobResult:
    """One run's counts; per shard it keeps only the first failed ones (``failures``)."""

    shards: int = 0
    skipped: int = 0
    committed: int = 0
    failures: FailedShards = field(default_factory=FailedShards)
    samples: int = 0
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    totals: ShardTotals = field(default_factory=ShardTotals)  # over this run's commits

    @property
    def failed(self) -> list[FailedShard]:
        """The first failed shards (``KEEP`` at most); ``failed_count`` counts all."""
        return self.failures.first

    @property
    def failed_count(self) -> int:
        return self.failures.count

    @property
    def succeeded(self) -> bool:
        return not self.failures.count

    def summary(self) -> str:
        rate = self.samples / self.wall_s if self.wall_s else 0.0
        return (
            f"{self.shards} shards: {self.committed} done, {self.skipped} skipped, "
            f"{self.failed_count} failed; {self.samples} images ({self.ok} descriptors, "
            f"{self.errors} error rows) in {self.wall_s:.1f}s ({rate:.2f} images/s)"
        )

    def add(self, stats: ShardStats) -> None:
        """Count one finished shard."""
        if not stats.committed:
            self.failures.add(FailedShard(stats.source, stats.error))
            return
        self.committed += 1
        self.samples += stats.samples
        self.ok += stats.ok
        self.errors += stats.errors
        self.totals.add(stats)

    def record(self) -> dict[str, Any]:
        """The run's counts for ``_job.json`` (``last_run``)."""
        return {
            "shards": self.shards,
            "skipped": self.skipped,
            "committed": self.committed,
            "failed": self.failed_count,
            "samples": self.samples,
            "ok": self.ok,
            "errors": self.errors,
            "wall_s": self.wall_s,
        }


def resolved_fingerprint(
    output: str, fp: dict[str, Any], workers: list[ActorInfo], stored_precisions: set[str]
) -> dict[str, Any]:
    """The fingerprint the actors resolved (their precision); refuse actors that disagree, and
    an output whose earlier work was made in another precision."""
    resolved = {w.fingerprint["precision"] for w in workers}
    if len(resolved) > 1:
        raise ValueError(
            f"the actors resolved --precision {fp['precision']} differently "
            f"({', '.join(sorted(resolved))}): the cluster mixes hardware; pass --precision"
        )
    actual = workers[0].fingerprint
    if _without(actual, ("precision",)) != _without(fp, ("precision",)):
        differs = ", ".join(differing_keys(actual, fp))
        raise RuntimeError(
            f"the actors' fingerprint differs from the driver's in {differs}: do the cluster's "
            "nodes run the same code and reach the same weights?"
        )
    other = stored_precisions - {actual["precision"]}
    if other:
        raise OutputMismatchError(
            f"{output} was made by a different model or configuration (differs in: precision: "
            f"it holds {', '.join(sorted(other))}, --precision {fp['precision']} resolves to "
            f"{actual['precision']} on these actors); pass --precision {min(other)} or use a "
            "new --output"
        )
    return actual


def _without(fp: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in fp.items() if k not in keys}


def run_extraction(
    job: ExtractionJob,
    lease_ttl_s: float = DEFAULT_TTL_S,
    tables: OutputTables | None = None,
) -> JobResult:
    """Run ``job`` on the connected Ray cluster; returns totals (failed shards included).

    A finished output is only read. Otherwise the run holds the output's lease while it
    works: a second run on the same output is refused, naming this one. What the output
    holds comes from listings of its markers (``pipeline.extract.resume``): before the lease
    and again under it, with no request per shard. ``tables``: the output's tables (default:
    Delta tables at ``descriptors/`` and ``errors/``), brought up to the markers under the
    lease and kept there as shards commit (``pipeline.extract.registration``)."""
    tables = tables or OutputTables()
    t0 = time.monotonic()
    shards = list_shards(job.input)
    weights = [] if job.spec.weights in (None, RANDOM, IMAGENET) else [job.spec.weights]
    preflight(read=[shards[0], *weights], write=[])
    model = build_glam(weights=job.spec.weights, seed=job.spec.seed, store=WEIGHTS_STORE)
    fp = fingerprint(job.spec, model.config.to_dict(), model.weights_sha256)
    del model
    if tables.kind != "delta" and has_table(descriptors_folder(job.output)):
        raise ValueError(
            f"{job.output} has Delta tables: --table {tables.kind} would leave them behind "
            "its markers; pass --table delta"
        )
    dim = int(fp["glam_config"]["dim"])
    scan = scan_output(job.output, fp, shards)
    finished = scan.previous is not None and len(scan.committed) == len(shards)
    if finished and ShardRegistrar(job.output, dim, tables).complete(scan.markers):
        result = JobResult(shards=len(shards), skipped=len(shards))
        result.wall_s = time.monotonic() - t0
        log.info("every shard is committed: nothing to do")
        log.info("%s", result.summary())
        return result
    del scan  # its committed map: one per process at a time
    preflight(read=[], write=[job.output])  # a finished output is only read: no probe there
    with Lease(job.output, "extract", ttl_s=lease_ttl_s) as lease:
        # As it is now, under the lease.
        scan = scan_output(job.output, fp, shards)
        if fp["precision"] == "auto" and len(scan.precisions) == 1:
            # auto is bound to what the output committed: one output, one precision.
            bound = cast(Precision, next(iter(scan.precisions)))
            log.info("--precision auto: %s, the precision of the output's shards", bound)
            job = replace(job, spec=replace(job.spec, precision=bound))
            fp = {**fp, "precision": bound}
        todo = [s for s in shards if shard_id(s) not in scan.committed]
        base = trusted_totals(scan.previous, scan.markers)
        run = _Run(len(shards), todo, fp, scan.previous is not None, scan.precisions, base)
        registrar = ShardRegistrar(job.output, dim, tables)
        registrar.create()
        if not registrar.complete(scan.markers):
            registrar.reconcile()
        del scan, shards
        return _extract(job, run, lease, registrar, t0)


@dataclass(frozen=True)
class _Run:
    """What a run under the lease starts from (no per-shard state but the shards to do)."""

    shards: int  # the input's shards
    todo: list[str]  # those not committed yet
    fp: dict[str, Any]
    had_record: bool  # the output has a ``_job.json`` that binds it
    precisions: set[str]  # the precisions the output's shards were made in
    base: ShardTotals | None  # the previous runs' totals (None: to be recounted)


def _extract(
    job: ExtractionJob, run: _Run, lease: Lease, registrar: ShardRegistrar, t0: float
) -> JobResult:
    todo = run.todo
    result = JobResult(shards=run.shards, skipped=run.shards - len(todo))
    log.info("%d shards, %d already committed, %d to do", run.shards, result.skipped, len(todo))
    record: dict[str, Any] = {
        "input": job.input,
        "output": job.output,
        "config": spec_dict(job.spec),
        "actors": job.actors,
        "fingerprint": run.fp,
        "weights_sha256": run.fp["weights_sha256"],
        "versions": versions(),
        "status": "running",
        "started_at": now(),
    }
    try:
        if todo:
            board, board_name = create_board()
            actors, workers = _start_actors(job, board, board_name)
            try:
                record["fingerprint"] = resolved_fingerprint(
                    job.output, run.fp, workers, run.precisions
                )
                record["workers"] = [w.record() for w in workers]
                write_json_atomic(job_uri(job.output), redact(record))
                record["actor_restarts"] = _run_shards(
                    job, todo, result, actors, workers, board, lease, registrar
                )
            except KeyboardInterrupt:
                # Ctrl-C: the record says so (not "running" for ever); committed shards stay.
                # Its totals count only the results seen: the next run trusts them only if
                # they account for every marker (shards in flight may have committed since).
                record.update(status="interrupted", finished_at=now())
                try:  # what committed is registered now, else by the next run's reconcile
                    registrar.flush()
                except Exception as e:
                    log.warning("committed shards left to the next run to register: %s", e)
                if run.base is not None:
                    record["totals"] = _totals(run.base.plus(result.totals), run.shards)
                write_json_atomic(job_uri(job.output), redact(record))
                raise
            finally:
                for actor in [*actors, board]:
                    ray.kill(actor, no_restart=True)
        lease.check()
        registrar.flush()
        if result.failed_count:
            # A shard the driver counted failed may have committed all the same (its actor
            # died after the marker): the tables are brought to the markers.
            registrar.reconcile()
        result.wall_s = time.monotonic() - t0
        if todo or not run.had_record:
            totals = final_totals(job.output, run.base, result.totals)
            lease.check()
            record.update(
                status="succeeded" if result.succeeded else "failed",
                finished_at=now(),
                totals=_totals(totals, run.shards),
                last_run=result.record(),
                failed_shards=[asdict(f) for f in result.failed],
                failed_shards_count=result.failed_count,
                failed_shards_file=result.failures.publish(job.output),
            )
            write_json_atomic(job_uri(job.output), redact(record))  # no credentials in records
    finally:
        result.failures.discard()
    log.info("%s", result.summary())
    return result


def _totals(totals: ShardTotals, shards: int) -> dict[str, Any]:
    """``_job.json``'s totals: over every shard committed in the output (from any input), and
    the count of this run's input shards."""
    return {**asdict(totals), "shards": shards}


def _start_actors(
    job: ExtractionJob, board: Any, board_name: str
) -> tuple[list[Any], list[ActorInfo]]:
    """Plan, start and ask every actor what it runs on (each loads the model first)."""
    per_gpu = cpus_per_gpu(ray.nodes()) or MAX_CPUS_PER_GPU_ACTOR
    resources = ray.cluster_resources()
    plan = plan_workers(resources, job.actors, job.device, per_gpu, "--actors")
    if job.cpus_per_actor is not None:
        plan = replace(plan, num_cpus=job.cpus_per_actor)
    log.info(
        "starting %d %s actors (%s CPUs each)",
        plan.count,
        "GPU" if plan.use_gpu else "CPU",
        plan.num_cpus,
    )
    lacking = shortfall(plan, resources)
    if lacking:
        log.warning("%s", lacking)
    actors = create_actors(job.spec, plan, board_name, job.shards_per_actor)
    try:
        workers = _wait_started(actors, plan, job.start_timeout_s)
    except BaseException:
        for actor in [*actors, board]:
            ray.kill(actor, no_restart=True)
        raise
    for w in workers:
        log.info(
            "actor pid %s on %s: device %s, CUDA_VISIBLE_DEVICES=%s, precision %s, "
            "%s decode in %d threads",
            w.pid,
            w.host,
            w.device,
            w.cuda_visible_devices,
            w.fingerprint["precision"],
            w.decode,
            w.decode_workers,
        )
    return actors, workers


class ActorStartError(RuntimeError):
    """The actors did not start within the start timeout (resources the cluster lacks)."""


def _wait_started(actors: list[Any], plan: WorkerPlan, timeout_s: float) -> list[ActorInfo]:
    """Every actor's ``info()``, once each has loaded its model. While some wait for resources,
    a line every ``START_REPORT_S`` says what the cluster lacks; past ``timeout_s``,
    ``ActorStartError`` names it (a GPU actor on a cluster without GPUs would wait forever)."""
    refs = [a.info.remote() for a in actors]
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        ready, not_ready = ray.wait(
            refs, num_returns=len(refs), timeout=min(START_REPORT_S, max(0.0, timeout_s - waited))
        )
        if not not_ready:
            return list(ray.get(refs))
        for ref in ready:
            ray.get(ref)  # an actor whose start failed: its error, now
        lacking = shortfall(plan, ray.cluster_resources()) or "the actors are loading the model"
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise ActorStartError(
                f"{len(not_ready)} of {len(refs)} actors did not start within {timeout_s:g} s "
                f"(--start-timeout-s): {lacking}"
            )
        log.warning(
            "waiting for %d of %d actors to start (%.0f s so far): %s",
            len(not_ready),
            len(refs),
            waited,
            lacking,
        )


def _run_shards(
    job: ExtractionJob,
    todo: list[str],
    result: JobResult,
    actors: list[Any],
    workers: list[ActorInfo],
    board: Any,
    lease: Lease,
    registrar: ShardRegistrar,
) -> int:
    """Process ``todo`` on ``actors``, counting each finished shard in ``result``; returns
    the actor restarts seen. Which shard runs where, and when one has failed, is the
    ``ShardScheduler``'s (``pipeline.extract.scheduler``: up to ``shards_per_actor`` shards
    an actor, idle actors first; a death counts only against a shard that ran alone, the
    others it held then run alone); this loop feeds it what Ray says and does what it decides.
    An actor whose call failed gets no shards until it is back, and the shards it held wait
    for it: a death is counted when its restart is seen (``pipeline.extract.recovery``), not
    for each call that failed meanwhile."""
    scheduler = ShardScheduler(todo, len(actors), job.shards_per_actor, job.max_shard_restarts)
    in_flight: dict[Any, Dispatch] = {}  # ref -> the hand-out it returns
    recovery = ActorRecovery(actors, [w.pid for w in workers], job.restart_timeout_s)
    progress = ProgressReporter(len(todo))
    last_poll = time.monotonic()
    fence = lease.fence()  # the actors commit only while this run holds the output

    def finish(stats: ShardStats) -> None:
        publish(stats)
        result.add(stats)
        if stats.committed:
            registrar.add(stats.shard, stats.source, stats.ok, stats.errors)
        progress.update(stats.samples, stats.errors, failed=not stats.committed, unit=stats.shard)

    def settle(r: Recovery) -> None:
        """The recovered (or retired) actor's death counted on the shards it held."""
        for failure in scheduler.settle(r):
            finish(_failed(failure.shard, failure.error))

    try:
        while not scheduler.done:
            lease.check()  # a run whose lease was taken over starts no more shards
            if registrar.due():
                registrar.flush()  # as the lease holder: just checked
            for r in recovery.expired():
                settle(r)
            serving = recovery.serving()
            for d in scheduler.dispatch(serving):
                in_flight[actors[d.actor].process.remote(d.shard, job.output, d.number, fence)] = d
            for failure in scheduler.unserved(serving, recovery.retired.values()):
                finish(_failed(failure.shard, failure.error))  # no actor left
            if scheduler.done:
                break
            metrics.set_gauge("pending", scheduler.pending)
            pings = recovery.pings()
            if not in_flight and not pings:  # only actors between two pings: pace the loop
                time.sleep(PING_INTERVAL_S)
                continue
            ready, _ = ray.wait([*in_flight, *pings], num_returns=1, timeout=PROGRESS_POLL_S)
            for ref in ready:
                if ref in pings:
                    settled = recovery.answered(ref, pings[ref])
                    if settled is not None:
                        settle(settled)
                    continue
                d = in_flight.pop(ref)
                board.drop.remote(shard_id(d.shard), d.number)
                try:
                    stats: ShardStats = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    scheduler.lost(d)
                    settled = recovery.failed(d.actor, d.shard, e)
                    if settled is not None:
                        settle(settled)
                    continue
                except ray.exceptions.RayTaskError as e:
                    stats = _failed(d.shard, str(e).strip().splitlines()[-1][:500])
                scheduler.finished(d)
                finish(stats)
                if failpoints.trigger("driver_exit_after_shards", str(result.committed)):
                    os._exit(1)  # a hard driver crash between two shards
                if failpoints.trigger("driver_interrupt_after_shards", str(result.committed)):
                    # Ctrl-C between two shards, as Python's SIGINT handler delivers it (a
                    # signal sent to itself may reach the process while a Ray call holds it).
                    raise KeyboardInterrupt
            if time.monotonic() - last_poll >= PROGRESS_POLL_S:
                last_poll = time.monotonic()
                _poll_progress(board, progress)
    finally:
        progress.close()
    return recovery.total_restarts


def _poll_progress(board: Any, progress: ProgressReporter) -> None:
    """The actors' images done so far into the reporter (best effort: never fails the job)."""
    try:
        progress.in_flight(ray.get(board.snapshot.remote(), timeout=30))
    except Exception as e:
        log.debug("progress board unavailable: %s", e)


def _failed(shard: str, error: str) -> ShardStats:
    return ShardStats(shard=shard_id(shard), source=shard, status="failed", error=error)
