"""Whitening, DBA, αQE and re-ranking in the revisitop evaluation (issue 12), over the database
and, when given, the R1M distractor index, so that the figures compare with published ones.

Order: whitening (of queries and database, the distractors' is in their index) -> DBA of the
database -> αQE of the queries -> full ranking -> SuperGlobal re-ranking of each query's top M.
Neighbours are searched over database ∪ distractors. Approximations, stated in the report:

- DBA of the database uses the distractors' stored vectors, which their index already
  augmented among themselves at build time (``build_index.py --dba``, same k and α): the
  distractors' own neighbours do not include the database images.
- With an approximate distractor index, neighbours and the top M come from its search.

The distractor index may live in this process or on Ray actors (``--distributed``): both
answer searches of prepared vectors and give their stored vectors by id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluate.ranking import RankingModel, distractor_counter
from pipeline.index.expansion import DbaConfig, QeConfig, alpha_expand
from pipeline.index.query import QueryOptions, describe
from pipeline.index.rerank import RerankConfig, rerank
from pipeline.index.search import SearchableIndex, VectorSource
from pipeline.index.whitening import Whitening, read_whitening
from pipeline.io.redact import redact_text


@dataclass(frozen=True)
class EvalPostProcessing:
    whitening: str | None = None  # a whitening file; default: the distractor index's own
    dba: DbaConfig | None = None
    qe: QeConfig | None = None
    rerank: RerankConfig | None = None


@dataclass
class Prepared:
    """Queries and database in the space the ranking happens in, and what was applied."""

    q: np.ndarray
    x: np.ndarray
    applied: list[str] = field(default_factory=list)


def resolve_whitening(
    post: EvalPostProcessing, index: SearchableIndex | None
) -> tuple[Whitening | None, str]:
    """The whitening to apply (the flag's, else the index's) and its report line; a flag that
    differs from the distractor index's whitening is refused."""
    own = index.manifest.whitening if index is not None else None
    if post.whitening is None:
        if index is None or index.whitening is None or own is None:
            return None, ""
        return index.whitening, f"whitening {own.dim_in}->{own.dim_out} (the distractor index's)"
    whitening, sha = read_whitening(post.whitening)
    if index is not None and (own is None or own.sha256 != sha):
        raise ValueError(
            f"--whitening {redact_text(post.whitening)} is not the distractor index's "
            f"({'none' if own is None else own.source}): rebuild the index with "
            "build_index.py --whitening, or drop the flag to use the index's"
        )
    line = f"whitening {whitening.dim_in}->{whitening.dim_out} (sha256 {sha[:12]})"
    return whitening, line


class Candidates:
    """Nearest vectors over database ∪ distractors, best first (database first at ties)."""

    def __init__(self, x: np.ndarray, index: SearchableIndex | None) -> None:
        self.x = x
        self.index = index
        self.stored: VectorSource | None = index.stored_vectors() if index is not None else None

    def top(
        self, v: np.ndarray, k: int, exclude_db: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores (n, k), vectors (n, k, d), database index or -1 for a distractor (n, k));
        ``exclude_db[i]``: a database row that row i of v must not find (itself)."""
        s = v @ self.x.T  # (n, n_db)
        if exclude_db is not None:
            s[np.arange(len(v)), exclude_db] = -np.inf
        kk = min(k, s.shape[1])
        db = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        scores = [np.take_along_axis(s, db, 1)]
        which = [db]
        if self.index is not None and self.stored is not None:
            found = self.index.search(v, k, prepared=True)
            scores.append(found.scores)
            which.append(-2 - found.ids)  # distractor id i -> -2 - i (never a row of x)
        all_s, all_w = np.concatenate(scores, 1), np.concatenate(which, 1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        top_s, top_w = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_w, order, 1)
        vectors = np.zeros((*top_w.shape, self.x.shape[1]), np.float32)
        is_db = top_w >= 0
        vectors[is_db] = self.x[top_w[is_db]]
        if self.stored is not None and (~is_db).any():
            vectors[~is_db] = self.stored.vectors(-2 - top_w[~is_db])
        return top_s, vectors, np.where(is_db, top_w, -1)


def prepare(
    q: np.ndarray,
    x: np.ndarray,
    index: SearchableIndex | None,
    post: EvalPostProcessing,
    resolved: tuple[Whitening | None, str],
) -> Prepared:
    """Whitening (``resolve_whitening``'s), DBA and αQE applied to queries and database;
    ``index``: the distractors (None: the database alone)."""
    whitening, line = resolved
    out = Prepared(q, x)
    if whitening is not None:
        out = Prepared(whitening.apply(q), whitening.apply(x), [line])
    built = index.manifest.dba if index is not None else None
    if post.dba is not None:
        if index is not None and (
            built is None or (built.k, built.alpha) != (post.dba.k, post.dba.alpha)
        ):
            raise ValueError(
                f"--dba {post.dba.k} needs a distractor index built with the same DBA "
                f"(build_index.py --dba {post.dba.k} --dba-alpha {post.dba.alpha:g}); "
                f"this one has {'none' if built is None else f'k={built.k}'}"
            )
        cand = Candidates(out.x, index)
        s, v, _ = cand.top(out.x, post.dba.k, exclude_db=np.arange(len(out.x)))
        out.x = alpha_expand(out.x, v, s, post.dba.alpha)
        applied = f"DBA k={post.dba.k} alpha={post.dba.alpha:g}"
        if index is not None:
            # NOTE: not in paper (the protocol leaves it open): stated wherever it applies.
            applied += (
                ": the database over database + distractors; the distractors were augmented "
                "among themselves at build time (their neighbours exclude the database), not "
                "jointly"
            )
        out.applied.append(applied)
    elif built is not None:
        raise ValueError(
            f"the distractor index was built with DBA k={built.k}: pass --dba {built.k} "
            f"--dba-alpha {built.alpha:g} so the database is augmented the same way"
        )
    if post.qe is not None:
        s, v, _ = Candidates(out.x, index).top(out.q, post.qe.k)
        out.q = alpha_expand(out.q, v, s, post.qe.alpha)
    out.applied += describe_steps(post)
    return out


def describe_steps(post: EvalPostProcessing) -> list[str]:
    return describe(QueryOptions(post.qe, post.rerank))


@dataclass(frozen=True)
class RerankedRanking:
    """Positions after re-ranking each query's top M: a database image among them takes its
    new place; every other image keeps its place in the base ranking (>= M)."""

    base: RankingModel
    new_positions: list[dict[int, int]]  # per query: database index -> position in the top M

    def positions_of(self, q: int, idx: np.ndarray) -> np.ndarray:
        base = self.base.positions_of(q, idx)
        moved = self.new_positions[q]
        return np.array(
            [moved.get(int(i), int(p)) for i, p in zip(idx, base, strict=True)], dtype=np.int64
        )


def ranking(
    prepared: Prepared,
    index: SearchableIndex | None,
    post: EvalPostProcessing,
    approx_k: int,
) -> tuple[Callable[[int, np.ndarray], np.ndarray], bool]:
    """positions_of for the full ranking (with distractors when ``index``), and whether it is
    exact."""
    q, x = prepared.q, prepared.x
    db_scores = q @ x.T
    counts, exact = (
        (None, True) if index is None else distractor_counter(index, q, approx_k, db_scores)
    )
    base = RankingModel(db_scores, counts)
    if post.rerank is None:
        return base.positions_of, exact
    _, vectors, db = Candidates(x, index).top(q, post.rerank.m)
    moved: list[dict[int, int]] = []
    for i in range(len(q)):
        order, _ = rerank(q[i : i + 1], vectors[i : i + 1], post.rerank)
        new_db = db[i][order[0]]
        moved.append({int(d): pos for pos, d in enumerate(new_db) if d >= 0})
    return RerankedRanking(base, moved).positions_of, exact
