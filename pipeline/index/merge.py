"""The top-k of a sharded index from its shards' candidates, wherever the shards live.

The answer is defined as that of one index holding every vector, so it depends neither on how
the vectors are split into shards nor on which process holds which shard:

- exact or plain approximate shards: the best ``k`` of all candidates by score;
- refined shards (``…,RFlat``, ``…,Refine(SQ8)``): ``merge`` to the best ``k × k_factor`` of
  all candidates by the codes' scores (what one refined index would re-score), the shards
  re-score those, and ``refine_cut`` keeps the best ``k`` (FAISS ``IndexRefine``'s two stages,
  taken across shards; only the global cut is re-scored).

Ties are broken by the smaller global id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.index.shard import Candidates


@dataclass
class Merged:
    """The top-k per query and where each hit lives; -1 / -inf pad missing entries."""

    ids: np.ndarray  # (nq, k) int64 global ids
    scores: np.ndarray  # (nq, k) float32
    shards: np.ndarray  # (nq, k) int64 shard numbers
    positions: np.ndarray  # (nq, k) int64 rows within the shard


def _best(order_key: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Per row, the columns of the ``n`` best: larger ``order_key`` first, then smaller id."""
    return np.lexsort((ids, -order_key), axis=-1)[:, :n]


def merge(candidates: list[Candidates], nq: int, k: int) -> Merged:
    """The global top-``k`` of ``nq`` queries from every shard's ``candidates``."""
    if not candidates or all(c.positions.shape[1] == 0 for c in candidates):
        return _padded(
            Merged(*(np.zeros((nq, 0), t) for t in (np.int64, np.float32, np.int64, np.int64))), k
        )
    return top_k(
        Merged(
            np.concatenate([c.ids for c in candidates], 1),
            np.concatenate([c.scores for c in candidates], 1),
            np.concatenate([np.full_like(c.positions, c.shard) for c in candidates], 1),
            np.concatenate([c.positions for c in candidates], 1),
        ),
        k,
    )


def top_k(m: Merged, k: int) -> Merged:
    """The best ``k`` of each row of ``m`` by score (then smaller id), padded to ``k``."""
    pick = _best(m.scores, m.ids, k)
    ids, scores, shards, positions = (
        np.take_along_axis(a, pick, 1) for a in (m.ids, m.scores, m.shards, m.positions)
    )
    missing = ~np.isfinite(scores)
    ids[missing] = positions[missing] = shards[missing] = -1
    return _padded(Merged(ids, scores.astype(np.float32), shards, positions), k)


def refine_cut(cut: Merged, scores: np.ndarray, k: int) -> Merged:
    """A refined index's second stage: the best ``k`` of the ``cut`` (the global top
    ``k × k_factor`` by the codes' scores) by their re-computed ``scores``."""
    return top_k(Merged(cut.ids, scores, cut.shards, cut.positions), k)


def _padded(m: Merged, k: int) -> Merged:
    pad = k - m.ids.shape[1]
    if pad <= 0:
        return m
    ids, shards, positions = (
        np.pad(a, ((0, 0), (0, pad)), constant_values=-1) for a in (m.ids, m.shards, m.positions)
    )
    scores = np.pad(m.scores, ((0, 0), (0, pad)), constant_values=-np.inf).astype(np.float32)
    return Merged(ids, scores, shards, positions)
