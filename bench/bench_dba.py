"""Database-side augmentation at index build time: time and memory against the same build
without it, on generated clustered 512-d descriptors (the generator below, bench_index.py's when
the figures in BENCHMARKS.md were measured; bench_index.py now uses bench/descriptors.py).

    .venv/bin/python bench/bench_dba.py --vectors 100000 --factory Flat
    .venv/bin/python bench/bench_dba.py --vectors 1000000 --factory IVF1024,Flat
    .venv/bin/python bench/bench_dba.py --vectors 50000 --joint 5000

``--joint N``: evaluation's joint DBA (``evaluate.py --dba-joint``) instead, over N database
vectors + the index built without DBA: seconds, peak RSS of this process above its start
(loading the index and the joint DBA), and the estimate the evaluation checks before loading
(``joint_dba_bytes``).

DBA searches every stored vector against the version (N queries): O(N² d) with Flat shards,
about nprobe/nlist of that with IVF. Prints build seconds and peak memory (this process and its
Ray workers, sampled) with and without DBA, and the DBA record of the manifest (its own
seconds and the build driver's peak RSS).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import ray

from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.expansion import DbaConfig
from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
from pipeline.io.storage import join, write_bytes_atomic
from pipeline.runtime.memory import PeakMemory, rss_bytes, tree_rss

DIM = 512
CLUSTERS = 10_000  # ~100 descriptors per landmark-like cluster


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, noise: float) -> np.ndarray:
    """Unit vectors near random centers: descriptors with near neighbours."""
    x = centers[rng.integers(0, len(centers), n)]
    x = x + noise * rng.standard_normal((n, DIM), dtype=np.float32) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_descriptors(folder: str, n: int, files: int, centers: np.ndarray, seed: int) -> None:
    meta = file_metadata(
        fingerprint(ExtractionSpec(), {"backbone": "resnet101", "dim": DIM}, "0" * 64), "bench"
    )
    rng = np.random.default_rng(seed)
    per = n // files
    for f in range(files):
        x = clustered(rng, centers, per, noise=0.8)
        keys = [f"d{f:02d}_{i:07d}" for i in range(per)]
        table = descriptor_table(keys, "bench", x, [1] * per, [1] * per, meta)
        write_bytes_atomic(join(folder, f"part-{f:06d}.parquet"), parquet_bytes(table))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, default=100_000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--factory", default="Flat")
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--joint", type=int, default=0, metavar="N", help="joint DBA, N database rows")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="glam-dba-bench-")
    try:
        desc = join(root, "descriptors")
        rng = np.random.default_rng(1)
        centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        write_descriptors(desc, args.vectors, args.files, centers, seed=0)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        if args.joint:
            return _joint(args, desc, join(root, "index"), centers)
        idle = tree_rss(os.getpid())
        cfg = IndexBuildConfig(factory=args.factory, shards=args.shards, train_size=args.train_size)
        rows = []
        for label, dba in [("without DBA", None), (f"with DBA k={args.k}", DbaConfig(args.k))]:
            with PeakMemory() as mem:
                t = time.perf_counter()
                result = build_index(desc, join(root, label.replace(" ", "-")), _with(cfg, dba))
                seconds = time.perf_counter() - t
            rows.append((label, seconds, mem.peak - idle, result.dba))
        ray.shutdown()
        gib = 2**30
        index_gib = args.vectors * DIM * 4 / gib
        print(
            f"# {args.vectors} x {DIM} descriptors, {args.factory}, {args.shards} shards "
            f"(a flat copy is {index_gib:.2f} GiB); Ray idle {idle / gib:.2f} GiB"
        )
        print("| build | seconds | peak memory above idle Ray | DBA seconds | driver peak RSS |")
        print("| --- | --- | --- | --- | --- |")
        for label, seconds, peak, dba in rows:
            extra = (
                f"{dba.seconds:.1f} | {dba.peak_rss_bytes / gib:.2f} GiB"
                if dba is not None
                else "- | -"
            )
            print(f"| {label} | {seconds:.1f} | {peak / gib:.2f} GiB | {extra} |")
        print(f"# DBA build / plain build: {rows[1][1] / rows[0][1]:.2f}x the time")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _joint(args: argparse.Namespace, desc: str, output: str, centers: np.ndarray) -> int:
    """Joint DBA over ``args.joint`` database vectors + an index built without DBA."""
    from pipeline.evaluate.postprocess import JointDba, joint_dba, joint_dba_bytes
    from pipeline.index.search import ShardedIndex

    cfg = IndexBuildConfig(factory=args.factory, shards=args.shards, train_size=args.train_size)
    build_index(desc, output, cfg)
    ray.shutdown()
    x = clustered(np.random.default_rng(7), centers, args.joint, noise=0.8)
    before = rss_bytes()
    with PeakMemory() as mem, ShardedIndex.load(output, use_gpu=False) as index:
        t = time.perf_counter()
        joint_dba(x, index, DbaConfig(args.k), JointDba())
        seconds = time.perf_counter() - t
    n, gib = args.joint + args.vectors, 2**30
    estimate = joint_dba_bytes(n, DIM, args.k, JointDba().chunk_rows)
    print(f"# joint DBA k={args.k}: {args.joint} database + {args.vectors} distractors x {DIM}")
    print("| vectors | seconds | peak RSS (index loaded + joint DBA) | estimate checked |")
    print("| --- | --- | --- | --- |")
    print(
        f"| {n} | {seconds:.1f} | {(mem.peak - before) / gib:.2f} GiB | {estimate / gib:.2f} GiB |"
    )
    return 0


def _with(cfg: IndexBuildConfig, dba: DbaConfig | None) -> IndexBuildConfig:
    import dataclasses

    return dataclasses.replace(cfg, dba=dba)


if __name__ == "__main__":
    sys.exit(main())
