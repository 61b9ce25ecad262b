"""Search settings tuned on a version's own data: recall@k against exact search on held-out
queries, swept from cheap to dear, the cheapest setting that meets the target kept
(autofaiss's approach, for the settings our factories expose: IVF ``nprobe`` and, for refined
indexes, ``k_factor``).

Why: recall depends on how flat the tail of each query's top-k is, which no default can
know; the same factory and setting give 0.97 on one collection and 0.74 on another.

The sweep walks a staircase: for each k_factor (ascending) the smallest nprobe (powers of two
up to nlist) whose recall meets the target, starting from the previous k_factor's nprobe,
since a larger k_factor needs no more cells. It leaves a k_factor once more cells would not
get it to the target (its last doubling's gain, repeated up to nlist, falls short) and stops
altogether once a larger k_factor cannot be cheaper than the best found. "Cheap" is a
fixed cost model (``CostModel``), not the measured time, so that the choice is the same for a
seed on any machine; the measured time per query is recorded beside it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from pipeline.index import gpu
from pipeline.index.build_config import is_refined
from pipeline.index.exact_neighbours import HeldOut, exclude_own
from pipeline.index.search import ShardedIndex, VersionIndex
from pipeline.index.search_config import SearchParams
from pipeline.index.tuning_record import RecallTarget, SearchTuning, TuningPoint

log = logging.getLogger(__name__)

NPROBE_MAX = gpu.GPU_MAX_K  # the most cells a GPU search visits
# NOTE: not in the issue: k_factor up to 32 (3,200 candidates re-scored at k = 100; beyond it
# re-scoring costs about as much as exact search, BENCHMARKS.md).
K_FACTORS = (1, 2, 4, 8, 16, 32)
# A k_factor's climb in nprobe ends when doubling nprobe adds less recall than this.
SATURATED = 0.002


@dataclass(frozen=True)
class CostModel:
    """Estimated nanoseconds per query of a setting: the IVF codes scanned plus the candidates
    re-scored. NOTE: not in the issue: constants fitted to BENCHMARKS.md's 1M measurements on
    a 2-core CPU (a 32-byte fast-scan code ~2 ns; one re-scored candidate of a k × k_factor
    cut ~1.8 µs, its heaps and gather included). They order settings; they are not a
    prediction of any machine's time."""

    scan_ns_per_byte: float = 0.07
    rescore_ns: float = 1800.0

    def of(self, shape: IndexShape, k: int, params: SearchParams) -> float:
        cells = min(params.nprobe, shape.nlist) / shape.nlist
        scan = cells * shape.ntotal * shape.code_size * self.scan_ns_per_byte
        return scan + (k * params.k_factor * self.rescore_ns if shape.refined else 0.0)


@dataclass(frozen=True)
class IndexShape:
    """What the sweep needs to know of a version's index."""

    factory: str
    ntotal: int
    nlist: int  # 1: not an IVF (nprobe means nothing)
    code_size: int  # bytes per vector in the scanned codes
    refined: bool


def index_shape(index: ShardedIndex) -> IndexShape:
    """The shape of a loaded version (from its first shard: all share the trained index)."""
    shard = index.held[0]
    ivf = gpu.ivf_of(shard.index) if shard.index is not None else None
    base = shard.base
    code_size = int(ivf.code_size) if ivf is not None else int(getattr(base, "code_size", 4))
    manifest = index.manifest
    return IndexShape(
        manifest.factory,
        index.ntotal,
        int(ivf.nlist) if ivf is not None else 1,
        code_size,
        is_refined(manifest.factory, manifest.dim),
    )


def recalls(found: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Per query: the share of its exact top-``k`` found in its top-``k`` (-1 pads ignored)."""
    out = np.zeros(len(found))
    for q, (f, e) in enumerate(zip(found[:, :k], exact[:, :k], strict=True)):
        want = e[e >= 0]
        out[q] = len(np.intersect1d(f[f >= 0], want)) / len(want) if len(want) else 1.0
    return out


def measure(
    index: VersionIndex,
    held: HeldOut,
    target: RecallTarget,
    params: SearchParams,
    cost: float,
) -> TuningPoint:
    """One setting's recall@1/10/k on the held-out queries, and its time per query."""
    t = time.perf_counter()
    top = index.search(held.queries, target.k + 1, params, prepared=True).ids
    seconds = (time.perf_counter() - t) / len(held.ids)
    found = exclude_own(top, held.ids, target.k)
    at_k = recalls(found, held.exact, target.k)
    stderr = float(np.std(at_k, ddof=1) / np.sqrt(len(at_k))) if len(at_k) > 1 else 0.0
    return TuningPoint(
        nprobe=params.nprobe,
        k_factor=params.k_factor,
        recall_at_1=round(float(recalls(found, held.exact, 1).mean()), 6),
        recall_at_10=round(float(recalls(found, held.exact, min(10, target.k)).mean()), 6),
        recall_at_k=round(float(at_k.mean()), 6),
        recall_bound=round(float(at_k.mean()) - target.z * stderr, 6),
        cost=round(cost, 1),
        seconds_per_query=seconds,
    )


class _Sweep:
    """The staircase over (k_factor, nprobe), each point measured once."""

    def __init__(
        self,
        index: VersionIndex,
        held: HeldOut,
        target: RecallTarget,
        shape: IndexShape,
        model: CostModel,
    ) -> None:
        self.index, self.held, self.target, self.shape, self.model = (
            index, held, target, shape, model,
        )  # fmt: skip
        top = min(shape.nlist, NPROBE_MAX)
        self.nprobes = sorted({*(2**i for i in range(top.bit_length())), top})
        self.k_factors = K_FACTORS if shape.refined else (1,)
        self.points: dict[tuple[int, int], TuningPoint] = {}
        self.best: TuningPoint | None = None  # cheapest meeting the target so far

    def cost(self, j: int, kf: int) -> float:
        return self.model.of(self.shape, self.target.k, SearchParams(self.nprobes[j], kf))

    def point(self, j: int, kf: int) -> TuningPoint:
        key = (self.nprobes[j], kf)
        if key not in self.points:
            params = SearchParams(*key)
            self.points[key] = measure(self.index, self.held, self.target, params, self.cost(j, kf))
            p = self.points[key]
            log.debug("nprobe %d k_factor %d: recall %.4f", p.nprobe, kf, p.recall_at_k)
        return self.points[key]

    def meets(self, j: int, kf: int) -> bool:
        p = self.point(j, kf)
        if p.recall_bound < self.target.recall:
            return False
        if self.best is None or (p.cost, p.nprobe, p.k_factor) < (
            self.best.cost, self.best.nprobe, self.best.k_factor,
        ):  # fmt: skip
            self.best = p
        return True

    def cheaper(self, j: int, kf: int) -> bool:
        return self.best is None or self.cost(j, kf) < self.best.cost

    def lowest(self, kf: int, start: int) -> int:
        """The smallest nprobe index meeting the target at ``kf``, searched from ``start``;
        where none does, the last index tried."""
        j = start
        if self.meets(j, kf):
            while j > 0 and self.meets(j - 1, kf):
                j -= 1
            return j
        while j + 1 < len(self.nprobes) and self.cheaper(j + 1, kf):
            before = self.point(j, kf).recall_at_k
            j += 1
            if self.meets(j, kf):
                return j
            now = self.point(j, kf).recall_at_k
            # NOTE: not in the issue: recall grows ever slower with each doubling of nprobe, so
            # this doubling's gain, repeated up to nlist, bounds what this k_factor can reach.
            if now - before < SATURATED or now + (now - before) * self.doublings_left(j) < (
                self.target.recall
            ):
                break  # more cells will not get this k_factor there: a larger one may
        return j

    def doublings_left(self, j: int) -> int:
        return len(self.nprobes) - 1 - j

    def run(self) -> None:
        j = 0
        for kf in self.k_factors:
            if not self.cheaper(0, kf):
                break  # a larger k_factor cannot be cheaper than the best found
            j = self.lowest(kf, min(j, len(self.nprobes) - 1))
        if self.best is None:  # short of the target: what the dearest setting reaches
            self.meets(len(self.nprobes) - 1, self.k_factors[-1])


def suggest_factory(factory: str, dim: int) -> str:
    """The factory that reaches further than ``factory`` when its recall falls short."""
    if factory == "Flat":
        return "Flat"
    if not is_refined(factory, dim):
        return f"{factory},RFlat (re-scores candidates from float32 copies)"
    base, refine = factory.rsplit(",", 1)
    if refine != "RFlat":
        return f"{base},RFlat (exact re-scoring instead of {refine})"
    return "Flat (exact search: the codes lose the neighbours whatever the setting)"


def tune_search(
    index: VersionIndex,
    held: HeldOut,
    target: RecallTarget,
    shape: IndexShape,
    seed: int,
    model: CostModel | None = None,
) -> SearchTuning:
    """The cheapest setting whose recall@k meets ``target`` on ``held``, else the best reached
    and the factory to use instead; the measured curve, cheap to dear."""
    t = time.perf_counter()
    sweep = _Sweep(index, held, target, shape, model or CostModel())
    sweep.run()
    curve = sorted(sweep.points.values(), key=lambda p: (p.cost, p.nprobe, p.k_factor))
    reached = sweep.best is not None
    chosen = sweep.best or max(curve, key=lambda p: (p.recall_bound, -p.cost))
    suggestion = "" if reached else f"use {suggest_factory(shape.factory, index.manifest.dim)}"
    return SearchTuning(
        target=target.recall,
        k=target.k,
        queries=len(held.ids),
        seed=seed,
        reached=reached,
        chosen=chosen,
        curve=curve,
        seconds=round(time.perf_counter() - t, 3),
        suggestion=suggestion,
    )


def recheck(
    index: VersionIndex,
    held: HeldOut,
    target: RecallTarget,
    shape: IndexShape,
    inherited: SearchParams,
    seed: int,
    model: CostModel | None = None,
) -> SearchTuning:
    """An incremental version's inherited setting measured on a fresh sample: kept while it
    still meets ``target``, else the version is tuned again."""
    t = time.perf_counter()
    model = model or CostModel()
    point = measure(index, held, target, inherited, model.of(shape, target.k, inherited))
    if point.recall_bound >= target.recall:
        return SearchTuning(
            target.recall, target.k, len(held.ids), seed, True, point, [point],
            round(time.perf_counter() - t, 3), "re-checked",
        )  # fmt: skip
    log.info(
        "the inherited setting (nprobe %d, k_factor %d) reaches recall@%d %.3f < %g: re-tuning",
        inherited.nprobe, inherited.k_factor, target.k, point.recall_at_k, target.recall,
    )  # fmt: skip
    tuned = tune_search(index, held, target, shape, seed, model)
    return replace(tuned, how="re-tuned")


def exact_tuning(target: RecallTarget) -> SearchTuning:
    """A flat version's record: exact search, nothing to tune."""
    point = TuningPoint(1, 1, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    return SearchTuning(target.recall, target.k, 0, 0, True, point, [], 0.0, "exact")
