"""``--factory auto``: the FAISS factory for N vectors of dimension d within a memory budget,
chosen as autofaiss chooses (its ``get_optimal_index_keys_v2``): exact search while it is as
fast as the alternatives, else an IVF whose nlist grows with √N, fast-scan PQ codes, and a
refinement from stored copies whose memory fits the budget (the tuner then finds the search
setting that reaches the recall asked for).

NOTE: not in the issue, each configurable through ``FactoryPolicy``: nlist is the power of two
nearest to 4·√N (autofaiss: 4·√N to 16·√N), bounded by 39 training vectors per cell (below
that FAISS's k-means warns and the cells are noisy); the codes are PQ with d/8 sub-quantizers
of 4 bits (d/16 bytes: 32 bytes at d = 512, the bench's recommendation); refinements are tried
8-bit first (d bytes: BENCHMARKS.md finds it re-ranks within 0.002 of float32 copies at a
quarter of their memory), then float32 copies, then 4-bit, then none with finer codes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pipeline.index.tuning_record import FactoryChoice

log = logging.getLogger(__name__)

AUTO = "auto"
ID_BYTES = 8  # an IVF list stores each vector's 64-bit id beside its code
MIN_TRAIN_PER_CELL = 39  # FAISS's k-means warns below this many training points per centroid


@dataclass(frozen=True)
class FactoryPolicy:
    """How ``auto`` chooses; the defaults are the measured ones (BENCHMARKS.md)."""

    # Below this many vectors a Flat index searches as fast as a tuned IVF at recall@100 0.95,
    # and is exact: Flat. Measured (BENCHMARKS.md, "Search tuned to a recall target"): at 1M
    # the tuned IVF takes 0.49x exact search's time, at 200k 3.5x; a tuned IVF's time is
    # mostly its re-scored cut (~2.9 ms a query at k_factor 16, whatever N) plus a scan that
    # grows with N (~0.5 ms at 1M), exact search ~7 ms per 1M vectors: equal near 450k,
    # rounded up to 500k (on the Flat side: exact, and nothing to train).
    flat_below: int = 500_000
    max_bytes: int | None = None  # --max-index-memory; None: no budget
    nlist_per_sqrt_n: float = 4.0
    # (refinement suffix, its bytes per dimension), best first; "" is none.
    refinements: tuple[tuple[str, float], ...] = (
        ("Refine(SQ8)", 1.0),
        ("RFlat", 4.0),
        ("Refine(SQ4)", 0.5),
    )

    def __post_init__(self) -> None:
        if self.flat_below < 0 or (self.max_bytes is not None and self.max_bytes <= 0):
            raise ValueError(f"flat_below must be >= 0 and max_bytes positive: {self}")


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``1.5T`` or a plain byte count -> bytes (binary units)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 4G, 512M)") from None
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value * scale)


def nlist_for(n: int, train_size: int, policy: FactoryPolicy) -> int:
    """IVF cells for ``n`` vectors: a power of two near ``nlist_per_sqrt_n`` · √n, with at
    least ``MIN_TRAIN_PER_CELL`` training vectors per cell."""
    wanted = 2 ** round(math.log2(max(1.0, policy.nlist_per_sqrt_n * math.sqrt(n))))
    cap = max(1, min(n, train_size) // MIN_TRAIN_PER_CELL)
    return max(1, min(wanted, 2 ** int(math.log2(cap))))


def _sub_quantizers(dim: int, divisor: int) -> int:
    """The largest m ≤ dim / divisor dividing dim (PQ needs whole sub-vectors)."""
    m = max(1, dim // divisor)
    while dim % m:
        m -= 1
    return m


def choose_factory(n: int, dim: int, train_size: int, policy: FactoryPolicy) -> FactoryChoice:
    """The factory ``auto`` means for ``n`` vectors of dimension ``dim``, and why."""
    budget = policy.max_bytes
    flat = n * dim * 4
    fits = budget is None or flat <= budget
    if n < policy.flat_below and fits:
        return FactoryChoice(
            "Flat",
            f"{n} vectors < {policy.flat_below} (flat_below): exact search is as fast as "
            "a tuned IVF there",
            n, flat, budget,
        )  # fmt: skip
    nlist = nlist_for(n, train_size, policy)
    centroids = nlist * dim * 4
    options = []
    for refine, per_dim in policy.refinements:
        m = _sub_quantizers(dim, 8)
        options.append((f"PQ{m}x4fs,{refine}", m / 2 + per_dim * dim))
    for divisor in (4, 8, 16):  # no refinement: the finest codes that fit
        m = _sub_quantizers(dim, divisor)
        options.append((f"PQ{m}x4fs", m / 2))
    for codes, per_vector in options:
        size = int(n * (per_vector + ID_BYTES) + centroids)
        if budget is None or size <= budget:
            factory = f"IVF{nlist},{codes}"
            why = (
                f"{n} vectors >= {policy.flat_below} (flat_below): IVF with nlist {nlist} "
                f"(~{policy.nlist_per_sqrt_n:g}·√N, >= {MIN_TRAIN_PER_CELL} training vectors "
                f"per cell), {codes}: ~{size / 2**30:.2f} GiB"
            )
            why += " (no budget)" if budget is None else f" within {budget / 2**30:.2f} GiB"
            return FactoryChoice(factory, why, n, size, budget)
    smallest = int(n * (options[-1][1] + ID_BYTES) + centroids)
    raise ValueError(
        f"no index of {n} {dim}-d vectors fits in --max-index-memory {budget} bytes: the "
        f"smallest choice (IVF{nlist},{options[-1][0]}) needs ~{smallest} bytes; add --shards "
        "on more memory or raise the budget"
    )
