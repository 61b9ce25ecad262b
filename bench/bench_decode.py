"""Decode design choices, measured: threads vs processes vs Ray tasks feeding an actor through
the object store; and what the JPEG draft (DCT-domain) decode costs in descriptor quality.

``--part designs``: the extraction's decode (``decode_sample``: PIL, RGB, resize, uint8) of
1024x768 photo-like JPEGs on 1 and 2 threads, on 2 processes (the images pickled back), and as
Ray tasks whose decoded chunks an actor takes from the object store (the Ray Data shape:
CPU decode stage -> GPU actor), all on this machine's cores.

``--part draft``: photo-like JPEGs of 4000x3000 and 3000x2250 decoded fully and in draft (and
2048x1536 drafted down to 1024 px, a floor the pipeline does not use, for comparison); the
cosine of their GLAM descriptors (three scales, 1024 px), the PSNR of the 1024-px images the
model sees, and the decode time of each; then where a 12 MP decode's time goes.

    .venv/bin/python bench/bench_decode.py [--part designs|draft|all]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import photo_jpegs

from pipeline.extract.decode import DecodedSample, decode_sample
from pipeline.io.shard_reader import RawSample

SIZE = 1024
DRAFT_SIDE = round(SIZE * 2**0.5)  # the largest default scale's side


def decode_chunk(chunk: Sequence[tuple[int, bytes]]) -> list[np.ndarray]:
    """Decode as the extraction does; the pixels (a plain array: it crosses a process)."""
    out = []
    for i, data in chunk:
        item = decode_sample(i, RawSample(str(i), {"jpg": data}), SIZE, 10**9, DRAFT_SIDE)
        assert isinstance(item, DecodedSample)
        out.append(np.ascontiguousarray(item.image))
    return out


def pool_rate(make: Callable[[], Executor], jpegs: list[bytes], n: int, chunk: int) -> float:
    chunks = [[(i, jpegs[i % len(jpegs)]) for i in range(s, s + chunk)] for s in range(0, n, chunk)]
    with make() as pool:
        list(pool.map(decode_chunk, chunks[:4]))  # start the workers
        t = time.perf_counter()
        done = sum(len(x) for x in pool.map(decode_chunk, chunks))
        return done / (time.perf_counter() - t)


def object_store_rate(jpegs: list[bytes], n: int, chunk: int) -> float:
    """Ray tasks decode chunks; an actor (the GPU actor's place) takes them from the object
    store in order, at most 4 chunks ahead, on a 2-CPU local cluster."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        decode = ray.remote(num_cpus=1)(decode_chunk)

        @ray.remote(num_cpus=0)
        class Consumer:
            def take(self, refs: list[ray.ObjectRef]) -> int:
                return sum(len(ray.get(r)) for r in refs)

        consumer = Consumer.remote()
        chunks = [
            [(i, jpegs[i % len(jpegs)]) for i in range(s, s + chunk)] for s in range(0, n, chunk)
        ]
        ray.get(decode.remote(chunks[0]))  # start the workers
        t = time.perf_counter()
        done, in_flight = 0, []
        for c in chunks:
            in_flight.append(decode.remote(c))
            if len(in_flight) >= 4:
                done += ray.get(consumer.take.remote([in_flight.pop(0)]))
        done += ray.get(consumer.take.remote(in_flight))
        return done / (time.perf_counter() - t)
    finally:
        ray.shutdown()


def designs() -> None:
    jpegs = photo_jpegs((1024, 768), 16)
    n, chunk = 384, 8

    def processes() -> Executor:
        return ProcessPoolExecutor(2)

    one = pool_rate(lambda: ThreadPoolExecutor(1), jpegs, n, chunk)
    rows = [
        ("threads in the actor", 1, one),
        ("threads in the actor", 2, pool_rate(lambda: ThreadPoolExecutor(2), jpegs, n, chunk)),
        ("processes, pixels pickled back", 2, pool_rate(processes, jpegs, n, chunk)),
        ("Ray tasks -> object store -> actor", 2, object_store_rate(jpegs, n, chunk)),
    ]
    print(f"\n## decode designs: {n} photo-like 1024x768 JPEGs, chunks of {chunk}")
    print("| design | workers | images/s | vs 1 thread |")
    print("| --- | --- | --- | --- |")
    for name, workers, rate in rows:
        print(f"| {name} | {workers} | {rate:.1f} | {rate / one:.2f} |")


def draft_scale(size: tuple[int, int], side: int) -> str:
    """The DCT scale PIL's draft picks: the largest 1/2^k keeping the requested size."""
    from glam.preprocess import draft_request

    req = draft_request(size, side)
    k = 1
    while req and k < 8 and size[0] // (2 * k) >= req[0] and size[1] // (2 * k) >= req[1]:
        k *= 2
    return f"1/{k}" if k > 1 else "none"


def draft() -> None:
    import torch

    from glam import ExtractConfig, GlamExtractor, build_glam
    from glam.extract import resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    ex = GlamExtractor(build_glam(seed=0), ExtractConfig(precision=precision))
    print(f"\n## draft vs full decode: GLAM (random weights), 3 scales, {SIZE} px, {precision}")
    print(
        "| source | photos | draft scale | decode full ms | decode draft ms | speed-up "
        "| PSNR dB (min) | 1 - cosine, mean | 1 - cosine, max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, side in (
        ((4000, 3000), DRAFT_SIDE),
        ((3000, 2250), DRAFT_SIDE),
        ((2048, 1536), SIZE),
    ):
        jpegs = photo_jpegs(size, 6)
        cos, psnr, t_full, t_draft = [], [], 0.0, 0.0
        for i, data in enumerate(jpegs):
            raw = RawSample(str(i), {"jpg": data})
            t = time.perf_counter()
            full = decode_sample(i, raw, SIZE, 10**9, None)
            t_full += time.perf_counter() - t
            t = time.perf_counter()
            drafted = decode_sample(i, raw, SIZE, 10**9, side)
            t_draft += time.perf_counter() - t
            assert isinstance(full, DecodedSample) and isinstance(drafted, DecodedSample)
            a, b = full.image[..., :3].astype(float), drafted.image[..., :3].astype(float)
            psnr.append(10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-12)))
            d = ex.extract_images([full.image, drafted.image])
            cos.append(float(d[0] @ d[1]))
        k = len(jpegs)
        print(
            f"| {size[0]}x{size[1]}{'' if side == DRAFT_SIDE else f', floor {side} px'} | {k} | "
            f"{draft_scale(size, side)} | {1000 * t_full / k:.0f} | "
            f"{1000 * t_draft / k:.0f} | {t_full / t_draft:.2f}x | {min(psnr):.1f} | "
            f"{1 - np.mean(cos):.1e} | {1 - min(cos):.1e} |"
        )


def decode_only() -> None:
    """Where a 12 MP JPEG's decode time goes: PIL's load at full, 1/2 and 1/4 DCT scale."""
    import io

    from PIL import Image

    data = photo_jpegs((4000, 3000), 1)[0]

    def load(size: tuple[int, int] | None) -> float:
        best = float("inf")
        for _ in range(4):
            t = time.perf_counter()
            img = Image.open(io.BytesIO(data))
            if size:
                img.draft(None, size)
            img.load()
            best = min(best, time.perf_counter() - t)
        return 1000 * best

    print(
        f"- decode alone, one {len(data) / 1e6:.1f} MB 4000x3000 JPEG: full {load(None):.0f} ms, "
        f"1/2 scale {load((2000, 1500)):.0f} ms, 1/4 scale {load((1000, 750)):.0f} ms"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("designs", "draft", "all"), default="all")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.part in ("designs", "all"):
        designs()
    if args.part in ("draft", "all"):
        draft()
        decode_only()
    return 0


if __name__ == "__main__":
    sys.exit(main())
