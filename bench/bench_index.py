"""R1M-scale index benchmark: one million generated 512-d descriptors in Parquet.

Prints: the time just to read the Parquet vs building a Flat index in 4 shards; evaluation
search (70 queries, k = 1000) vs the compute floor (70 x 1M x 512 x 2 FLOP at the measured
matmul rate) and vs a plain matmul of the same scores; the exact-rank evaluation path; peak
memory (all processes, sampled); and one IVF-PQ configuration's build time and recall@100.

    .venv/bin/python bench/bench_index.py [--vectors 1000000] [--ivf IVF1024,PQ32x4fs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


import numpy as np
import ray
import torch
from common import matmul_peak_gflops

from pipeline.evaluate.ranking import distractor_counter
from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.search import ShardedIndex
from pipeline.io.descriptor_reader import iter_batches, list_descriptor_files
from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
from pipeline.io.storage import join, write_bytes_atomic

DIM = 512


def tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of ``root`` and its descendants, from /proc."""
    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(c for c, pp in parent.items() if pp == pid)
    return total


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants (Ray workers)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(0.1)

    def __enter__(self) -> PeakMemory:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


CLUSTERS = 10_000  # ~100 descriptors per landmark-like cluster


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, noise: float) -> np.ndarray:
    """Unit vectors near random centers: descriptors with near neighbours, like real ones
    (uniform random 512-d vectors have none, and every index scores ~0 recall on them)."""
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
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=70)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--ivf", default="IVF1024,PQ64x4fs")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--train-size", type=int, default=50_000)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="glam-index-bench-")
    desc = join(root, "descriptors")
    t = time.perf_counter()
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    write_descriptors(desc, args.vectors, args.files, centers, seed=0)
    print(
        f"# generated {args.vectors} x {DIM} descriptors in {args.files} Parquet files "
        f"({time.perf_counter() - t:.1f}s), torch threads {torch.get_num_threads()}"
    )

    t = time.perf_counter()
    rows = 0
    for f in list_descriptor_files(desc):
        for _, _, x in iter_batches(f.uri):
            rows += len(x)
    read_s = time.perf_counter() - t

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    baseline = tree_rss(os.getpid())
    with PeakMemory() as mem:
        t = time.perf_counter()
        build_index(desc, join(root, "flat"), IndexBuildConfig(shards=args.shards))
        flat_s = time.perf_counter() - t
    flat_peak = mem.peak

    q = clustered(rng, centers, args.queries, noise=0.8)
    with PeakMemory() as mem:
        index = ShardedIndex.load(join(root, "flat"))
        index.search(q, args.k)  # warm-up
        t = time.perf_counter()
        exact = index.search(q, args.k)
        search_s = time.perf_counter() - t
        x = np.concatenate([index.shard_vectors(s) for s in range(len(index.shards))])
        t = time.perf_counter()
        q @ x.T
        matmul_s = time.perf_counter() - t
        t = time.perf_counter()
        distractor_counter(index, q, args.k)
        exact_rank_s = time.perf_counter() - t
    search_peak = mem.peak
    del x
    peak = matmul_peak_gflops(torch.float32)
    floor_s = args.queries * args.vectors * DIM * 2 / (peak * 1e9)

    with PeakMemory() as mem:
        t = time.perf_counter()
        build_index(
            desc,
            join(root, "ivfpq"),
            IndexBuildConfig(factory=args.ivf, shards=args.shards, train_size=args.train_size),
        )
        ivf_s = time.perf_counter() - t
    ivf_peak = mem.peak
    ivf = ShardedIndex.load(join(root, "ivfpq"))
    ivf.set_nprobe(args.nprobe)
    t = time.perf_counter()
    approx = ivf.search(q, 100)
    ivf_search_s = time.perf_counter() - t
    recall = np.mean(
        [len(set(a) & set(b)) / 100 for a, b in zip(approx.ids, exact.ids[:, :100], strict=True)]
    )
    recall10 = np.mean(
        [len(set(a[:10]) & set(b)) / 10 for a, b in zip(approx.ids, exact.ids[:, :10], strict=True)]
    )
    ray.shutdown()

    gib = 2**30
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| read the Parquet ({rows} rows, streamed) | {read_s:.1f} s |")
    print(
        f"| build Flat, {args.shards} shards (read + add + write + manifest) | {flat_s:.1f} s "
        f"({flat_s / read_s:.2f}x the read) |"
    )
    print(
        f"| peak memory during the Flat build, above the idle Ray cluster "
        f"({baseline / gib:.2f} GiB) | {(flat_peak - baseline) / gib:.2f} GiB "
        f"(index: {args.vectors * DIM * 4 / gib:.2f} GiB) |"
    )
    print(f"| search {args.queries} queries, k = {args.k}, Flat 4 shards | {search_s:.2f} s |")
    print(f"| plain matmul of the same scores (fp32) | {matmul_s:.2f} s |")
    print(
        f"| compute floor at the measured fp32 matmul peak ({peak:.0f} GFLOP/s) | {floor_s:.2f} s |"
    )
    print(
        f"| search vs matmul / vs floor | {search_s / matmul_s:.2f}x / {search_s / floor_s:.2f}x |"
    )
    print(
        f"| exact-rank evaluation path (all 1M scores per query, sorted) | {exact_rank_s:.2f} s |"
    )
    print(
        f"| peak memory while loading + searching, above idle Ray (incl. the bench's own "
        f"2 GiB copy for the matmul) | {(search_peak - baseline) / gib:.2f} GiB |"
    )
    print(
        f"| build {args.ivf}, {args.shards} shards, train {args.train_size} | {ivf_s:.1f} s "
        f"(peak {(ivf_peak - baseline) / gib:.2f} GiB above idle Ray) |"
    )
    print(
        f"| {args.ivf} search, nprobe {args.nprobe}, k = 100 | {ivf_search_s:.2f} s, "
        f"recall@100 vs exact {recall:.3f}, recall@10 {recall10:.3f} |"
    )
    shutil.rmtree(root)  # ~4 GB of descriptors and indexes
    return 0


if __name__ == "__main__":
    sys.exit(main())
