"""Sharded FAISS index builds from descriptor Parquet, as immutable versions behind a LATEST
pointer.

OUTPUT/<version>/shard-00000.faiss, ids-00000.parquet (position -> id, key, source), …,
manifest.json (written after every shard), then OUTPUT/LATEST (the version name) moves: a reader
that follows LATEST never sees a half-built version. Builds whose inputs and configuration are
unchanged since LATEST are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import faiss
import numpy as np
import pyarrow as pa
import ray

from pipeline.index.expansion import DbaConfig
from pipeline.index.postprocess import (
    extraction_record,
    load_build_whitening,
    store_whitening,
    version_whitening,
)
from pipeline.index.versions import (
    DbaRecord,
    IndexInput,
    IndexManifest,
    PostProcessing,
    new_version_name,
    prune_versions,
    publish,
    read_latest,
    write_manifest,
)
from pipeline.index.whitening import Whitening
from pipeline.io.descriptor_reader import (
    DescriptorFile,
    check_same_model,
    iter_batches,
    list_descriptor_files,
    sample_rows,
)
from pipeline.io.descriptor_writer import parquet_bytes
from pipeline.io.storage import (
    check_output_folder,
    join,
    upload_file_atomic,
    write_bytes_atomic,
)
from pipeline.runtime import failpoints, metrics
from pipeline.runtime.lease import DEFAULT_TTL_S, Lease
from pipeline.runtime.preflight import preflight
from pipeline.runtime.records import check_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexBuildConfig:
    # A FAISS index_factory string: Flat, IVF4096,Flat, IVF65536,PQ64, OPQ32,IVF1024,PQ32x4fs, …
    factory: str = "Flat"
    shards: int = 1
    # Vectors sampled uniformly at random across all input files to train the index.
    train_size: int = 100_000
    seed: int = 0
    # Versions kept (LATEST included); older ones are deleted after a successful build.
    retention: int = 3
    # Rows per streamed batch while adding.
    batch_rows: int = 65536
    # None: FAISS on the GPU when faiss has GPU support and a GPU is visible.
    use_gpu: bool | None = None
    # issue 12: a whitening file (jobs/learn_whitening.py) applied to every stored vector and,
    # at search, to every query; and database-side augmentation (pipeline.index.dba).
    whitening: str | None = None
    dba: DbaConfig | None = None

    def __post_init__(self) -> None:
        if self.shards <= 0 or self.train_size <= 0 or self.retention <= 0:
            raise ValueError("shards, train size and retention must be positive")
        try:
            faiss.index_factory(
                8 if "PQ" not in self.factory else 64, self.factory, faiss.METRIC_INNER_PRODUCT
            )
        except RuntimeError as e:
            raise ValueError(f"not a FAISS index_factory string: {self.factory!r}") from e


@dataclass
class BuildResult:
    version: str
    up_to_date: bool
    vectors: int = 0
    shard_counts: list[int] = field(default_factory=list)
    seconds: float = 0.0
    dba: DbaRecord | None = None  # issue 12: DBA's time and memory when it ran


def signature(
    files: list[DescriptorFile], cfg: IndexBuildConfig, whitening_sha256: str | None = None
) -> str:
    """What a version is a function of: the input files (URI, size, ETag) and the config."""
    payload: dict[str, object] = {
        "files": [[f.uri, f.size, f.etag] for f in files],
        "factory": cfg.factory,
        "shards": cfg.shards,
        "train_size": cfg.train_size,
        "seed": cfg.seed,
        "metric": "inner_product",
    }
    # issue 12: post-processing, only when used (earlier versions keep their signatures).
    if whitening_sha256 is not None:
        payload["whitening"] = whitening_sha256
    if cfg.dba is not None:
        payload["dba"] = [cfg.dba.k, cfg.dba.alpha]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def assign_files(files: list[DescriptorFile], shards: int) -> list[list[int]]:
    """File indices per index shard, balancing rows greedily (largest file first)."""
    load = [0] * shards
    out: list[list[int]] = [[] for _ in range(shards)]
    for i in sorted(range(len(files)), key=lambda i: (-files[i].rows, i)):
        s = min(range(shards), key=lambda s: (load[s], s))
        out[s].append(i)
        load[s] += files[i].rows
    return [sorted(x) for x in out]


def sample_training_vectors(files: list[DescriptorFile], n: int, seed: int) -> np.ndarray:
    """``n`` vectors drawn uniformly without replacement across all files (not a prefix)."""
    return sample_rows(files, n, seed)


def _gpu_available(use_gpu: bool | None) -> bool:
    has = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not has:
        raise ValueError("--gpu asked for, but faiss has no GPU support or sees no GPU")
    return has if use_gpu is None else bool(use_gpu)


def _new_index(dim: int, cfg: IndexBuildConfig, trained: bytes | None) -> faiss.Index:
    if trained is not None:
        return faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    return faiss.index_factory(dim, cfg.factory, faiss.METRIC_INNER_PRODUCT)


def build_shard(
    shard: int,
    files: list[tuple[str, int]],
    dim: int,
    cfg: IndexBuildConfig,
    trained: bytes | None,
    version_dir: str,
) -> int:
    """Add the rows of ``files`` ((uri, first id)) to one index shard; write it and its id table.
    With ``cfg.whitening`` (issue 12), the version's copy of it whitens every vector first."""
    whitening = version_whitening(version_dir) if cfg.whitening else None
    index = _new_index(dim, cfg, trained)
    gpu = _gpu_available(cfg.use_gpu)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    ids, keys, sources = [], [], []
    for uri, first_id in files:
        offset = first_id
        for k, s, x in iter_batches(uri, cfg.batch_rows):
            index.add(x if whitening is None else whitening.apply(x))
            ids.append(np.arange(offset, offset + len(k), dtype=np.int64))
            keys.extend(k)
            sources.extend(s)
            offset += len(k)
    if gpu:
        index = faiss.index_gpu_to_cpu(index)
    table = pa.table(
        {
            "id": pa.array(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
            "key": pa.array(keys, pa.string()),
            "source": pa.array(sources, pa.string()),
        }
    )
    write_bytes_atomic(join(version_dir, f"ids-{shard:05d}.parquet"), parquet_bytes(table))
    return save_index(index, join(version_dir, f"shard-{shard:05d}.faiss"))


def save_index(index: faiss.Index, uri: str) -> int:
    """Write ``index`` to ``uri`` atomically; return its vector count. Written to a local file
    by FAISS, then moved/uploaded: no in-memory serialised copy."""
    fd, local = tempfile.mkstemp(suffix=".faiss")
    os.close(fd)
    faiss.write_index(index, local)
    count = int(index.ntotal)
    del index
    upload_file_atomic(local, uri)
    return count


def build_index(
    descriptors: str,
    output: str,
    cfg: IndexBuildConfig,
    force: bool = False,
    lease_ttl_s: float = DEFAULT_TTL_S,
) -> BuildResult:
    """Build a new version of the index at ``output`` from ``descriptors`` (on the connected Ray
    cluster), unless nothing changed since LATEST and ``force`` is False."""
    t0 = time.monotonic()
    check_output_folder(output, descriptors, "descriptors")
    preflight(read=[descriptors], write=[output])
    files = list_descriptor_files(descriptors)
    identity = check_same_model(files)
    # issue 12 hook: the whitening to apply (checked against the descriptors' model).
    whitening, whitening_sha = load_build_whitening(cfg.whitening, identity)
    sig = signature(files, cfg, whitening_sha)
    done = _up_to_date(descriptors, output, identity, sig, force)
    if done is not None:  # read only: a scheduled rebuild with nothing new writes nothing
        return done
    with Lease(output, "build_index", ttl_s=lease_ttl_s) as lease:
        done = _up_to_date(descriptors, output, identity, sig, force)  # another build finished
        if done is not None:
            return done
        return _build_version(files, identity, sig, output, cfg, lease, t0, descriptors, whitening)


def _up_to_date(
    descriptors: str, output: str, identity: dict[str, str], sig: str, force: bool
) -> BuildResult | None:
    """The result when LATEST already holds these inputs with this configuration; refuses
    descriptors of another model."""
    latest = read_latest(output)
    if latest and not force:
        version, manifest = latest
        if manifest.signature == sig:
            log.info("index %s is up to date (version %s)", output, version)
            return BuildResult(version, True, manifest.count, manifest.shard_counts)
        check_fingerprint(
            f"the index at {output} (its descriptors)",
            manifest.descriptor_model,
            identity,
            f"{descriptors} cannot join it: build it into a new --output",
        )
    return None


def _build_version(
    files: list[DescriptorFile],
    identity: dict[str, str],
    sig: str,
    output: str,
    cfg: IndexBuildConfig,
    lease: Lease,
    t0: float,
    descriptors: str,
    whitening: Whitening | None = None,
) -> BuildResult:
    """Train, fill every shard, write the manifest, then move LATEST (under the lease).
    Issue 12: ``whitening`` applies to every stored vector; DBA runs before the manifest."""
    dim = files[0].dim if whitening is None else whitening.dim_out
    version = new_version_name(output, sig)
    lease.note(f"building version {version}")
    version_dir = join(output, version)
    postprocessing = None
    if whitening is not None and cfg.whitening is not None:  # issue 12 hook
        postprocessing = store_whitening(cfg.whitening, whitening, version_dir)
    trained = None
    probe = faiss.index_factory(dim, cfg.factory, faiss.METRIC_INNER_PRODUCT)
    if not probe.is_trained:
        sample = sample_training_vectors(files, cfg.train_size, cfg.seed)
        if whitening is not None:
            sample = whitening.apply(sample)
        log.info(
            "training %s on %d vectors sampled across %d files",
            cfg.factory,
            len(sample),
            len(files),
        )
        if _gpu_available(cfg.use_gpu):
            gpu_probe = faiss.index_cpu_to_all_gpus(probe)
            gpu_probe.train(sample)
            probe = faiss.index_gpu_to_cpu(gpu_probe)
        else:
            probe.train(sample)
        trained = faiss.serialize_index(probe).tobytes()
    first_ids = np.concatenate([[0], np.cumsum([f.rows for f in files])[:-1]]).astype(int)
    plan = assign_files(files, cfg.shards)
    task = ray.remote(num_cpus=1)(build_shard)
    trained_ref = ray.put(trained)
    refs = [
        task.remote(
            s,
            [(files[i].uri, int(first_ids[i])) for i in idx],
            dim,
            cfg,
            trained_ref,
            version_dir,
        )
        for s, idx in enumerate(plan)
    ]
    counts = []
    for s, ref in enumerate(refs):
        counts.append(ray.get(ref))
        if failpoints.trigger("index_crash_after_shards", str(s + 1)):
            os._exit(1)  # a crash after some shards, before the manifest and LATEST
    manifest = IndexManifest(
        version=version,
        signature=sig,
        factory=cfg.factory,
        dim=dim,
        metric="inner_product",
        shards=cfg.shards,
        shard_counts=counts,
        count=sum(counts),
        config=asdict(cfg),
        inputs=[IndexInput(f.uri, f.size, f.etag, f.rows) for f in files],
        descriptor_model=identity,
        created_at=datetime.now(UTC).isoformat(),
        faiss=faiss.__version__,
        postprocessing=postprocessing,
        extraction=extraction_record(descriptors, files),  # issue 12: for search by image
    )
    if cfg.dba is not None:  # issue 12 hook: DBA of the stored vectors, before publication
        from pipeline.index.dba import augment_version

        lease.note(f"DBA of version {version}")
        record = augment_version(
            version_dir,
            manifest,
            [[(files[i].uri, int(first_ids[i])) for i in idx] for idx in plan],
            cfg.dba,
            lambda: _new_index(dim, cfg, trained),
            whitening,
        )
        manifest = dataclasses.replace(
            manifest, postprocessing=PostProcessing(manifest.whitening, record)
        )
    lease.check()  # a build whose lease was taken over publishes nothing
    write_manifest(output, manifest)
    publish(output, version)  # the commit point: LATEST moves, forward only
    prune_versions(output, cfg.retention, keep=version)
    result = BuildResult(version, False, sum(counts), counts, time.monotonic() - t0, manifest.dba)
    metrics.set_gauge("vectors", result.vectors)
    metrics.set_gauge("build", result.seconds)
    metrics.set_gauge("version", time.time())
    log.info(
        "built %s: %d vectors in %d shards (%.1fs)",
        version,
        result.vectors,
        len(counts),
        result.seconds,
    )
    return result
