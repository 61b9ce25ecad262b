"""Helpers shared by the benchmarks: the machine's matmul peak and FLOP counting."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured matmul peak in ``dtype`` on the CPU, in GFLOP/s.

    The best of two GEMM engines torch uses: ``torch.mm`` (MKL/oneDNN BLAS) on n x n x n, and a
    1x1 convolution (oneDNN's GEMM) of n -> n channels over 64 x 64 positions. On the 2-core
    development machine fp32 ``torch.mm`` reaches only ~220 GFLOP/s while oneDNN's GEMM reaches
    ~450, so taking the best keeps MFU figures honest (below 100%).
    """
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    mm_rate = 2 * n**3 / best_seconds(lambda: a @ b, repeats, warmup=2) / 1e9
    conv = torch.nn.Conv2d(n, n, 1, bias=False).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(1, n, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv_rate = 2 * n * n * 64 * 64 / best_seconds(lambda: conv(x), repeats, warmup=2) / 1e9
    return max(mm_rate, conv_rate)


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` as torch's FlopCounterMode counts them (2 per MAC)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def photo_jpegs(size: tuple[int, int], count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` distinct photo-like JPEGs (``pipeline.datasets.synthetic.photo``) of ``size``,
    cached under the temp folder: a 12 MP one takes seconds to generate."""
    import os
    import tempfile

    import numpy as np

    from pipeline.datasets.synthetic import encode, photo

    folder = os.path.join(tempfile.gettempdir(), "glam-bench-photos")
    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(count):
        path = os.path.join(folder, f"{size[0]}x{size[1]}-q{quality}-s{seed}-{i}.jpg")
        if not os.path.exists(path):
            data = encode(photo(np.random.default_rng([seed, i]), *size), quality=quality)
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def photo_shards(
    folder: str, n_shards: int, per_shard: int, size: tuple[int, int], distinct: int = 8
) -> list[str]:
    """WebDataset shards of photo-like JPEGs (``distinct`` different ones, repeated)."""
    from pipeline.io.shard_writer import tar_bytes
    from pipeline.io.storage import join, write_bytes_atomic

    photos = photo_jpegs(size, distinct)
    uris = []
    for s in range(n_shards):
        samples = [
            (f"s{s:06d}_{i:05d}", {"jpg": photos[(s * per_shard + i) % distinct]})
            for i in range(per_shard)
        ]
        uri = join(folder, f"{s:06d}.tar")
        write_bytes_atomic(uri, tar_bytes(samples))
        uris.append(uri)
    return uris
