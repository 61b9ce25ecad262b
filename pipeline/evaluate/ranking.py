"""Positions of database images in a query's full ranking: database scores, plus the number of
distractors (from the R1M index) that score above them: exact with a flat index, a lower bound
from the top-k of an approximate one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.index.search import ShardedIndex


@dataclass(frozen=True)
class RankingModel:
    """Positions in the combined ranking: database images by descending score (ties in
    database order), distractors after database images at equal score."""

    db_scores: np.ndarray  # (nq, n_db)
    # counts_above(q, scores) -> distractors scoring strictly higher than each score
    counts_above: Callable[[int, np.ndarray], np.ndarray] | None = None

    def positions_of(self, q: int, idx: np.ndarray) -> np.ndarray:
        s = self.db_scores[q]
        order = np.argsort(-s, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        pos = inverse[np.asarray(idx, dtype=np.int64)]
        if self.counts_above is not None:
            pos = pos + self.counts_above(q, s[idx])
        return pos


def distractor_counter(
    index: ShardedIndex, queries: np.ndarray, k: int
) -> tuple[Callable[[int, np.ndarray], np.ndarray], bool]:
    """counts_above for the distractors, and whether it is exact (flat index: every distractor
    scored) or a lower bound from the top-k of an approximate index. ``queries`` are in the
    index's space (its whitening applied: ``ShardedIndex.prepare_queries``)."""
    if index.exact:
        sorted_scores = []
        for s in range(len(index.shards)):
            sorted_scores.append(index.shard_vectors(s) @ queries.T)  # (n_s, nq)
        per_query = [
            np.sort(np.concatenate([x[:, q] for x in sorted_scores])) for q in range(len(queries))
        ]
        del sorted_scores

        def exact(q: int, scores: np.ndarray) -> np.ndarray:
            ranked = per_query[q]
            return len(ranked) - np.searchsorted(ranked, scores.astype(np.float32), side="right")

        return exact, True
    top = index.search(queries, k, prepared=True).scores  # (nq, k), best first

    def lower_bound(q: int, scores: np.ndarray) -> np.ndarray:
        return (top[q][None, :] > scores[:, None].astype(np.float32)).sum(axis=1)

    return lower_bound, False
