"""Ten million generated 512-d descriptors on one 24 GiB machine: 20 GB of float32 never sits in
memory at once. Built and searched shard by shard (1M vectors per shard), the descriptors
generated per shard from seeds (``bench/descriptors.py``); the approximate index reads each
shard's vectors back from the Flat shard on local disk instead of generating them again.

Parts, each short enough for one hold of the exclusive lock (the indexes stay in --workdir):

- ``build-flat [--first S --last S]``: Flat shards (generate, add, write), manifest at the end;
- ``search-flat``: exact search of 70 queries (k = 100), one shard in memory at a time; saves
  the exact top-100;
- ``train``: the approximate factory trained on 200,000 vectors (the first rows: rows are drawn
  independently, so any rows are a uniform sample);
- ``build-approx [--first S --last S]``: approximate shards from the Flat shards' vectors;
- ``search-approx``: the approximate index in memory, recall and search time per setting;
- ``clean``: delete --workdir.

Every part prints its time and the peak resident memory of this process (sampled).

    flock -x /tmp/glam-machine.lock .venv/bin/python bench/bench_index_10m.py --part build-flat
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss
import numpy as np
import torch
from bench_index import GIB, add_settings_argument, header, recall_at, row, timed
from descriptors import BLOCK, DescriptorModel

from pipeline.index import gpu
from pipeline.index.build import TRAINED, IndexBuildConfig
from pipeline.index.merge import merge
from pipeline.index.search import ShardedIndex
from pipeline.index.search_config import SearchParams
from pipeline.index.shard_files import new_index, write_shard
from pipeline.index.versions import LATEST, IndexManifest, write_manifest
from pipeline.io.storage import join, write_bytes_atomic
from pipeline.runtime.memory import PeakMemory, rss_bytes

DIM = 512
VERSION = "bench-10m"
PARTS = ["build-flat", "search-flat", "train", "build-approx", "search-approx", "clean"]
SETTINGS = ((64, 8), (128, 8), (256, 8), (256, 16))


def batches(first_id: int, x: np.ndarray, rows: int = BLOCK):  # type: ignore[no-untyped-def]
    """write_shard's batches (ids, keys, sources, vectors) over ``x``, whose first id is given."""
    for start in range(0, len(x), rows):
        ids = np.arange(first_id + start, first_id + min(start + rows, len(x)), dtype=np.int64)
        yield ids, [f"g{i:08d}" for i in ids], ["generated"] * len(ids), x[start : start + rows]


def manifest(factory: str, counts: list[int], cfg: IndexBuildConfig) -> IndexManifest:
    return IndexManifest(
        version=VERSION,
        signature="bench",
        factory=factory,
        dim=DIM,
        metric="inner_product",
        shards=len(counts),
        shard_counts=counts,
        count=sum(counts),
        config=asdict(cfg),
        inputs=[],
        descriptor_model={"model": "generated"},
        created_at=datetime.now(UTC).isoformat(),
        faiss=faiss.__version__,
    )


def publish(output: str, factory: str, shards: int, rows: int, cfg: IndexBuildConfig) -> None:
    """Manifest and LATEST once every shard is written."""
    version_dir = join(output, VERSION)
    if all(os.path.exists(join(version_dir, f"shard-{s:05d}.faiss")) for s in range(shards)):
        write_manifest(output, manifest(factory, [rows] * shards, cfg))
        write_bytes_atomic(join(output, LATEST), VERSION.encode())
        print(f"# {output}: all {shards} shards written; manifest and LATEST published")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.workdir
        self.rows = args.shard_rows
        self.model = DescriptorModel()
        self.q = self.model.queries(args.queries)
        self.flat_dir = join(self.work, "flat")
        self.approx_dir = join(self.work, "approx")
        self.cfg = IndexBuildConfig(
            factory=args.factory, nprobe=args.nprobe, k_factor=args.k_factor
        )

    def save(self, part: str, values: dict) -> None:
        path = Path(self.work) / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results[part] = values
        path.write_text(json.dumps(results, indent=2))

    def shard_range(self) -> range:
        return range(self.args.first, min(self.args.last, self.args.shards - 1) + 1)

    def build_flat(self) -> None:
        gen_s = add_s = 0.0
        baseline = rss_bytes()

        def generated(s: int):  # type: ignore[no-untyped-def]
            """Shard s's batches, generated one block at a time while the index fills."""
            nonlocal gen_s
            for b in range(s * self.rows // BLOCK, (s + 1) * self.rows // BLOCK):
                t = time.perf_counter()
                x = self.model.block(b)
                gen_s += time.perf_counter() - t
                yield from batches(b * BLOCK, x)

        with PeakMemory() as mem:
            t = time.perf_counter()
            for s in self.shard_range():
                flat_dir = join(self.flat_dir, VERSION)
                write_shard(s, generated(s), faiss.IndexFlatIP(DIM), flat_dir, False)
                print(f"# flat shard {s}: generated + written ({time.perf_counter() - t:.0f}s)")
            add_s = time.perf_counter() - t - gen_s
        n = len(self.shard_range())
        cfg = IndexBuildConfig(shards=self.args.shards)
        publish(self.flat_dir, "Flat", self.args.shards, self.rows, cfg)
        header(f"Flat build, shards {self.shard_range()[0]}-{self.shard_range()[-1]}", "value")
        row("vectors", f"{n * self.rows:,}")
        row("generate the descriptors", f"{gen_s:.0f} s")
        row(
            "add + write shards and id tables (local disk)",
            f"{add_s:.0f} s ({add_s / n:.1f} s per 1M)",
        )
        row(
            "peak resident memory of the build (the process before it)",
            f"{mem.peak / GIB:.2f} GiB ({baseline / GIB:.2f} GiB); one shard "
            f"{self.rows * DIM * 4 / GIB:.2f} GiB",
        )
        self.save(
            f"build-flat-{self.args.first}",
            {"gen_s": gen_s, "add_s": add_s, "shards": n, "peak": mem.peak},
        )

    def search_flat(self) -> None:
        index = ShardedIndex.load(self.flat_dir, lazy=True)  # id tables only
        params = index.params
        load_s = search_s = 0.0
        candidates = []
        with PeakMemory() as mem:
            for shard in index.held:
                t = time.perf_counter()
                shard.attach(
                    faiss.read_index(
                        join(self.flat_dir, VERSION, f"shard-{shard.number:05d}.faiss")
                    )
                )
                load_s += time.perf_counter() - t
                t = time.perf_counter()
                candidates.append(shard.candidates(self.q, 100, params))
                search_s += time.perf_counter() - t
                shard.release()
            t = time.perf_counter()
            exact = merge(candidates, len(self.q), 100)
            search_s += time.perf_counter() - t
            t = time.perf_counter()
            again = index.search(self.q, 100)  # the library's lazy search, end to end
            lazy_s = time.perf_counter() - t
        assert np.array_equal(again.ids, exact.ids)
        np.save(join(self.work, "exact100.npy"), exact.ids)
        shards = len(index.held)
        header(f"exact search, {index.ntotal:,} in {shards} Flat shards, 70 q, k = 100", "value")
        row("read the shards from local disk (20 GB)", f"{load_s:.1f} s")
        row("search (matmul + top-k per shard, merge)", f"{search_s:.1f} s")
        row(
            "the library's lazy search end to end (ShardedIndex.load(lazy=True).search)",
            f"{lazy_s:.1f} s",
        )
        row("peak resident memory", f"{mem.peak / GIB:.2f} GiB")
        self.save(
            "search-flat",
            {"load_s": load_s, "search_s": search_s, "lazy_s": lazy_s, "peak": mem.peak},
        )

    def train(self) -> None:
        version_dir = join(self.approx_dir, VERSION)
        with PeakMemory() as mem:
            t = time.perf_counter()
            sample = self.model.rows(0, self.args.train_size)
            gen_s = time.perf_counter() - t
            t = time.perf_counter()
            index = faiss.index_factory(DIM, self.args.factory, faiss.METRIC_INNER_PRODUCT)
            gpu.train(index, sample, gpu.resolve_gpu(None))
            train_s = time.perf_counter() - t
            write_bytes_atomic(join(version_dir, TRAINED), faiss.serialize_index(index).tobytes())
        header(f"train `{self.args.factory}`", "value")
        row(f"generate {self.args.train_size:,} training vectors", f"{gen_s:.0f} s")
        row("train", f"{train_s:.0f} s")
        row("peak resident memory", f"{mem.peak / GIB:.2f} GiB")
        self.save("train", {"train_s": train_s, "peak": mem.peak})

    def build_approx(self) -> None:
        version_dir = join(self.approx_dir, VERSION)
        trained = Path(join(version_dir, TRAINED)).read_bytes()
        read_s = add_s = 0.0
        with PeakMemory() as mem:
            for s in self.shard_range():
                t = time.perf_counter()
                flat = faiss.read_index(join(self.flat_dir, VERSION, f"shard-{s:05d}.faiss"))
                x = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * DIM).reshape(flat.ntotal, DIM)
                read_s += time.perf_counter() - t
                t = time.perf_counter()
                index = new_index(DIM, self.args.factory, trained)
                write_shard(s, batches(s * self.rows, x), index, version_dir, gpu.resolve_gpu(None))
                add_s += time.perf_counter() - t
                del flat, x, index
                print(f"# approx shard {s}: {read_s + add_s:.0f}s so far")
        n = len(self.shard_range())
        publish(self.approx_dir, self.args.factory, self.args.shards, self.rows, self.cfg)
        header(
            f"build `{self.args.factory}`, shards {self.shard_range()[0]}-{self.shard_range()[-1]}",
            "value",
        )
        row("read the vectors back from the Flat shards", f"{read_s:.0f} s")
        row(
            "add (coarse assignment + encoding) + write",
            f"{add_s:.0f} s ({add_s / n:.1f} s per 1M)",
        )
        row("peak resident memory", f"{mem.peak / GIB:.2f} GiB")
        self.save(
            f"build-approx-{self.args.first}",
            {"read_s": read_s, "add_s": add_s, "shards": n, "peak": mem.peak},
        )

    def search_approx(self) -> None:
        exact = np.load(join(self.work, "exact100.npy"))
        size = sum(p.stat().st_size for p in Path(self.approx_dir).rglob("shard-*.faiss"))
        with PeakMemory() as mem:
            t = time.perf_counter()
            index = ShardedIndex.load(self.approx_dir)
            load_s = time.perf_counter() - t
            results = []
            for nprobe, kf in self.args.settings:
                params = SearchParams(nprobe=nprobe, k_factor=kf)
                s, found = timed(lambda params=params: index.search(self.q, 100, params), 2)
                results.append(
                    (nprobe, kf, [recall_at(found.ids, exact, k) for k in (1, 10, 100)], s)
                )
        print(
            f"# `{self.args.factory}`, {index.ntotal:,} vectors in {len(index.held)} shards, "
            f"{size / GIB:.2f} GiB of shard files, loaded in {load_s:.0f} s; "
            f"peak resident memory {mem.peak / GIB:.2f} GiB"
        )
        header(
            "nprobe",
            "k_factor",
            "recall@1",
            "recall@10",
            "recall@100",
            "search s (70 queries, k = 100)",
        )
        for nprobe, kf, r, s in results:
            row(nprobe, kf, *(f"{v:.3f}" for v in r), f"{s:.2f}")
        self.save(
            "search-approx", {"size": size, "load_s": load_s, "peak": mem.peak, "rows": results}
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", required=True, choices=PARTS)
    p.add_argument("--workdir", default="/tmp/glam-bench-10m")
    p.add_argument("--shards", type=int, default=10, help="shards (10)")
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="vectors per shard (1M)")
    p.add_argument("--first", type=int, default=0, help="first shard this part builds")
    p.add_argument("--last", type=int, default=9, help="last shard this part builds")
    p.add_argument("--queries", type=int, default=70)
    p.add_argument("--factory", default="IVF4096,PQ64x4fs,Refine(SQ8)")
    p.add_argument("--train-size", type=int, default=200_000)
    p.add_argument("--nprobe", type=int, default=128)
    p.add_argument("--k-factor", type=int, default=8)
    add_settings_argument(p, SETTINGS)
    args = p.parse_args()
    if args.part == "clean":
        shutil.rmtree(args.workdir, ignore_errors=True)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    print(f"# {args.part}: torch threads {torch.get_num_threads()}, faiss GPUs {gpu.gpu_count()}")
    bench = Bench(args)  # the descriptor model's centres and the queries, made
    print(f"# resident memory of the process before the part: {rss_bytes() / GIB:.2f} GiB")
    getattr(bench, args.part.replace("-", "_"))()
    return 0


if __name__ == "__main__":
    sys.exit(main())
