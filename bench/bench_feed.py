"""Feed rate: how many images/s the extraction data path can hand a GPU, per actor.

The real ``ShardWorker`` (streaming reader, decode threads, size buckets, uint8 batches,
pipelined shards, Parquet, commit markers) with the model replaced by a no-op stand-in (bench
only: it stages each batch on its device, as the model's own staging does, and returns unit
vectors). On a GPU node the normalisation, scales and model run on the device, so what this
measures is what the actor's CPUs can feed. Against it: one thread doing the decode of the
earlier data path (PIL decode, RGB, resize, float tensor normalised on the host, no draft).

``--decode`` picks the worker's decode as ``jobs/extract.py --decode`` does (the spec's
``decode``): ``cpu`` (default), PIL in the decode threads, full and draft; ``gpu``, the
pipeline's device decode (``pipeline.extract.gpu_decode``: JPEGs batched through nvjpeg,
oriented and resized on the device, the rest on the CPU), the stand-in on that GPU. Without
CUDA ``--decode gpu`` exits 2 with one line: the worker would decode on the CPU instead, and a
CPU figure is not to be reported as a device one.

    .venv/bin/python bench/bench_feed.py [--part small|medium|large|all] [--shards 3] [--repeats 3]
        [--decode cpu|gpu]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

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


Decode = Literal["cpu", "gpu"]
DECODE_PATHS: dict[Decode, str] = {
    "cpu": "PIL in the decode threads",
    "gpu": "JPEGs batched through nvjpeg, oriented and resized on the device, the rest on the CPU",
}


class NoModel(GlamExtractor):
    """Bench only: GLAM replaced by a no-op that still stages every batch on its device (host
    images: one copy, into pinned memory on CUDA; device-decoded ones: stacked there)."""

    def stream(
        self, batches: Iterable[tuple[T, Sequence[Pixels]]]
    ) -> Iterator[tuple[T, torch.Tensor]]:
        dim = self.model.config.dim
        for tag, images in batches:
            x = self._stage(images)  # (B, H, W, 3|4) uint8 on the device
            if x.is_cuda:  # the batch is there before the next is taken, as the model waits
                torch.cuda.current_stream(x.device).synchronize()
            d = torch.zeros(len(images), dim)
            d[:, 0] = 1.0
            yield tag, d


@dataclass(frozen=True)
class Feed:
    """What the measured worker decodes with (``ExtractionSpec.decode``) and the device its
    stand-in model stages the batches on."""

    decode: Decode
    stand_in: NoModel

    @property
    def device(self) -> torch.device:
        return self.stand_in.device

    @property
    def where(self) -> str:
        """The device in words, e.g. ``cuda:0 (NVIDIA H200)`` or ``cpu (x86_64)``."""
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return f"{self.device} ({platform.processor() or platform.machine()})"


def feed_rate(
    shards: list[str], spec: ExtractionSpec, workers: int, feed: Feed, repeats: int
) -> tuple[float, list[ShardStats]]:
    """images/s of one actor's worker over ``shards`` (two in flight, as the actor runs them),
    after a warm-up shard; the best of ``repeats`` passes (the shared VM's noise only slows),
    with that pass's shard stats."""
    torch.set_num_threads(workers)
    worker = ShardWorker(
        spec, device=str(feed.device), name="bench", cpus=workers, extractor=feed.stand_in
    )
    if worker.decode != spec.decode:  # the worker's fallback: never report it under --decode
        worker.close()
        raise RuntimeError(f"asked --decode {spec.decode}, the worker decodes {worker.decode}")
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


def mode(feed: Feed, draft: bool) -> str:
    """The decode a row measured: ``device`` (--decode gpu), else ``draft`` or ``full``."""
    return "device" if feed.decode == "gpu" else "draft" if draft else "full"


def part(name: str, size: tuple[int, int], shards: list[str], feed: Feed, repeats: int) -> None:
    today = earlier_decode_rate(shards, 1024, repeats)
    # Draft decode only changes the samples decoded on the CPU: with --decode gpu the default.
    drafts = (False, True) if feed.decode == "cpu" else (True,)
    rates, stats = {}, {}
    for draft in drafts:
        spec = ExtractionSpec(image_size=1024, batch_size=8, jpeg_draft=draft, decode=feed.decode)
        for workers in (1, 2):
            rates[draft, workers], stats[draft, workers] = feed_rate(
                shards, spec, workers, feed, repeats
            )
    images = sum(1 for s in shards[1:] for _ in iter_shard(s))
    where = feed.where
    print(f"\n## {name}: {size[0]}x{size[1]} JPEGs, {images} images measured")
    print("| path | decode | device | decode threads | images/s | vs earlier decode, 1 thread |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| earlier decode (float tensors, full decode) | cpu | cpu | 1 | {today:.1f} | 1.00 |")
    for (draft, workers), r in rates.items():
        print(
            f"| data path, {mode(feed, draft)} decode, no-op model | {feed.decode} | {where} "
            f"| {workers} | {r:.1f} | {r / today:.2f} |"
        )
    for draft in drafts:
        ratio = rates[draft, 2] / rates[draft, 1]
        print(f"- 2 vs 1 decode threads, {mode(feed, draft)}: {ratio:.2f}x")
    if feed.decode == "cpu":
        for workers in (1, 2):
            gain = rates[True, workers] / rates[False, workers]
            print(f"- draft vs full, {workers} thread(s): {gain:.2f}x")
    else:
        on_device = sum(st.device_decoded for st in stats[True, 2])
        measured = sum(st.samples for st in stats[True, 2])
        print(
            f"- decoded on {where}: {on_device} of {measured} images (2 threads; the rest "
            "on the CPU path)"
        )
    default = rates[True, 2]  # the defaults: draft on, a thread per core
    print(
        f"- whole data path on 2 cores (defaults, --decode {feed.decode}) vs earlier decode: "
        f"{default / today:.2f}x"
    )
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
        f"- per-core feed rate ({mode(feed, True)} decode, 1 thread): {per_core:.1f} images/s; "
        f"one GPU at {GPU_RATE} images/s needs {GPU_RATE / per_core:.1f} cores "
        f"({GPU_RATE / (default / 2):.1f} at the 2-thread rate per core)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("small", "medium", "large", "all"), default="all")
    p.add_argument("--shards", type=int, default=3, help="measured shards (plus one warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="passes per figure; the best counts")
    p.add_argument(
        "--decode",
        choices=("cpu", "gpu"),
        default="cpu",
        help="the worker's decode, as jobs/extract.py --decode: cpu (default), PIL in the decode "
        "threads; gpu, the pipeline's device decode (nvjpeg) on this host's CUDA device",
    )
    args = p.parse_args()
    if args.decode == "gpu" and not torch.cuda.is_available():
        print(
            "bench_feed.py: --decode gpu needs a CUDA device and torch sees none "
            "(torch.cuda.is_available() is False); the pipeline would decode on the CPU",
            file=sys.stderr,
        )
        return 2
    device = f"cuda:{torch.cuda.current_device()}" if args.decode == "gpu" else "cpu"
    stand_in = NoModel(build_glam(seed=0), ExtractConfig(), device=device)
    feed = Feed(args.decode, stand_in)
    root = tempfile.mkdtemp(prefix="glam-feed-")
    print(
        f"# torch {torch.__version__}; decode {feed.decode} ({DECODE_PATHS[feed.decode]}) on "
        f"{feed.where}; the model replaced by a no-op; shards on local disk; best of "
        f"{args.repeats} passes per figure"
    )
    try:
        if args.part in ("small", "all"):
            size = (1024, 768)
            shards = photo_shards(f"{root}/small", args.shards + 1, 96, size, distinct=16)
            part("small", size, shards, feed, args.repeats)
        if args.part in ("medium", "all"):
            size = (2048, 1536)
            shards = photo_shards(f"{root}/medium", args.shards + 1, 32, size, distinct=8)
            part("3 MP", size, shards, feed, args.repeats)
        if args.part in ("large", "all"):
            size = (4000, 3000)
            shards = photo_shards(f"{root}/large", args.shards + 1, 12, size, distinct=6)
            part("12 MP", size, shards, feed, args.repeats)
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
