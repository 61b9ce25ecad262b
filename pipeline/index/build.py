"""Sharded FAISS index builds from descriptor Parquet, as immutable versions behind a LATEST
pointer; full or incremental.

OUTPUT/<version>/shard-00000.faiss, ids-00000.parquet (position -> id, key, source), …,
trained.faiss (the trained, empty index of a full build that needs training), manifest.json
(written after every shard), then OUTPUT/LATEST (the version name) moves: a reader that follows
LATEST never sees a half-built version. ``pipeline.index.plan`` decides what a build does:
nothing when inputs and configuration are unchanged; an incremental version (the previous
shards reused by reference, only the new files' vectors added, with the stored trained index)
when only new files appeared; a full build otherwise.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import faiss
import numpy as np
import pyarrow as pa
import ray

from pipeline.index import gpu
from pipeline.index.config import METRIC, IndexBuildConfig
from pipeline.index.plan import BuildPlan, balance, plan_build, signature
from pipeline.index.versions import (
    LATEST,
    IndexInput,
    IndexManifest,
    prune_versions,
    read_latest,
    write_manifest,
)
from pipeline.io.descriptor_reader import (
    DescriptorFile,
    check_same_model,
    iter_batches,
    list_descriptor_files,
)
from pipeline.io.descriptor_writer import parquet_bytes
from pipeline.io.storage import exists, join, read_bytes, upload_file_atomic, write_bytes_atomic
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.records import check_fingerprint

__all__ = [
    "BuildResult",
    "IndexBuildConfig",
    "assign_files",
    "build_index",
    "sample_training_vectors",
    "signature",
    "write_shard",
]

log = logging.getLogger(__name__)

TRAINED = "trained.faiss"

# One streamed batch of a shard: global ids (n,), keys, sources, descriptors (n, d) float32.
Batch = tuple[np.ndarray, list[str], list[str], np.ndarray]


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


def assign_files(files: list[DescriptorFile], shards: int) -> list[list[int]]:
    """File indices per index shard, balancing rows greedily (largest file first)."""
    return balance([f.rows for f in files], shards)


def sample_training_vectors(files: list[DescriptorFile], n: int, seed: int) -> np.ndarray:
    """``n`` vectors drawn uniformly without replacement across all files (not a prefix)."""
    total = sum(f.rows for f in files)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    out, start = [], 0
    for f in files:
        local = chosen[(chosen >= start) & (chosen < start + f.rows)] - start
        if len(local):
            offset = 0
            for _, _, x in iter_batches(f.uri):
                sel = local[(local >= offset) & (local < offset + len(x))] - offset
                if len(sel):
                    out.append(x[sel])
                offset += len(x)
        start += f.rows
    return np.concatenate(out)


def new_index(dim: int, factory: str, trained: bytes | None) -> faiss.Index:
    """An empty shard: a copy of the trained index, or a fresh one that needs no training."""
    if trained is not None:
        return faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def use_assigned_cpus() -> None:
    """FAISS threads = the CPUs Ray gave this task (a reused worker keeps its first setting)."""
    context = ray.get_runtime_context() if ray.is_initialized() else None
    if context is not None and context.worker.mode == ray.WORKER_MODE:
        faiss.omp_set_num_threads(max(1, int(context.get_assigned_resources().get("CPU", 1))))


def train_index(files: list[DescriptorFile], dim: int, cfg: IndexBuildConfig) -> bytes:
    """The trained, empty index (serialised), trained on ``cfg.train_size`` vectors sampled
    across all ``files``; the k-means on the GPU where there is one."""
    use_assigned_cpus()
    sample = sample_training_vectors(files, cfg.train_size, cfg.seed)
    log.info(
        "training %s on %d vectors sampled across %d files", cfg.factory, len(sample), len(files)
    )
    index = faiss.index_factory(dim, cfg.factory, faiss.METRIC_INNER_PRODUCT)
    gpu.train(index, sample, gpu.resolve_gpu(cfg.use_gpu))
    return faiss.serialize_index(index).tobytes()


def file_batches(files: list[tuple[str, int]], batch_rows: int) -> Iterator[Batch]:
    """The rows of ``files`` ((uri, first id)) in streamed batches."""
    for uri, first_id in files:
        offset = first_id
        for keys, sources, x in iter_batches(uri, batch_rows):
            yield np.arange(offset, offset + len(keys), dtype=np.int64), keys, sources, x
            offset += len(keys)


def write_shard(
    number: int, batches: Iterable[Batch], index: faiss.Index, version_dir: str, on_gpu: bool
) -> int:
    """Add ``batches`` to ``index`` (the coarse assignment on the GPU when ``on_gpu``), then
    write ``shard-<number>.faiss`` and its id table into ``version_dir``; returns the count."""
    ids, keys, sources = [], [], []
    with gpu.coarse_quantizer_on_gpu(index, on_gpu):
        for batch_ids, batch_keys, batch_sources, x in batches:
            index.add(x)
            ids.append(batch_ids)
            keys.append(pa.array(batch_keys, pa.string()))
            sources.append(pa.array(batch_sources, pa.string()).dictionary_encode())
    table = pa.table(
        {
            "id": pa.array(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
            "key": pa.chunked_array(keys, pa.string()),
            "source": pa.chunked_array(sources, pa.dictionary(pa.int32(), pa.string())).cast(
                pa.string()
            ),
        }
    )
    write_bytes_atomic(join(version_dir, f"ids-{number:05d}.parquet"), parquet_bytes(table))
    # Written to a local file by FAISS, then moved/uploaded: no in-memory serialised copy.
    fd, local = tempfile.mkstemp(suffix=".faiss")
    os.close(fd)
    faiss.write_index(index, local)
    count = int(index.ntotal)
    del index
    upload_file_atomic(local, join(version_dir, f"shard-{number:05d}.faiss"))
    return count


def build_shard(
    shard: int,
    files: list[tuple[str, int]],
    dim: int,
    cfg: IndexBuildConfig,
    trained: bytes | None,
    version_dir: str,
) -> int:
    """Add the rows of ``files`` ((uri, first id)) to one index shard; write it and its id table."""
    use_assigned_cpus()
    return write_shard(
        shard,
        file_batches(files, cfg.batch_rows),
        new_index(dim, cfg.factory, trained),
        version_dir,
        gpu.resolve_gpu(cfg.use_gpu),
    )


def _gpus_per_task(cfg: IndexBuildConfig) -> int:
    """GPUs a build task asks Ray for: Ray hides the GPUs from tasks that ask for none."""
    if cfg.use_gpu is False:
        return 0
    return 1 if cfg.use_gpu or ray.cluster_resources().get("GPU", 0) > 0 else 0


def _store_trained(version_dir: str, trained: bytes) -> None:
    write_bytes_atomic(join(version_dir, TRAINED), trained)


def build_index(
    descriptors: str, output: str, cfg: IndexBuildConfig, force: bool = False
) -> BuildResult:
    """Build a new version of the index at ``output`` from ``descriptors`` (on the connected Ray
    cluster): nothing when up to date, incremental when only new files appeared, else full."""
    t0 = time.monotonic()
    files = list_descriptor_files(descriptors)
    identity = check_same_model(files)
    latest = read_latest(output)
    previous = latest[1] if latest else None
    dim = files[0].dim
    needs_training = not faiss.index_factory(
        dim, cfg.factory, faiss.METRIC_INNER_PRODUCT
    ).is_trained
    reusable = previous is not None and (
        not needs_training or exists(join(output, previous.trained_version, TRAINED))
    )
    plan = plan_build(files, previous, cfg, force, reusable)
    if previous is not None and plan.kind == "up_to_date":
        log.info("index %s is up to date (version %s)", output, previous.version)
        return BuildResult(
            previous.version,
            True,
            previous.count,
            previous.shard_counts,
            kind=plan.kind,
            reason=plan.reason,
        )
    if previous is not None and not force:
        check_fingerprint(
            f"the index at {output} (its descriptors)",
            previous.descriptor_model,
            identity,
            f"{descriptors} cannot join it: build it into a new --output",
        )
    version = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{plan.signature[:8]}"
    version_dir = join(output, version)
    log.info("building %s version %s: %s (%s)", output, version, plan.kind, plan.reason)
    gpus = _gpus_per_task(cfg)
    trained = None
    if needs_training:
        if plan.kind == "incremental" and previous is not None:
            trained = read_bytes(join(output, previous.trained_version, TRAINED))
        else:
            # Training is one task: it takes a whole node's CPUs (up to 16) for FAISS's threads.
            cpus = max(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"])
            task = ray.remote(num_cpus=min(16, cpus), num_gpus=gpus)(train_index)
            trained = ray.get(task.remote(files, dim, cfg))
            _store_trained(version_dir, trained)
    counts = _build_shards(plan, dim, cfg, trained, version_dir, gpus)
    manifest = _manifest(plan, previous, version, dim, cfg, counts, identity)
    write_manifest(output, manifest)
    write_bytes_atomic(join(output, LATEST), version.encode())  # the commit point
    prune_versions(output, cfg.retention, keep=version)
    added = sum(f.rows for f in plan.add)
    result = BuildResult(
        version, False, manifest.count, manifest.shard_counts, time.monotonic() - t0,
        plan.kind, plan.reason, added,
    )  # fmt: skip
    metrics.set_gauge("vectors", result.vectors)
    metrics.set_gauge("build", result.seconds)
    metrics.set_gauge("version", time.time())
    log.info(
        "built %s (%s): %d vectors in %d shards, %d added (%.1fs)",
        version, plan.kind, result.vectors, len(result.shard_counts), added, result.seconds,
    )  # fmt: skip
    return result


def _build_shards(
    plan: BuildPlan,
    dim: int,
    cfg: IndexBuildConfig,
    trained: bytes | None,
    version_dir: str,
    gpus: int,
) -> list[int]:
    """Fill the plan's new shards in parallel Ray tasks; their counts in shard order."""
    add = plan.add
    first_ids = plan.first_id + np.concatenate([[0], np.cumsum([f.rows for f in add])[:-1]])
    groups = assign_files(add, plan.new_shards) if plan.new_shards else []
    task = ray.remote(num_cpus=1, num_gpus=gpus)(build_shard)
    trained_ref = ray.put(trained)
    refs = [
        task.remote(
            plan.first_shard + s,
            [(add[i].uri, int(first_ids[i])) for i in idx],
            dim,
            cfg,
            trained_ref,
            version_dir,
        )
        for s, idx in enumerate(groups)
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
    counts: list[int],
    identity: dict[str, str],
) -> IndexManifest:
    """The new version's manifest: an incremental one lists the previous shards (where they
    live) and inputs first, then its own."""
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
        factory=cfg.factory,
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
