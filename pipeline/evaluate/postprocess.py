"""Whitening, DBA, αQE and re-ranking in the revisitop evaluation, over the database
and, when given, the R1M distractor index, so that the figures compare with published ones.

Order: whitening (of queries and database, the distractors' is in their index) -> DBA of the
database -> αQE of the queries -> full ranking -> SuperGlobal re-ranking of each query's top M.
Neighbours are searched over database ∪ distractors. Approximations, stated in the report:

- DBA of the database uses the distractors' stored vectors, which their index already
  augmented among themselves at build time (``build_index.py --dba``, same k and α): the
  distractors' own neighbours do not include the database images.
- With an approximate distractor index, neighbours and the top M come from its search.

Joint DBA (``JointDba``, ``--dba-joint``), where memory allows, removes the first: every vector
of database ∪ distractors is augmented with its k nearest others in that union (exact, in
chunks of rows), from the distractors' raw stored vectors (an index built without DBA); the
augmented distractors then replace their index in αQE, re-ranking and the ranking, searched and
counted exactly (``JointDistractors``).

The distractor index may live in this process or on Ray actors (``--distributed``): both
answer searches of prepared vectors and give their stored vectors by id.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow as pa

from pipeline.evaluate.ranking import RankingModel, distractor_counter
from pipeline.index.expansion import DbaConfig, QeConfig, alpha_expand, drop_self
from pipeline.index.query import QueryOptions, describe
from pipeline.index.rerank import RerankConfig, rerank
from pipeline.index.search import (
    SearchableIndex,
    SearchResult,
    VectorSource,
    VersionIndex,
    flat_topk,
)
from pipeline.index.search_config import SearchParams
from pipeline.index.shard import IndexShard
from pipeline.index.vectors import StoredVectors
from pipeline.index.versions import IndexManifest
from pipeline.index.whitening import Whitening, read_whitening
from pipeline.io.redact import redact_text
from pipeline.runtime.memory import peak_rss_bytes

log = logging.getLogger(__name__)

# Joint DBA's memory: the distractor index's own vectors (at most n_dis x d floats, loaded to
# open it), the raw union and the augmented union: JOINT_COPIES x n_total x d float32, plus a
# chunk's similarity block and neighbours (``joint_dba_bytes``).
JOINT_COPIES = 3
# NOTE: not in paper: the default limit leaves a quarter of the available memory to the rest
# of the process (descriptors, the ranking's count buffers, the allocator's slack).
AVAILABLE_FRACTION = 0.75
SEARCH_BLOCK_ROWS = 131072  # union rows scored at once against a chunk (flat_topk's blocks)


@dataclass(frozen=True)
class JointDba:
    """DBA over database ∪ distractors jointly (``--dba-joint``), and the memory it may take."""

    # Refused when the estimate exceeds this; None: AVAILABLE_FRACTION of the memory available
    # when checked (``available_memory_bytes``).
    max_bytes: int | None = None
    # Union rows whose neighbours are searched at once: the similarity block is
    # chunk_rows x min(n_total, SEARCH_BLOCK_ROWS) float32 (0.5 GiB at 1024).
    chunk_rows: int = 1024

    def __post_init__(self) -> None:
        if self.chunk_rows <= 0:
            raise ValueError(f"joint DBA needs chunk_rows >= 1, got {self.chunk_rows}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"joint DBA's memory limit must be positive, got {self.max_bytes}")


@dataclass(frozen=True)
class EvalPostProcessing:
    whitening: str | None = None  # a whitening file; default: the distractor index's own
    dba: DbaConfig | None = None
    qe: QeConfig | None = None
    rerank: RerankConfig | None = None
    # With distractors: DBA over database ∪ distractors (an index built without DBA); None:
    # the database over the union, the distractors as their index stores them.
    dba_joint: JointDba | None = None

    def __post_init__(self) -> None:
        if self.dba_joint is not None and self.dba is None:
            raise ValueError("joint DBA needs DBA's k and alpha (--dba K with --dba-joint)")


@dataclass
class Prepared:
    """Queries and database in the space the ranking happens in, and what was applied."""

    q: np.ndarray
    x: np.ndarray
    applied: list[str] = field(default_factory=list)
    # The distractors the later steps search and count: their index, or joint DBA's
    # ``JointDistractors``; None without distractors.
    distractors: SearchableIndex | None = None


def resolve_whitening(
    post: EvalPostProcessing, index: VersionIndex | None
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


class UnionNeighbours:
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


def available_memory_bytes() -> int:
    """Memory this process may still take: MemAvailable (/proc/meminfo; free pages where it is
    absent), lowered to a container's headroom (its cgroup limit minus its working set: a
    pod's /proc/meminfo shows its node's memory, not its limit)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for base, limit_file, usage_file, inactive in _CGROUP_MEMORY:
        try:
            with open(os.path.join(base, limit_file)) as f:
                limit = int(f.read())  # cgroup v2 writes "max" for no limit: not a number
            with open(os.path.join(base, usage_file)) as f:
                usage = int(f.read())
            with open(os.path.join(base, "memory.stat")) as f:
                stat = dict(line.split() for line in f if line.count(" ") == 1)
        except (OSError, ValueError):
            continue
        working_set = usage - int(stat.get(inactive, 0))  # page cache it can drop does not count
        return max(0, min(available, limit - working_set))
    return available


# cgroup v2, then v1: (folder, limit file, usage file, the reclaimable page cache in memory.stat)
_CGROUP_MEMORY = (
    ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
    (
        "/sys/fs/cgroup/memory",
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        "total_inactive_file",
    ),
)


def joint_dba_bytes(n_total: int, dim: int, k: int, chunk_rows: int) -> int:
    """Joint DBA's estimated peak memory: JOINT_COPIES x n_total x d float32 (the distractor
    index's own vectors, the raw union, the augmented union), plus one chunk's similarity block
    (chunk x min(n_total, SEARCH_BLOCK_ROWS) float32) and its neighbours (chunk x k x d,
    gathered as float32 and expanded in float64)."""
    chunk = min(chunk_rows, n_total)
    block = chunk * (min(n_total, SEARCH_BLOCK_ROWS) * 4 + k * dim * (4 + 8))
    return JOINT_COPIES * n_total * dim * 4 + block


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def refuse_augmented(manifest: IndexManifest) -> None:
    """Joint DBA needs the distractors' raw vectors: refuse an index that stored them augmented."""
    built = manifest.dba
    if built is not None:
        raise ValueError(
            f"joint DBA augments the distractors' raw vectors, but the distractor index (version "
            f"{manifest.version}) stores them augmented among themselves (build_index.py --dba "
            f"{built.k}): rebuild it without --dba (the same descriptors and --whitening, another "
            f"output) for --dba-joint, or drop --dba-joint and pass --dba {built.k} --dba-alpha "
            f"{built.alpha:g}"
        )


def check_joint_dba(manifest: IndexManifest, n_db: int, post: EvalPostProcessing) -> None:
    """Refuse joint DBA before the distractor index ``manifest`` describes is loaded: when that
    index stores augmented vectors, or when the estimated memory exceeds the limit."""
    joint, dba = post.dba_joint, post.dba
    if joint is None or dba is None:
        return
    refuse_augmented(manifest)
    n_total = n_db + manifest.count
    need = joint_dba_bytes(n_total, manifest.dim, dba.k, joint.chunk_rows)
    if joint.max_bytes is not None:
        limit, source = joint.max_bytes, "the limit given"
    else:
        available = available_memory_bytes()
        limit = int(AVAILABLE_FRACTION * available)
        source = f"{AVAILABLE_FRACTION:g} of the {_gib(available)} available"
    log.info(
        "joint DBA over %d vectors: about %s needed, %s allowed", n_total, _gib(need), _gib(limit)
    )
    # NOTE: not in paper (it does not discuss memory): refused before anything is loaded,
    # rather than the out-of-memory killer an hour into the neighbour search.
    if need > limit:
        raise ValueError(
            f"joint DBA over {n_total} vectors ({n_db} database + {manifest.count} distractors) "
            f"of dimension {manifest.dim} needs about {_gib(need)} ({JOINT_COPIES} x n x d float32 "
            f"+ one chunk's block), more than {_gib(limit)} ({source}; --dba-joint-max-gib): "
            "run it where more memory is free, or drop --dba-joint (DBA of the database only)"
        )


class JointDistractors(SearchableIndex):
    """The distractors after joint DBA, in this process: one flat shard (``IndexShard``) with
    their index's ids (0..n-1), searched and counted exactly in place of that index."""

    def __init__(self, augmented: np.ndarray) -> None:
        """``augmented``: (n_dis, d) float32, row i for distractor id i (copied)."""
        self.dim = augmented.shape[1]
        flat = faiss.IndexFlatIP(self.dim)
        flat.add(np.ascontiguousarray(augmented, dtype=np.float32))
        ids = pa.table({"id": np.arange(len(augmented), dtype=np.int64)})
        self._shard = IndexShard(0, flat, ids, augmented.nbytes)

    @property
    def ntotal(self) -> int:
        return self._shard.ntotal

    @property
    def exact(self) -> bool:
        return True

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        prepared: bool = False,
    ) -> SearchResult:
        """Exact top-``k`` of queries already in the augmented space (no whitening here)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        found = self._shard.candidates(q, k, params or SearchParams())
        return SearchResult(found.ids, found.scores, [])

    def count_above(
        self, queries: np.ndarray, thresholds: np.ndarray, prepared: bool = False
    ) -> np.ndarray:
        """(nq, m) int64: distractors scoring strictly above ``thresholds[q, j]``."""
        return self._shard.count_above(np.ascontiguousarray(queries, np.float32), thresholds)

    def stored_vectors(self) -> StoredVectors:
        shard = self._shard
        return StoredVectors([shard.index], [shard.ids], self.dim, lambda _: shard.vectors())


def _raw_union(x: np.ndarray, stored: VectorSource, n_dis: int, chunk_rows: int) -> np.ndarray:
    """U = [x; D]: (n_db + n_dis, d) float32, D the distractors' stored vectors by id."""
    union = np.empty((len(x) + n_dis, x.shape[1]), np.float32)
    union[: len(x)] = x
    for start in range(0, n_dis, chunk_rows):
        stop = min(start + chunk_rows, n_dis)
        union[len(x) + start : len(x) + stop] = stored.vectors(np.arange(start, stop))
    return union


def _augment(union: np.ndarray, cfg: DbaConfig, chunk_rows: int) -> np.ndarray:
    """U': every row of U expanded with its k nearest other rows of U (exact), chunk by chunk:
    the similarity block is chunk_rows x SEARCH_BLOCK_ROWS, never n x n."""
    out = np.empty_like(union)
    for start in range(0, len(union), chunk_rows):
        rows = union[start : start + chunk_rows]  # (c, d)
        scores, ids = flat_topk(rows, union, cfg.k + 1, SEARCH_BLOCK_ROWS)  # (c, k + 1)
        own = np.arange(start, start + len(rows))
        ids, sims = drop_self(ids, scores, own, cfg.k)  # (c, k): itself excluded
        out[start : start + len(rows)] = alpha_expand(rows, union[ids], sims, cfg.alpha)
    return out


def joint_dba(
    x: np.ndarray, index: VersionIndex, cfg: DbaConfig, joint: JointDba
) -> tuple[np.ndarray, JointDistractors]:
    """DBA over U = database ∪ distractors: each row of U (the database ``x`` as prepared, the
    distractors as their index stores them, raw) becomes α-expanded with its k nearest other
    rows of U. Returns the augmented database (n_db, d) and distractors."""
    refuse_augmented(index.manifest)
    t0 = time.monotonic()
    n = len(x) + index.ntotal
    if cfg.k >= n:
        raise ValueError(f"joint DBA with k = {cfg.k} needs more than {n} vectors")
    # The raw union is freed when _augment returns, before the flat copy of the distractors.
    augmented = _augment(
        _raw_union(x, index.stored_vectors(), index.ntotal, joint.chunk_rows),
        cfg,
        joint.chunk_rows,
    )
    x_aug = augmented[: len(x)].copy()
    distractors = JointDistractors(augmented[len(x) :])
    log.info(
        "joint DBA k=%d alpha=%g over %d vectors (%d database + %d distractors): %.1fs, "
        "peak RSS %s",
        cfg.k,
        cfg.alpha,
        n,
        len(x),
        index.ntotal,
        time.monotonic() - t0,
        _gib(peak_rss_bytes()),
    )
    return x_aug, distractors


def prepare(
    q: np.ndarray,
    x: np.ndarray,
    index: VersionIndex | None,
    post: EvalPostProcessing,
    resolved: tuple[Whitening | None, str],
) -> Prepared:
    """Whitening (``resolve_whitening``'s), DBA and αQE applied to queries and database;
    ``index``: the distractors (None: the database alone)."""
    whitening, line = resolved
    out = Prepared(q, x, distractors=index)
    if whitening is not None:
        out = Prepared(whitening.apply(q), whitening.apply(x), [line], index)
    built = index.manifest.dba if index is not None else None
    if post.dba is not None and post.dba_joint is not None and index is not None:
        out.x, out.distractors = joint_dba(out.x, index, post.dba, post.dba_joint)
        out.applied.append(
            f"DBA k={post.dba.k} alpha={post.dba.alpha:g}: joint over database + distractors "
            "(every vector with its k nearest others in their union, the distractors from "
            "their raw stored vectors; ranked exactly against the augmented union)"
        )
    elif post.dba is not None:
        if index is not None and (
            built is None or (built.k, built.alpha) != (post.dba.k, post.dba.alpha)
        ):
            raise ValueError(
                f"--dba {post.dba.k} needs a distractor index built with the same DBA "
                f"(build_index.py --dba {post.dba.k} --dba-alpha {post.dba.alpha:g}); "
                f"this one has {'none' if built is None else f'k={built.k}'}"
                + (
                    " (or add --dba-joint: joint DBA over an index built without)"
                    if built is None
                    else ""
                )
            )
        cand = UnionNeighbours(out.x, index)
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
        s, v, _ = UnionNeighbours(out.x, out.distractors).top(out.q, post.qe.k)
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
    prepared: Prepared, post: EvalPostProcessing, approx_k: int
) -> tuple[Callable[[int, np.ndarray], np.ndarray], bool]:
    """positions_of for the full ranking (with ``prepared.distractors`` when there are), and
    whether it is exact."""
    q, x, index = prepared.q, prepared.x, prepared.distractors
    db_scores = q @ x.T
    counts, exact = (
        (None, True) if index is None else distractor_counter(index, q, approx_k, db_scores)
    )
    base = RankingModel(db_scores, counts)
    if post.rerank is None:
        return base.positions_of, exact
    _, vectors, db = UnionNeighbours(x, index).top(q, post.rerank.m)
    moved: list[dict[int, int]] = []
    for i in range(len(q)):
        order, _ = rerank(q[i : i + 1], vectors[i : i + 1], post.rerank)
        new_db = db[i][order[0]]
        moved.append({int(d): pos for pos, d in enumerate(new_db) if d >= 0})
    return RerankedRanking(base, moved).positions_of, exact
