"""Held-out queries drawn from a version's own descriptors, and their exact top-k over all of
its descriptors: the ground truth that search tuning (``pipeline.index.tuning``) measures
recall against.

A version's vectors are its inputs' rows in order (global id = position), so both steps work
on ranges of input files ``(uri, first id)`` and can run as one task per range wherever the
build runs (``pipeline.index.build`` fans them out over Ray); each range's answer is a
``Candidates`` and ``merge`` takes the global top-k, as for a search. Descriptors are read
column-only (no keys), whitened as the stored vectors are, and scored by ``flat_topk``, the
exact search of Flat shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.index.merge import merge
from pipeline.index.plan import balance
from pipeline.index.shard import Candidates, flat_topk
from pipeline.index.versions import IndexManifest
from pipeline.index.whitening import Whitening
from pipeline.io.descriptor_reader import to_matrix
from pipeline.io.storage import filesystem

# An input file of a version: (uri, global id of its first row, rows).
InputRange = tuple[str, int, int]


@dataclass(frozen=True)
class HeldOut:
    """Queries drawn from the indexed descriptors, with their exact neighbours."""

    ids: np.ndarray  # (nq,) int64: each query's own global id (excluded from its answer)
    queries: np.ndarray  # (nq, d) float32 in the version's space (whitened)
    exact: np.ndarray  # (nq, k) int64: exact top-k ids, own id excluded, -1 past the end


def input_ranges(manifest: IndexManifest) -> list[InputRange]:
    """Every input of ``manifest`` with the global id of its first row, in id order."""
    first = np.concatenate([[0], np.cumsum([i.rows for i in manifest.inputs])[:-1]])
    return [(i.uri, int(f), i.rows) for i, f in zip(manifest.inputs, first, strict=True)]


def draw_ids(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct global ids in [0, total), sorted, from ``seed`` alone."""
    rng = np.random.default_rng([seed, total])  # a fresh sample when the version grows
    return np.sort(rng.choice(total, size=min(n, total), replace=False)).astype(np.int64)


def _matrices(uri: str, batch_rows: int) -> Iterator[np.ndarray]:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=["descriptor"]):
            yield to_matrix(batch.column("descriptor"))


def range_batches(
    ranges: list[InputRange], whitening: Whitening | None, batch_rows: int = 65536
) -> Iterator[tuple[int, np.ndarray]]:
    """(first global id, vectors (n, d) in the version's space) per streamed batch."""
    for uri, first_id, _ in ranges:
        offset = first_id
        for x in _matrices(uri, batch_rows):
            yield offset, np.array(x) if whitening is None else whitening.apply(x)  # writable
            offset += len(x)


def vectors_at(
    ranges: list[InputRange], ids: np.ndarray, whitening: Whitening | None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the sorted ``ids`` that fall in ``ranges``; files holding none are
    not read."""
    wanted = [r for r in ranges if ((ids >= r[1]) & (ids < r[1] + r[2])).any()]
    found_ids, found = [], []
    for first, x in range_batches(wanted, whitening):
        mine = ids[(ids >= first) & (ids < first + len(x))]
        found_ids.append(mine)
        found.append(x[mine - first])
    if not found:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(found_ids), np.concatenate(found)


def range_candidates(
    part: int,
    ranges: list[InputRange],
    queries: np.ndarray,
    k: int,
    whitening: Whitening | None,
) -> Candidates:
    """The exact top-``k`` of ``queries`` among the vectors of ``ranges`` (one task's part)."""
    best: list[Candidates] = []
    for first, x in range_batches(ranges, whitening):
        scores, rows = flat_topk(queries, x, min(k, len(x)))
        ids = rows + first
        best = [merged_candidates(part, [*best, Candidates(part, ids, ids, scores)], k)]
    return best[0] if best else Candidates.empty(part, len(queries))


def merged_candidates(part: int, parts: list[Candidates], k: int) -> Candidates:
    """The best ``k`` of several parts' candidates, as one part's (ids as positions)."""
    m = merge(parts, len(parts[0].ids), k)
    return Candidates(part, m.ids, m.ids, m.scores)


def exclude_own(top: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(nq, k): each row of ``top`` (nq, k + 1) without the query's own id (or, when the own
    id is not there, e.g. a tie beyond the cut, without the last entry)."""
    out = np.full((len(top), k), -1, np.int64)
    for q, (row, me) in enumerate(zip(top, own, strict=True)):
        kept = row[row != me]
        out[q, : min(k, len(kept))] = kept[:k]
    return out


# How the parts run: locally in order, or as Ray tasks (``pipeline.index.build``).
PartRunner = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def run_here(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in calls]


def held_out(
    ranges: list[InputRange],
    n: int,
    k: int,
    seed: int,
    whitening: Whitening | None,
    parts: int = 1,
    run: PartRunner = run_here,
) -> HeldOut:
    """``n`` queries drawn uniformly from the vectors of ``ranges`` by ``seed``, and their
    exact top-``k`` with their own ids excluded, computed in ``parts`` parts by ``run``."""
    total = sum(r[2] for r in ranges)
    ids = draw_ids(total, n, seed)
    groups = [[ranges[i] for i in g] for g in balance([r[2] for r in ranges], parts) if g]
    found = run(vectors_at, [(g, ids, whitening) for g in groups])
    got = np.concatenate([f[0] for f in found if len(f[0])])
    queries = np.concatenate([f[1] for f in found if len(f[0])])[np.argsort(got)]
    calls = [(p, g, queries, k + 1, whitening) for p, g in enumerate(groups)]
    top = merge(run(range_candidates, calls), len(ids), k + 1).ids
    return HeldOut(ids, np.ascontiguousarray(queries, np.float32), exclude_own(top, ids, k))
