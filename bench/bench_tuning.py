"""Search tuning (``build_index --target-recall``) and ``--factory auto`` on two generated
distributions of 512-d descriptors, with held-out queries the tuner never sees.

- ``graded``: the bench's generator (``bench/descriptors.py``): landmarks inside scene
  categories, so each query's top-100 falls off gradually;
- ``flat``: tight clusters (20% of the vectors, ~8 each) among unrelated vectors drawn from the
  same anisotropic space: past a query's few cluster mates, its top-100 is a flat tail.

Parts:

- ``tune``: per distribution, one build with ``--factory auto`` (no tuning: the build time),
  then for each target R a version that only re-tunes (an incremental build with no new
  files: its time is the tuning's); per R the chosen setting, its recall@100 on 500 unseen
  queries, its search time against exact search (``flat_topk``, what Flat shards run), the
  tuning's share of the build time, and the index's memory;
- ``crossover``: per N, exact search time against the IVF ``auto`` would pick, tuned to 0.95
  (``flat_below`` 0 forces it): where the IVF gets faster, ``auto`` stops picking Flat.

    .venv/bin/python bench/bench_tuning.py --part tune --n 200000
    .venv/bin/python bench/bench_tuning.py --part crossover --sizes 20000 50000 100000 200000
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
import torch
from descriptors import DescriptorModel

from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.search import ShardedIndex
from pipeline.index.shard import flat_topk
from pipeline.index.tuning import recalls
from pipeline.index.tuning_record import RecallTarget
from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
from pipeline.io.storage import join, write_bytes_atomic

DIM = 512
UNSEEN = 500
K = 100


def flat_tails(n: int, seed: int) -> np.ndarray:
    """20% of the vectors in clusters of ~8 (cosine ~0.8 to their centre), 80% unrelated;
    all drawn in the bench generator's anisotropic space."""
    model = DescriptorModel()
    rng = np.random.default_rng([seed, 1])
    centres = torch.nn.functional.normalize(model._draw(np.random.default_rng(7), n // 40), dim=1)
    x = model._draw(rng, n)
    clustered = rng.random(n) < 0.2
    which = torch.from_numpy(rng.integers(0, len(centres), int(clustered.sum())))
    noise = model._draw(rng, int(clustered.sum())) * 0.75
    x[torch.from_numpy(clustered)] = centres[which] + noise
    return torch.nn.functional.normalize(x, dim=1).numpy()


def generate(distribution: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indexed vectors (n, d), unseen queries of the same distribution)."""
    if distribution == "graded":
        model = DescriptorModel()
        return model.rows(0, n), model.rows(n, n + UNSEEN)  # rows past n: never indexed
    data = flat_tails(n + UNSEEN, seed=0)
    return data[:n], data[n:]


def write_files(folder: str, x: np.ndarray, files: int) -> None:
    meta = file_metadata(
        fingerprint(ExtractionSpec(), {"backbone": "resnet101", "dim": DIM}, "0" * 64), "bench"
    )
    for f, part in enumerate(np.array_split(x, files)):
        keys = [f"d{f:02d}_{i:07d}" for i in range(len(part))]
        table = descriptor_table(keys, "bench", part, [1] * len(part), [1] * len(part), meta)
        write_bytes_atomic(join(folder, f"part-{f:06d}.parquet"), parquet_bytes(table))


def best_of(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def index_bytes(out: str, version: str) -> int:
    return sum(
        p.stat().st_size for p in Path(out, version).glob("*.faiss") if "trained" not in p.name
    )


def tune(args: argparse.Namespace, work: str) -> None:
    print(
        "| data | R | factory | nprobe | k_factor | tuned recall@100 | unseen recall@100 | "
        "search ms/query | exact ms/query | tuning s | build s | tuning share | index GiB |"
    )
    print("| --- " * 13 + "|")
    for distribution in args.distributions:
        x, unseen = generate(distribution, args.n)
        truth = flat_topk(unseen, x, K)[1]
        exact_s = best_of(lambda: flat_topk(unseen, x, K)) / UNSEEN  # noqa: B023
        desc, out = join(work, distribution, "desc"), join(work, distribution, "index")
        write_files(desc, x, args.files)
        base = IndexBuildConfig(
            factory=args.factory,
            shards=args.shards,
            max_index_memory=args.max_index_memory,
            flat_below=args.flat_below,
        )
        t = time.perf_counter()
        build_index(desc, out, base)
        build_s = time.perf_counter() - t
        for r in args.targets:
            cfg = IndexBuildConfig(
                factory=args.factory,
                shards=args.shards,
                max_index_memory=args.max_index_memory,
                flat_below=args.flat_below,
                target=RecallTarget(r, K, args.queries),
            )
            result = build_index(desc, out, cfg)
            tuning = result.tuning
            assert tuning is not None
            index = ShardedIndex.load(out)
            found = index.search(unseen, K, tuning.params).ids
            seen = recalls(found, truth, K).mean()
            search_s = best_of(lambda: index.search(unseen, K, tuning.params)) / UNSEEN  # noqa: B023
            c = tuning.chosen
            print(
                f"| {distribution} | {r:g} | `{index.manifest.factory}` | {c.nprobe} | "
                f"{c.k_factor} | {c.recall_at_k:.3f}{'' if tuning.reached else ' (not reached)'} "
                f"| {seen:.3f} | {1e3 * search_s:.2f} | {1e3 * exact_s:.2f} | "
                f"{tuning.seconds:.1f} | {build_s:.1f} | {tuning.seconds / build_s:.0%} | "
                f"{index_bytes(out, index.manifest.shard_version(0)) / 2**30:.2f} |",
                flush=True,
            )
            if args.curve and r == args.targets[0]:
                for p in tuning.curve:
                    print(
                        f"|   curve | | | {p.nprobe} | {p.k_factor} | {p.recall_at_k:.3f} "
                        f"(@1 {p.recall_at_1:.3f}, @10 {p.recall_at_10:.3f}) | | "
                        f"{1e3 * p.seconds_per_query:.2f} | | | | | |"
                    )


def crossover(args: argparse.Namespace, work: str) -> None:
    print("| N | exact ms/query | auto's IVF (flat_below 0) | nprobe | k_factor | ms/query |")
    print("| --- " * 6 + "|")
    for n in args.sizes:
        x, unseen = generate("graded", n)
        exact_s = best_of(lambda: flat_topk(unseen, x, K)) / UNSEEN  # noqa: B023
        desc, out = join(work, f"n{n}", "desc"), join(work, f"n{n}", "index")
        write_files(desc, x, max(1, n // 100_000))
        cfg = IndexBuildConfig(
            factory="auto", shards=args.shards, flat_below=0, target=RecallTarget(0.95, K)
        )
        result = build_index(desc, out, cfg)
        assert result.tuning is not None
        params = result.tuning.params
        index = ShardedIndex.load(out)
        ivf_s = best_of(lambda: index.search(unseen, K, params)) / UNSEEN  # noqa: B023
        print(
            f"| {n} | {1e3 * exact_s:.2f} | `{result.factory}` | {params.nprobe} | "
            f"{params.k_factor} | {1e3 * ivf_s:.2f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["tune", "crossover"], required=True)
    p.add_argument("--n", type=int, default=200_000, help="vectors indexed (tune)")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--factory", default="auto")
    p.add_argument("--max-index-memory", type=int, default=None)
    p.add_argument(
        "--flat-below", type=int, default=0, help="auto's Flat threshold (0: always an IVF)"
    )
    p.add_argument("--queries", type=int, default=300, help="the tuner's held-out queries")
    p.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    p.add_argument("--distributions", nargs="+", default=["graded", "flat"])
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000, 200_000])
    p.add_argument("--curve", action="store_true", help="print the first target's curve")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, deleted")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-tuning-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        (tune if args.part == "tune" else crossover)(args, work)
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
