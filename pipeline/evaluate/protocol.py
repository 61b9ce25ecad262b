"""The revisitop evaluation protocol (Radenović et al., "Revisiting Oxford and Paris", CVPR 2018).

Definitions follow revisitop's ``compute_map`` so that numbers compare with published tables:
junk images are removed from the ranking before scoring; AP integrates precision by trapezoids
(precision before and after each positive); mP@k uses k_q = min(k, position of the last
positive); queries without positives are excluded from the means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KAPPAS = (1, 5, 10)
PROTOCOLS = ("easy", "medium", "hard")


@dataclass(frozen=True)
class QueryGroundTruth:
    ok: np.ndarray  # database indices counted as positives
    junk: np.ndarray  # database indices removed from the ranking


def protocol_ground_truth(gnd: Sequence[dict[str, Any]], protocol: str) -> list[QueryGroundTruth]:
    """Easy: easy positives, hard as junk. Medium: easy + hard positives. Hard: hard positives,
    easy as junk. Junk is always junk."""
    out = []
    for g in gnd:
        easy, hard, junk = (
            np.asarray(g.get(k, []), dtype=np.int64) for k in ("easy", "hard", "junk")
        )
        if protocol == "easy":
            out.append(QueryGroundTruth(easy, np.concatenate([junk, hard])))
        elif protocol == "medium":
            out.append(QueryGroundTruth(np.concatenate([easy, hard]), junk))
        elif protocol == "hard":
            out.append(QueryGroundTruth(hard, np.concatenate([junk, easy])))
        else:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return out


def average_precision(positions: np.ndarray, n_positives: int) -> float:
    """AP from the sorted 0-based positions of the positives (junk already removed),
    trapezoidal: Σ_j (P_before + P_after)/2 · 1/n_positives."""
    ap = 0.0
    for j, rank in enumerate(positions):
        precision_before = 1.0 if rank == 0 else j / rank
        precision_after = (j + 1) / (rank + 1)
        ap += (precision_before + precision_after) / (2.0 * n_positives)
    return ap


def junk_free_positions(pos: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """Positions of positives after removing the junk images ranked before each of them."""
    pos, junk = np.sort(pos), np.sort(junk)
    return pos - np.searchsorted(junk, pos, side="left")


def score_query(
    pos: np.ndarray, junk: np.ndarray, n_positives: int, kappas: Sequence[int] = KAPPAS
) -> tuple[float, np.ndarray]:
    """(AP, precision@k) of one query from the 0-based positions of its positives and junk
    in the full ranking. Every positive must be ranked (a full ranking)."""
    p = junk_free_positions(pos, junk)
    ap = average_precision(p, n_positives)
    p1 = p + 1  # 1-based
    prec = np.array([(p1 <= min(int(p1.max()), k)).sum() / min(int(p1.max()), k) for k in kappas])
    return ap, prec


@dataclass(frozen=True)
class ProtocolScores:
    map: float  # mean AP
    mp: dict[int, float]  # mean precision at k
    aps: np.ndarray  # per query, NaN for queries without positives

    def as_report(self) -> dict[str, float]:
        return {"mAP": self.map, **{f"mP@{k}": v for k, v in self.mp.items()}}


def evaluate_positions(
    positions_of: Any, gnd: Sequence[QueryGroundTruth], kappas: Sequence[int] = KAPPAS
) -> ProtocolScores:
    """Mean AP and mP@k. ``positions_of(q, indices)`` returns the 0-based positions of the
    database ``indices`` in query q's full ranking."""
    aps = np.full(len(gnd), np.nan)
    precs = np.full((len(gnd), len(kappas)), np.nan)
    for q, g in enumerate(gnd):
        if len(g.ok) == 0:
            continue
        pos = positions_of(q, g.ok)
        junk = positions_of(q, g.junk) if len(g.junk) else np.empty(0, np.int64)
        aps[q], precs[q] = score_query(pos, junk, len(g.ok), kappas)
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("no query has positives under this protocol")
    return ProtocolScores(
        map=float(aps[valid].mean()),
        mp={k: float(precs[valid, i].mean()) for i, k in enumerate(kappas)},
        aps=aps,
    )


def ranking_positions(ranks: np.ndarray) -> Any:
    """``positions_of`` for an explicit full ranking ``ranks`` (n_db, n_queries), as in
    revisitop: column q lists database indices best first."""
    inverse = np.empty_like(ranks)
    n = ranks.shape[0]
    for q in range(ranks.shape[1]):
        inverse[ranks[:, q], q] = np.arange(n)
    return lambda q, idx: inverse[np.asarray(idx, dtype=np.int64), q]
