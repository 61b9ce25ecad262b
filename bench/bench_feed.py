"""Feed rate: how many images/s the extraction data path can hand a GPU, per actor.

The real ``ShardWorker`` (streaming reader, decode threads, size buckets, uint8 batches,
pipelined shards, Parquet, commit markers) with the model replaced by a no-op stand-in (bench
only: it stacks each batch, the host's share of staging it for the device, and returns unit
vectors). On a GPU node the normalisation, scales and model run on the device, so what this
measures is what the actor's CPUs can feed. Against it: one thread doing the decode of the
earlier data path (PIL decode, RGB, resize, float tensor normalised on the host, no draft).

    .venv/bin/python bench/bench_feed.py [--part small|medium|large|all] [--shards 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import photo_shards

from glam import ExtractConfig, GlamExtractor, build_glam, decode_image, preprocess
from glam.extract import Pixels
from pipeline.extract.spec import ExtractionSpec
from pipeline.extract.stats import STAGES, ShardStats
from pipeline.extract.worker import ShardWorker
from pipeline.io.shard_reader import iter_shard

T = TypeVar("T")
GPU_RATE = 450  # images/s one GPU takes at three scales and 1024 px (docs/architecture.md)


class NoModel(GlamExtractor):
    """Bench only: GLAM replaced by a no-op that still takes every batch off the host."""

    def stream(
        self, batches: Iterable[tuple[T, Sequence[Pixels]]]
    ) -> Iterator[tuple[T, torch.Tensor]]:
        dim = self.model.config.dim
        for tag, images in batches:
            self._stage(images)  # the host's work on a batch: one copy (into pinned memory)
            d = torch.zeros(len(images), dim)
            d[:, 0] = 1.0
            yield tag, d


def feed_rate(
    shards: list[str], spec: ExtractionSpec, workers: int, stand_in: NoModel, repeats: int
) -> tuple[float, list[ShardStats]]:
    """images/s of one actor's worker over ``shards`` (two in flight, as the actor runs them),
    after a warm-up shard; the best of ``repeats`` passes (the shared VM's noise only slows),
    with that pass's shard stats."""
    torch.set_num_threads(workers)
    worker = ShardWorker(spec, device="cpu", name="bench", cpus=workers, extractor=stand_in)
    out = tempfile.mkdtemp(prefix="glam-feed-out-")
    best: tuple[float, list[ShardStats]] = (0.0, [])
    try:
        worker.process(shards[0], out)  # warm-up: threads, allocations, page cache
        for _ in range(repeats):
            t = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                stats = list(pool.map(lambda s: worker.process(s, out), shards[1:]))
            elapsed = time.perf_counter() - t
            assert all(s.committed for s in stats), [s.error for s in stats]
            best = max(best, (sum(s.samples for s in stats) / elapsed, stats), key=lambda b: b[0])
    finally:
        worker.close()
        shutil.rmtree(out)
    return best


def earlier_decode_rate(shards: list[str], image_size: int, repeats: int) -> float:
    """images/s of one thread reading the shards and decoding as the earlier path did (the
    best of ``repeats`` passes)."""
    torch.set_num_threads(1)
    best = 0.0
    for _ in range(repeats):
        n, t = 0, time.perf_counter()
        for uri in shards[1:]:
            for raw in iter_shard(uri):
                preprocess(decode_image(raw.members["jpg"]), image_size)
                n += 1
        best = max(best, n / (time.perf_counter() - t))
    return best


def part(
    name: str, size: tuple[int, int], shards: list[str], stand_in: NoModel, repeats: int
) -> None:
    today = earlier_decode_rate(shards, 1024, repeats)
    rates, stats = {}, {}
    for draft in (False, True):
        spec = ExtractionSpec(image_size=1024, batch_size=8, jpeg_draft=draft)
        for workers in (1, 2):
            rates[draft, workers], stats[draft, workers] = feed_rate(
                shards, spec, workers, stand_in, repeats
            )
    images = sum(1 for s in shards[1:] for _ in iter_shard(s))
    print(f"\n## {name}: {size[0]}x{size[1]} JPEGs, {images} images measured")
    print("| path | decode threads | images/s | vs earlier decode, 1 thread |")
    print("| --- | --- | --- | --- |")
    print(f"| earlier decode (float tensors, full decode) | 1 | {today:.1f} | 1.00 |")
    for (draft, workers), r in rates.items():
        mode = "draft" if draft else "full"
        print(f"| data path, {mode} decode, no-op model | {workers} | {r:.1f} | {r / today:.2f} |")
    for draft in (False, True):
        mode = "draft" if draft else "full"
        print(f"- 2 vs 1 decode threads, {mode}: {rates[draft, 2] / rates[draft, 1]:.2f}x")
    for workers in (1, 2):
        gain = rates[True, workers] / rates[False, workers]
        print(f"- draft vs full, {workers} thread(s): {gain:.2f}x")
    default = rates[True, 2]  # the defaults: draft on, a thread per core
    print(f"- whole data path on 2 cores (defaults) vs earlier decode: {default / today:.2f}x")
    n = sum(st.samples for st in stats[True, 2])
    per = {k: 1000 * sum(getattr(st, f"{k}_s") for st in stats[True, 2]) / n for k in STAGES}
    print(
        f"- per image, 2 threads (defaults), seconds each thread spent: decode {per['decode']:.2f}"
        f" ms (decode threads), compute thread {per['infer']:.2f} ms (batching, the batch copy)"
        f" + {per['wait']:.2f} ms waiting, reader {per['read']:.2f} ms, commit {per['write']:.2f}"
        " ms"
    )
    per_core = rates[True, 1]
    print(
        f"- per-core feed rate (draft, 1 thread): {per_core:.1f} images/s; one GPU at "
        f"{GPU_RATE} images/s needs {GPU_RATE / per_core:.1f} cores "
        f"({GPU_RATE / (default / 2):.1f} at the 2-thread rate per core)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("small", "medium", "large", "all"), default="all")
    p.add_argument("--shards", type=int, default=3, help="measured shards (plus one warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="passes per figure; the best counts")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="glam-feed-")
    stand_in = NoModel(build_glam(seed=0), ExtractConfig(image_size=1024), device="cpu")
    print(
        f"# torch {torch.__version__}; the model replaced by a no-op; shards on local disk; "
        f"best of {args.repeats} passes per figure"
    )
    try:
        if args.part in ("small", "all"):
            size = (1024, 768)
            shards = photo_shards(f"{root}/small", args.shards + 1, 96, size, distinct=16)
            part("small", size, shards, stand_in, args.repeats)
        if args.part in ("medium", "all"):
            size = (2048, 1536)
            shards = photo_shards(f"{root}/medium", args.shards + 1, 32, size, distinct=8)
            part("3 MP", size, shards, stand_in, args.repeats)
        if args.part in ("large", "all"):
            size = (4000, 3000)
            shards = photo_shards(f"{root}/large", args.shards + 1, 12, size, distinct=6)
            part("12 MP", size, shards, stand_in, args.repeats)
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
