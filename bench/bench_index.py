"""R1M-scale index benchmark: one million generated 512-d descriptors (``bench/descriptors.py``:
landmark clusters in an anisotropic space, not uniform on the sphere) in 10 Parquet files.

Parts (run each under the exclusive lock; the data stays in --workdir between them):

- ``data``: write the 1M descriptors (10 files) and a further 100k (10% new data);
- ``flat``: read time vs a Flat build in 4 shards; evaluation search (70 queries, k = 1000) vs
  a plain matmul and the compute floor; the exact-rank evaluation path; peak memory; saves the
  exact top-100 for the recall part;
- ``recall``: per factory, build time and size, then recall@1/10/100 against exact search and
  the search time of 70 queries (k = 100) for several nprobe / k_factor settings, beside the
  exact (Flat) search time;
- ``incremental``: 10% new data: an incremental version vs a full rebuild (time, recall);
- ``distributed``: the Flat index served by Ray actors: search time vs one process, identical
  answers, resident memory per actor vs its shards;
- ``clean``: delete --workdir.

    .venv/bin/python bench/bench_index.py --part data|flat|recall|incremental|distributed|clean
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import ray
import torch
from common import matmul_peak_gflops
from descriptors import DescriptorModel

from pipeline.evaluate.ranking import distractor_counter
from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.search import ShardedIndex
from pipeline.index.search_config import SearchParams, ServingConfig
from pipeline.index.serving import DistributedIndex
from pipeline.io.descriptor_reader import iter_batches, list_descriptor_files
from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
from pipeline.io.storage import join, write_bytes_atomic
from pipeline.runtime.memory import PeakMemory, tree_rss

DIM = 512
FILE_ROWS = 100_000
GIB = 2**30
FACTORIES = (
    "IVF1024,PQ64x4fs",
    "IVF1024,PQ64x4fs,RFlat",
    "IVF1024,PQ64x4fs,Refine(SQ8)",
    "IVF1024,SQ8",
)
PARTS = ["data", "flat", "recall", "incremental", "distributed", "clean"]
SETTINGS = (
    (16, 1), (64, 1), (256, 1), (16, 4), (64, 4), (64, 8), (128, 8), (256, 8), (256, 16),
)  # fmt: skip


def write_files(folder: str, model: DescriptorModel, first_file: int, files: int) -> None:
    meta = file_metadata(
        fingerprint(ExtractionSpec(), {"backbone": "resnet101", "dim": DIM}, "0" * 64), "bench"
    )
    for f in range(first_file, first_file + files):
        x = model.rows(f * FILE_ROWS, (f + 1) * FILE_ROWS)
        keys = [f"d{f:02d}_{i:07d}" for i in range(FILE_ROWS)]
        table = descriptor_table(keys, "bench", x, [1] * FILE_ROWS, [1] * FILE_ROWS, meta)
        write_bytes_atomic(join(folder, f"part-{f:06d}.parquet"), parquet_bytes(table))


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, exact, strict=True)])
    )


def timed(fn, repeats: int = 3):  # type: ignore[no-untyped-def]
    """(best seconds of ``repeats`` after a warm-up, the last result)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def add_settings_argument(p: argparse.ArgumentParser, default: tuple) -> None:
    """``--settings nprobe:k_factor …``: the search settings a recall part measures."""
    p.add_argument(
        "--settings",
        type=lambda s: tuple(int(v) for v in s.split(":")),
        nargs="+",
        default=list(default),
        help="nprobe:k_factor ...",
    )


def row(*cells: object) -> None:
    """One Markdown table row."""
    print("| " + " | ".join(str(c) for c in cells) + " |")


def header(*cells: str) -> None:
    row(*cells)
    row(*["---"] * len(cells))


def dir_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.faiss"))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.workdir
        self.desc = join(self.work, "descriptors")
        self.model = DescriptorModel()
        self.q = self.model.queries(args.queries)
        self.results_path = join(self.work, "results.json")

    def save(self, part: str, values: dict) -> None:
        results = (
            json.loads(Path(self.results_path).read_text())
            if os.path.exists(self.results_path)
            else {}
        )
        results[part] = values
        Path(self.results_path).write_text(json.dumps(results, indent=2))

    def ray(self) -> int:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        return tree_rss(os.getpid())

    def data(self) -> None:
        t = time.perf_counter()
        files = self.args.vectors // FILE_ROWS
        write_files(self.desc, self.model, 0, files)
        write_files(join(self.work, "new"), self.model, files, 1)
        took = time.perf_counter() - t
        print(f"# generated {self.args.vectors} + {FILE_ROWS} descriptors ({took:.0f}s)")

    def flat(self) -> None:
        a = self.args
        files = list_descriptor_files(self.desc)
        for _ in range(2):  # the second read, like the build's, from the page cache
            t = time.perf_counter()
            rows = sum(len(x) for f in files for _, _, x in iter_batches(f.uri))
            read_s = time.perf_counter() - t
        baseline = self.ray()
        out = join(self.work, "flat")
        shutil.rmtree(out, ignore_errors=True)  # a build, not an "up to date"
        with PeakMemory() as mem:
            t = time.perf_counter()
            build_index(self.desc, out, IndexBuildConfig(shards=a.shards))
            build_s = time.perf_counter() - t
        build_peak = mem.peak - baseline
        ray.shutdown()
        q = self.q
        with PeakMemory() as mem:
            index = ShardedIndex.load(out)
            search_s, _ = timed(lambda: index.search(q, a.k))
            search100_s, exact100 = timed(lambda: index.search(q, 100))
            xb = np.concatenate([shard.vectors() for shard in index.held])
            matmul_s, _ = timed(lambda: q @ xb.T)
            db_scores = q @ xb[:: len(xb) // 5000][:5000].T  # stands for 70 x 5k ROxf scores
            rank_s, _ = timed(lambda: distractor_counter(index, q, a.k, db_scores), 1)
        search_peak = mem.peak
        np.save(join(self.work, "exact100.npy"), exact100.ids)
        peak = matmul_peak_gflops(torch.float32)
        floor_s = a.queries * rows * DIM * 2 / (peak * 1e9)
        gib = rows * DIM * 4 / GIB
        header("measure", "value")
        row(f"read the Parquet ({rows} rows, streamed in row-group batches)", f"{read_s:.1f} s")
        row(
            f"build `Flat`, {a.shards} shards (read + add + write + manifest + LATEST)",
            f"{build_s:.1f} s ({build_s / read_s:.2f}x the read)",
        )
        row(
            f"peak memory of the Flat build above the idle Ray cluster ({baseline / GIB:.2f} GiB)",
            f"{build_peak / GIB:.2f} GiB for a {gib:.2f} GiB index",
        )
        row(
            f"search {a.queries} queries, k = {a.k}, Flat in {a.shards} shards", f"{search_s:.2f} s"
        )
        row(f"search {a.queries} queries, k = 100", f"{search100_s:.2f} s")
        row(f"plain fp32 matmul of the same {a.queries} x {rows} scores", f"{matmul_s:.2f} s")
        row(
            f"compute floor ({a.queries} x {rows} x {DIM} x 2 FLOP at {peak:.0f} GFLOP/s)",
            f"{floor_s:.2f} s",
        )
        row(
            f"search (k = {a.k}) vs matmul / vs floor",
            f"{search_s / matmul_s:.2f}x / {search_s / floor_s:.1f}x",
        )
        row("exact-rank evaluation path (all distractors vs 70 x 5,000 scores)", f"{rank_s:.2f} s")
        row(
            f"peak memory loading + searching (incl. the bench's own {gib:.1f} GiB copy)",
            f"{search_peak / GIB:.2f} GiB",
        )
        self.save("flat", {"search_k100_s": search100_s, "search_s": search_s})

    def recall(self) -> None:
        a = self.args
        q = self.q
        exact = np.load(join(self.work, "exact100.npy"))
        flat = ShardedIndex.load(join(self.work, "flat"))
        exact_s, _ = timed(lambda: flat.search(q, 100))
        flat.close()
        print(f"# exact search (Flat, {a.shards} shards), 70 queries, k = 100: {exact_s:.3f} s")
        header(
            "factory", "build s (peak GiB)", "index GiB", "nprobe", "k_factor",
            "recall@1", "recall@10", "recall@100", "search ms (70 q, k = 100)", "vs exact",
        )  # fmt: skip
        results = []
        for factory in a.factories:
            name = factory.replace(",", "_").replace("(", "").replace(")", "")
            out = join(self.work, f"idx-{name}")
            shutil.rmtree(out, ignore_errors=True)
            baseline = self.ray()
            cfg = IndexBuildConfig(factory=factory, shards=a.shards, train_size=a.train_size)
            with PeakMemory() as mem:
                t = time.perf_counter()
                build_index(self.desc, out, cfg)
                build_s = time.perf_counter() - t
            ray.shutdown()
            peak, size = (mem.peak - baseline) / GIB, dir_bytes(out) / GIB
            index = ShardedIndex.load(out)
            refined = "Refine" in factory or "RFlat" in factory
            for nprobe, kf in a.settings:
                if kf > 1 and not refined:
                    continue
                params = SearchParams(nprobe=nprobe, k_factor=kf)
                s, found = timed(lambda index=index, params=params: index.search(q, 100, params))
                r = [recall_at(found.ids, exact, k) for k in (1, 10, 100)]
                results.append(dict(factory=factory, nprobe=nprobe, k_factor=kf, recall=r, s=s))
                row(
                    f"`{factory}`", f"{build_s:.0f} ({peak:.2f})", f"{size:.2f}", nprobe,
                    kf if refined else "-", *(f"{v:.3f}" for v in r), f"{s * 1000:.0f}",
                    f"{s / exact_s:.2f}x",
                )  # fmt: skip
            del index
            if not a.keep:
                shutil.rmtree(out)
        self.save("recall", {"exact_s": exact_s, "rows": results})

    def incremental(self) -> None:
        a = self.args
        cfg = IndexBuildConfig(
            factory=a.factory, shards=a.shards, train_size=a.train_size,
            nprobe=a.nprobe, k_factor=a.k_factor,
        )  # fmt: skip
        desc, out = join(self.work, "desc-incremental"), join(self.work, "incremental")
        shutil.copytree(self.desc, desc, dirs_exist_ok=True)
        self.ray()
        t = time.perf_counter()
        build_index(desc, out, cfg)
        base_s = time.perf_counter() - t
        for name in os.listdir(join(self.work, "new")):
            shutil.copy(join(self.work, "new", name), join(desc, name))
        t = time.perf_counter()
        inc = build_index(desc, out, cfg)
        inc_s = time.perf_counter() - t
        if inc.kind != "incremental":
            raise RuntimeError(f"expected an incremental build: {inc}")
        t = time.perf_counter()
        full = build_index(desc, join(self.work, "full"), cfg)
        full_s = time.perf_counter() - t
        ray.shutdown()
        # The exact top-100 of all 1.1M: within the first 1M's top-100 and the new rows.
        n, q = a.vectors + FILE_ROWS, self.q
        top = ShardedIndex.load(join(self.work, "flat")).search(q, 100)
        scores = np.concatenate([top.scores, q @ self.model.rows(a.vectors, n).T], 1)
        ids = np.concatenate([top.ids, np.arange(a.vectors, n)[None].repeat(len(q), 0)], 1)
        exact = np.take_along_axis(ids, np.argsort(-scores, 1, kind="stable")[:, :100], 1)
        r_inc = recall_at(ShardedIndex.load(out).search(q, 100).ids, exact, 100)
        r_full = recall_at(
            ShardedIndex.load(join(self.work, "full")).search(q, 100).ids, exact, 100
        )
        print(f"# {a.factory}, {a.shards} shards, nprobe {a.nprobe}, k_factor {a.k_factor}")
        header("build", "vectors added", "seconds", "recall@100 vs exact")
        row(f"first full build, {a.vectors:,}", f"{a.vectors:,}", f"{base_s:.1f}", "")
        row("incremental: +10% (one new file)", f"{inc.added:,}", f"{inc_s:.1f}", f"{r_inc:.3f}")
        row(f"full rebuild of the same {n:,}", f"{full.added:,}", f"{full_s:.1f}", f"{r_full:.3f}")
        print(f"# incremental / full time: {inc_s / full_s:.2f} ({full_s / inc_s:.1f}x faster)")
        self.save("incremental", dict(base_s=base_s, inc_s=inc_s, full_s=full_s, r_inc=r_inc))
        for path in ("incremental", "full", "desc-incremental"):
            shutil.rmtree(join(self.work, path))

    def distributed(self) -> None:
        a = self.args
        out, q = join(self.work, "flat"), self.q
        local = ShardedIndex.load(out)
        local_s, want = timed(lambda: local.search(q, 100))
        local_k_s, _ = timed(lambda: local.search(q, a.k))
        local.close()
        self.ray()
        serving = ServingConfig(actors=a.actors, cpus_per_actor=2 / a.actors, overhead_bytes=0)
        with DistributedIndex.start(out, serving=serving) as served:
            spread_s, got = timed(lambda: served.search(q, 100))
            spread_k_s, _ = timed(lambda: served.search(q, a.k))
            memory = served.memory()
        ray.shutdown()
        same = (
            np.array_equal(got.ids, want.ids)
            and np.array_equal(got.scores, want.scores)
            and got.keys == want.keys
        )
        print(f"# identical answers (ids, scores, keys) to the single-process search: {same}")
        header("search, 70 queries", "one process", f"{a.actors} actors")
        row("k = 100", f"{local_s:.2f} s", f"{spread_s:.2f} s")
        row(f"k = {a.k}", f"{local_k_s:.2f} s", f"{spread_k_s:.2f} s")
        header(
            "actor", "shards", "shard files GiB", "RSS before loading GiB",
            "RSS after loading + searching GiB", "RSS - shard files GiB",
        )  # fmt: skip
        for i, m in enumerate(memory):
            row(
                i, m.shards, f"{m.shard_bytes / GIB:.3f}", f"{m.rss_before_load / GIB:.3f}",
                f"{m.rss / GIB:.3f}", f"{(m.rss - m.shard_bytes) / GIB:.3f}",
            )  # fmt: skip
        self.save("distributed", {"same": same, "memory": [m.__dict__ for m in memory]})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part",
        required=True,
        choices=["data", "flat", "recall", "incremental", "distributed", "clean"],
    )
    p.add_argument("--workdir", default="/tmp/glam-bench-index")
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=70)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--factories", nargs="+", default=list(FACTORIES))
    add_settings_argument(p, SETTINGS)
    p.add_argument("--keep", action="store_true", help="keep the recall part's indexes")
    p.add_argument("--factory", default="IVF1024,PQ64x4fs,Refine(SQ8)", help="incremental part")
    p.add_argument("--nprobe", type=int, default=64)
    p.add_argument("--k-factor", type=int, default=8)
    p.add_argument("--actors", type=int, default=2)
    args = p.parse_args()
    if args.part == "clean":
        shutil.rmtree(args.workdir, ignore_errors=True)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    print(f"# {args.part}: {args.vectors} x {DIM}, torch threads {torch.get_num_threads()}")
    getattr(Bench(args), args.part)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
