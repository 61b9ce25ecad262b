"""Positions of database images in a query's full ranking: database scores, plus the number of
distractors (from the R1M index) that score above them: exact with a flat index, a lower bound
from the top-k of an approximate one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.index.search import SearchableIndex


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
    index: SearchableIndex, queries: np.ndarray, k: int, db_scores: np.ndarray
) -> tuple[Callable[[int, np.ndarray], np.ndarray], bool]:
    """counts_above for the distractors, and whether it is exact (flat index: every distractor
    scored against each database score ``db_scores`` (nq, n_db), in one process or on the
    index's actors) or a lower bound from the top-k of an approximate index. ``queries`` are
    in the index's space (its whitening applied: ``prepare_queries``)."""
    if index.exact:
        above = index.count_above(queries, db_scores, prepared=True)  # (nq, n_db)
        order = np.argsort(db_scores, axis=1, kind="stable")
        sorted_scores = np.take_along_axis(db_scores, order, 1)
        sorted_counts = np.take_along_axis(above, order, 1)

        def exact(q: int, scores: np.ndarray) -> np.ndarray:
            # ``scores`` are values of db_scores[q]: equal values have equal counts
            at = np.searchsorted(sorted_scores[q], scores, side="left")
            return sorted_counts[q][at]

        return exact, True
    top = index.search(queries, k, prepared=True).scores  # (nq, k), best first

    def lower_bound(q: int, scores: np.ndarray) -> np.ndarray:
        return (top[q][None, :] > scores[:, None].astype(np.float32)).sum(axis=1)

    return lower_bound, False
