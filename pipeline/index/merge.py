"""The top-k of a sharded index from its shards' candidates, wherever the shards live.

The answer is defined as that of one index holding every vector, so it depends neither on how
the vectors are split into shards nor on which process holds which shard:

- exact or plain approximate shards: the best ``k`` of all candidates by score;
- refined shards (``…,RFlat``, ``…,Refine(SQ8)``): the best ``k × k_factor`` of all candidates
  by the codes' scores (what one refined index would re-score), then the best ``k`` of those by
  the re-computed scores (FAISS ``IndexRefine``'s two stages, taken across shards).

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


def merge(candidates: list[Candidates], nq: int, k: int, k_factor: int) -> Merged:
    """The global top-``k`` of ``nq`` queries from every shard's ``candidates``."""
    if not candidates or all(c.positions.shape[1] == 0 for c in candidates):
        return Merged(
            np.full((nq, k), -1, np.int64),
            np.full((nq, k), -np.inf, np.float32),
            np.full((nq, k), -1, np.int64),
            np.full((nq, k), -1, np.int64),
        )
    ids = np.concatenate([c.ids for c in candidates], 1)
    coarse = np.concatenate([c.coarse for c in candidates], 1)
    scores = np.concatenate([c.scores for c in candidates], 1)
    positions = np.concatenate([c.positions for c in candidates], 1)
    shards = np.concatenate([np.full_like(c.positions, c.shard) for c in candidates], 1)
    columns = [ids, coarse, scores, positions, shards]
    if any(c.refined for c in candidates):
        pick = _best(coarse, ids, k * k_factor)  # what one refined index would re-score
        ids, coarse, scores, positions, shards = (np.take_along_axis(a, pick, 1) for a in columns)
        columns = [ids, coarse, scores, positions, shards]
    pick = _best(scores, ids, k)
    ids, _, scores, positions, shards = (np.take_along_axis(a, pick, 1) for a in columns)
    missing = ~np.isfinite(scores)
    ids[missing] = positions[missing] = shards[missing] = -1
    pad = k - ids.shape[1]
    if pad > 0:
        ids, positions, shards = (
            np.pad(a, ((0, 0), (0, pad)), constant_values=-1) for a in (ids, positions, shards)
        )
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return Merged(ids, scores.astype(np.float32), shards, positions)
