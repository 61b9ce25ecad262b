"""Sharded FAISS index builds from descriptor Parquet, as immutable versions behind a LATEST
pointer; full or incremental.

OUTPUT/<version>/shard-00000.faiss, ids-00000.parquet (position -> id, key, source), …,
trained.faiss (the trained, empty index of a full build that needs training), manifest.json
(written after every shard), then OUTPUT/LATEST (the version name) moves: a reader that follows
LATEST never sees a half-built version. ``pipeline.index.plan`` decides what a build does:
nothing when inputs and configuration are unchanged; an incremental version (the previous
shards reused by reference, only the new files' vectors added, with the stored trained index)
when only new files appeared; a full build otherwise, and always with DBA.

The up-to-date check only reads; a build holds the output's lease
(``pipeline.runtime.lease``), checks it before writing the manifest (a build that lost it
publishes nothing), moves LATEST forward only, and prunes old versions keeping LATEST and
every version a kept one references. The whitening file (``cfg.whitening``) is copied
into every version folder (incremental ones too: the same file as the base, or a full rebuild)
and applied to the training sample and every stored vector; DBA rewrites the shards of the
version being built, before its manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np
import ray

from pipeline.index import gpu
from pipeline.index.build_config import METRIC, IndexBuildConfig, is_exact
from pipeline.index.build_record import (
    extraction_record,
    load_build_whitening,
    store_whitening,
    version_whitening,
)
from pipeline.index.factory_choice import AUTO, choose_factory
from pipeline.index.plan import BuildPlan, balance, plan_build, signature
from pipeline.index.shard_files import file_batches, new_index, write_shard
from pipeline.index.tuning_record import FactoryChoice, SearchTuning
from pipeline.index.versions import (
    DbaRecord,
    IndexInput,
    IndexManifest,
    PostProcessing,
    advance_latest,
    new_version_name,
    prune_versions,
    read_latest,
    write_manifest,
)
from pipeline.index.whitening import Whitening
from pipeline.io.descriptor_reader import (
    DescriptorFile,
    check_same_model,
    random_descriptors,
    read_descriptor_listing,
)
from pipeline.io.storage import (
    check_output_folder,
    exists,
    join,
    read_bytes,
    write_bytes_atomic,
)
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.lease import DEFAULT_TTL_S, Lease
from pipeline.runtime.preflight import preflight
from pipeline.runtime.records import check_fingerprint

__all__ = [
    "BuildResult",
    "IndexBuildConfig",
    "assign_files",
    "build_index",
    "sample_training_vectors",
    "signature",
]

log = logging.getLogger(__name__)

TRAINED = "trained.faiss"


@dataclass
class BuildResult:
    version: str
    up_to_date: bool
    vectors: int = 0
    shard_counts: list[int] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = "full"  # "up_to_date", "full" or "incremental"
    reason: str = ""
    added: int = 0  # vectors this build added (all of them for a full build)
    dba: DbaRecord | None = None  # DBA's time and memory when it ran
    factory: str = ""  # the factory the version was built with (what "auto" resolved to)
    factory_choice: FactoryChoice | None = None  # "auto": what it chose and why
    tuning: SearchTuning | None = None  # --target-recall: the tuned search default


def assign_files(files: list[DescriptorFile], shards: int) -> list[list[int]]:
    """File indices per index shard, balancing rows greedily (largest file first)."""
    return balance([f.rows for f in files], shards)


def sample_training_vectors(files: list[DescriptorFile], n: int, seed: int) -> np.ndarray:
    """``n`` vectors drawn uniformly without replacement across all files (not a prefix)."""
    return random_descriptors(files, n, seed)


def use_assigned_cpus() -> None:
    """FAISS threads = the CPUs Ray gave this task (a reused worker keeps its first setting)."""
    context = ray.get_runtime_context() if ray.is_initialized() else None
    if context is not None and context.worker.mode == ray.WORKER_MODE:
        faiss.omp_set_num_threads(max(1, int(context.get_assigned_resources().get("CPU", 1))))


def train_index(
    files: list[DescriptorFile],
    dim: int,
    cfg: IndexBuildConfig,
    whitening: Whitening | None = None,
) -> bytes:
    """The trained, empty index (serialised), trained on ``cfg.train_size`` vectors sampled
    across all ``files`` (whitened by ``whitening``, as the stored vectors will be); the k-means
    on the GPU where there is one."""
    use_assigned_cpus()
    sample = sample_training_vectors(files, cfg.train_size, cfg.seed)
    if whitening is not None:
        sample = whitening.apply(sample)
    log.info(
        "training %s on %d vectors sampled across %d files", cfg.factory, len(sample), len(files)
    )
    index = faiss.index_factory(dim, cfg.factory, faiss.METRIC_INNER_PRODUCT)
    gpu.train(index, sample, gpu.resolve_gpu(cfg.use_gpu))
    return faiss.serialize_index(index).tobytes()


def build_shard(
    shard: int,
    files: list[tuple[str, int]],
    dim: int,
    cfg: IndexBuildConfig,
    trained: bytes | None,
    version_dir: str,
) -> int:
    """Add the rows of ``files`` ((uri, first id)) to one index shard; write it and its id table.
    With ``cfg.whitening``, the version's copy of it whitens every vector first."""
    use_assigned_cpus()
    whitening = version_whitening(version_dir) if cfg.whitening else None
    return write_shard(
        shard,
        file_batches(files, cfg.batch_rows, whitening),
        new_index(dim, cfg.factory, trained),
        version_dir,
        gpu.resolve_gpu(cfg.use_gpu),
    )


def _check_task_cpus(cfg: IndexBuildConfig) -> None:
    """Refuse, before any work, shard tasks no node can hold (they would wait forever)."""
    largest = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    if cfg.cpus_per_task > largest:
        raise ValueError(
            f"--cpus-per-task {cfg.cpus_per_task}: no node of the cluster has that many CPUs "
            f"(the largest has {largest:g})"
        )


def _gpus_per_task(cfg: IndexBuildConfig) -> int:
    """GPUs a build task asks Ray for: Ray hides the GPUs from tasks that ask for none."""
    if cfg.use_gpu is False:
        return 0
    return 1 if cfg.use_gpu or ray.cluster_resources().get("GPU", 0) > 0 else 0


def _store_trained(version_dir: str, trained: bytes) -> None:
    write_bytes_atomic(join(version_dir, TRAINED), trained)


def build_index(
    descriptors: str,
    output: str,
    cfg: IndexBuildConfig,
    force: bool = False,
    lease_ttl_s: float = DEFAULT_TTL_S,
    descriptors_version: int | None = None,
) -> BuildResult:
    """Build a new version of the index at ``output`` from ``descriptors`` (on the connected Ray
    cluster): nothing when up to date, incremental when only new files appeared, else full.
    ``descriptors_version``: the version of the descriptors' Delta table to read (None: the
    latest); the version read is recorded in the manifest."""
    t0 = time.monotonic()
    check_output_folder(output, descriptors, "descriptors")
    preflight(read=[descriptors], write=[output])
    _check_task_cpus(cfg)
    # The files and the table version recorded come from one read of the table's log.
    listing = read_descriptor_listing(descriptors, descriptors_version)
    files, table_version = listing.files, listing.table_version
    identity = check_same_model(files)
    # The whitening to apply (checked against the descriptors' model).
    whitening, whitening_sha = load_build_whitening(cfg.whitening, identity)
    dim = files[0].dim if whitening is None else whitening.dim_out
    job = _BuildInputs(
        descriptors, output, cfg, files, identity, whitening, whitening_sha, dim, table_version
    )
    plan, previous = _plan(job, force)
    if plan.kind == "up_to_date" and previous is not None:
        return _up_to_date(output, plan, previous)  # read only: nothing new writes nothing
    with Lease(output, "build_index", ttl_s=lease_ttl_s) as lease:
        plan, previous = _plan(job, force)  # again: another build may have finished meanwhile
        if plan.kind == "up_to_date" and previous is not None:
            return _up_to_date(output, plan, previous)
        return _build_version(job, plan, previous, lease, t0)


@dataclass(frozen=True)
class _BuildInputs:
    """What a build is of, established before it plans (and again under its lease)."""

    descriptors: str
    output: str
    cfg: IndexBuildConfig
    files: list[DescriptorFile]
    identity: dict[str, str]  # the descriptors' model
    whitening: Whitening | None
    whitening_sha: str | None
    dim: int  # of the stored vectors: the descriptors', or the whitening's output
    table_version: int | None  # of the descriptors' Delta table read (None: no table)

    def needs_training(self, factory: str) -> bool:
        probe = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        return not probe.is_trained

    def resolve_factory(
        self, plan: BuildPlan, previous: IndexManifest | None
    ) -> tuple[str, FactoryChoice | None]:
        """The factory this build uses: the configured one; for "auto", the previous
        version's when reusing its shards, else chosen from the vectors and the budget."""
        if self.cfg.factory != AUTO:
            return self.cfg.factory, None
        if plan.kind == "incremental" and previous is not None:
            return previous.factory, previous.factory_choice
        n = sum(f.rows for f in self.files)
        choice = choose_factory(n, self.dim, self.cfg.train_size, self.cfg.factory_policy())
        log.info("--factory auto: %s (%s)", choice.factory, choice.reason)
        return choice.factory, choice


def _plan(job: _BuildInputs, force: bool) -> tuple[BuildPlan, IndexManifest | None]:
    """What the build does now and LATEST's manifest (read only); refuses descriptors of
    another model than LATEST's."""
    latest = read_latest(job.output)
    previous = latest[1] if latest else None
    factory = previous.factory if previous is not None and job.cfg.factory == AUTO else None
    reusable = previous is not None and (
        not job.needs_training(factory or job.cfg.factory)
        or exists(join(job.output, previous.trained_version, TRAINED))
    )
    plan = plan_build(job.files, previous, job.cfg, force, reusable, job.whitening_sha)
    if previous is not None and plan.kind != "up_to_date" and not force:
        check_fingerprint(
            f"the index at {job.output} (its descriptors)",
            previous.descriptor_model,
            job.identity,
            f"{job.descriptors} cannot join it: build it into a new --output",
        )
    return plan, previous


def _up_to_date(output: str, plan: BuildPlan, previous: IndexManifest) -> BuildResult:
    log.info("index %s is up to date (version %s)", output, previous.version)
    return BuildResult(
        previous.version,
        True,
        previous.count,
        previous.shard_counts,
        kind=plan.kind,
        reason=plan.reason,
        factory=previous.factory,
        factory_choice=previous.factory_choice,
        tuning=previous.tuning,
    )


def _build_version(
    job: _BuildInputs, plan: BuildPlan, previous: IndexManifest | None, lease: Lease, t0: float
) -> BuildResult:
    """Train (or reuse the base's training), fill the plan's shards, DBA, write the manifest,
    then move LATEST (under the lease)."""
    output, dim, whitening = job.output, job.dim, job.whitening
    factory, choice = job.resolve_factory(plan, previous)
    cfg = dataclasses.replace(job.cfg, factory=factory)  # what the shards are built with
    version = new_version_name(output, plan.signature)
    lease.note(f"building version {version} ({plan.kind})")
    version_dir = join(output, version)
    log.info("building %s version %s: %s (%s)", output, version, plan.kind, plan.reason)
    postprocessing = None
    if whitening is not None and cfg.whitening is not None:
        # Every version holds its own copy; an incremental one's is the base's (same sha256).
        postprocessing = store_whitening(cfg.whitening, whitening, version_dir)
    gpus = _gpus_per_task(cfg)
    trained = None
    if job.needs_training(factory):
        if plan.kind == "incremental" and previous is not None:
            trained = read_bytes(join(output, previous.trained_version, TRAINED))
        else:
            # Training is one task: it takes a whole node's CPUs (up to 16) for FAISS's threads.
            cpus = max(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"])
            task: Any = ray.remote(num_cpus=min(16, cpus), num_gpus=gpus)(train_index)
            trained = ray.get(task.remote(job.files, dim, cfg, whitening))
            _store_trained(version_dir, trained)
    inputs = shard_inputs(plan)
    counts = _build_shards(plan, inputs, dim, cfg, trained, version_dir, gpus)
    manifest = dataclasses.replace(
        _manifest(plan, previous, version, dim, job.cfg, factory, counts, job.identity),
        postprocessing=postprocessing,
        extraction=extraction_record(job.descriptors, job.files),  # for search by image
        descriptors_version=job.table_version,
        factory_choice=choice,
    )
    if cfg.dba is not None:
        # DBA of the stored vectors, before publication; plan_build made this a full build.
        from pipeline.index.dba import augment_version

        lease.note(f"DBA of version {version}")
        record = augment_version(
            output,
            manifest,
            inputs,
            cfg.dba,
            lambda: new_index(dim, cfg.factory, trained),
            whitening,
            cfg.use_gpu,
        )
        manifest = dataclasses.replace(
            manifest, postprocessing=PostProcessing(manifest.whitening, record)
        )
    if cfg.target is not None:
        lease.note(f"tuning the search of version {version}")
        manifest = dataclasses.replace(manifest, tuning=_tune(job, manifest, previous, plan))
    # A build whose lease was taken over writes no manifest and no LATEST: the note renews
    # the lease (a conditional write, so a takeover since the last heartbeat shows here).
    lease.note(f"publishing version {version}")
    lease.check()
    write_manifest(output, manifest)
    advance_latest(output, version)  # the commit point: LATEST moves, forward only
    lease.check()  # pruning, too, only by the lease's holder
    prune_versions(output, cfg.retention, keep=version)
    added = sum(f.rows for f in plan.add)
    result = BuildResult(
        version, False, manifest.count, manifest.shard_counts, time.monotonic() - t0,
        plan.kind, plan.reason, added, manifest.dba, factory, choice, manifest.tuning,
    )  # fmt: skip
    metrics.set_gauge("vectors", result.vectors)
    metrics.set_gauge("build", result.seconds)
    metrics.set_gauge("version", time.time())
    log.info(
        "built %s (%s): %d vectors in %d shards, %d added (%.1fs)",
        version, plan.kind, result.vectors, len(result.shard_counts), added, result.seconds,
    )  # fmt: skip
    return result


def shard_inputs(plan: BuildPlan) -> list[list[tuple[str, int]]]:
    """Per new shard of ``plan``, its input files and their first ids, in position order."""
    add = plan.add
    first_ids = plan.first_id + np.concatenate([[0], np.cumsum([f.rows for f in add])[:-1]])
    groups = assign_files(add, plan.new_shards) if plan.new_shards else []
    return [[(add[i].uri, int(first_ids[i])) for i in idx] for idx in groups]


def _build_shards(
    plan: BuildPlan,
    inputs: list[list[tuple[str, int]]],
    dim: int,
    cfg: IndexBuildConfig,
    trained: bytes | None,
    version_dir: str,
    gpus: int,
) -> list[int]:
    """Fill the plan's new shards (``inputs``: ``shard_inputs(plan)``) in parallel Ray tasks;
    their counts in shard order."""
    task = ray.remote(num_cpus=cfg.cpus_per_task, num_gpus=gpus)(build_shard)
    trained_ref = ray.put(trained)
    refs = [
        task.remote(plan.first_shard + s, files, dim, cfg, trained_ref, version_dir)
        for s, files in enumerate(inputs)
    ]
    counts = []
    for s, ref in enumerate(refs):
        counts.append(ray.get(ref))
        if failpoints.trigger("index_crash_after_shards", str(s + 1)):
            os._exit(1)  # a crash after some shards, before the manifest and LATEST
    return counts


def _manifest(
    plan: BuildPlan,
    previous: IndexManifest | None,
    version: str,
    dim: int,
    cfg: IndexBuildConfig,
    factory: str,
    counts: list[int],
    identity: dict[str, str],
) -> IndexManifest:
    """The new version's manifest: an incremental one lists the previous shards (where they
    live) and inputs first, then its own. ``cfg`` as configured (``factory`` "auto" stays so
    in the recorded config), ``factory`` the one the shards hold."""
    inputs = [IndexInput(f.uri, f.size, f.etag, f.rows) for f in plan.add]
    shard_versions: list[str] = []
    base_version, added_since_base = "", 0
    if plan.kind == "incremental" and previous is not None:
        shard_versions = [previous.shard_version(n) for n in range(previous.shards)]
        shard_versions += [version] * len(counts)
        counts = previous.shard_counts + counts
        inputs = previous.inputs + inputs
        base_version = previous.trained_version
        added_since_base = previous.added_since_base + sum(f.rows for f in plan.add)
    return IndexManifest(
        version=version,
        signature=plan.signature,
        factory=factory,
        dim=dim,
        metric=METRIC,
        shards=len(counts),
        shard_counts=counts,
        count=sum(counts),
        config=asdict(cfg),
        inputs=inputs,
        descriptor_model=identity,
        created_at=datetime.now(UTC).isoformat(),
        faiss=faiss.__version__,
        shard_versions=shard_versions,
        base_version=base_version,
        added_since_base=added_since_base,
    )


def _on_ray(fn: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``fn(*call)`` for every call as one-CPU Ray tasks, results in order."""
    task: Any = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(*call) for call in calls])


def _tune(
    job: _BuildInputs, manifest: IndexManifest, previous: IndexManifest | None, plan: BuildPlan
) -> SearchTuning:
    """The version's search default for ``job.cfg.target``: its held-out queries' exact
    neighbours as Ray tasks over its inputs, then the sweep (or, for an incremental version
    that inherits a setting for the same target, its re-check) on the version in this
    process (``pipeline.index.tuning``)."""
    from pipeline.index.exact_neighbours import held_out, input_ranges
    from pipeline.index.search import ShardedIndex
    from pipeline.index.tuning import exact_tuning, index_shape, recheck, tune_search

    cfg, target, t0 = job.cfg, job.cfg.target, time.monotonic()
    assert target is not None
    if is_exact(manifest.factory, manifest.dim):
        return exact_tuning(target)
    ranges = input_ranges(manifest)
    parts = max(1, min(len(ranges), int(ray.cluster_resources().get("CPU", 1))))
    held = held_out(ranges, target.queries, target.k, cfg.seed, job.whitening, parts, _on_ray)
    index = ShardedIndex.from_manifest(job.output, manifest, use_gpu=cfg.use_gpu)
    shape = index_shape(index)
    before = previous.tuning if previous is not None and plan.kind == "incremental" else None
    if before is not None and (before.target, before.k) == (target.recall, target.k):
        tuning = recheck(index, held, target, shape, before.params, cfg.seed)
    else:
        tuning = tune_search(index, held, target, shape, cfg.seed)
    tuning = dataclasses.replace(tuning, seconds=round(time.monotonic() - t0, 3))  # all of it
    log.info("search of version %s %s", manifest.version, tuning.summary())
    return tuning
