"""Search with post-processing: the version's whitening (always, from its manifest),
then optionally αQE and SuperGlobal-style top-M re-ranking; DBA is in the stored vectors when
the version was built with it. The same in one process and across Ray actors (any
``VersionIndex``). The result says which steps were applied."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.index.expansion import QeConfig, alpha_expand
from pipeline.index.rerank import RerankConfig, rerank
from pipeline.index.search import SearchableIndex, SearchResult, VectorSource, VersionIndex
from pipeline.index.search_config import SearchParams


@dataclass(frozen=True)
class QueryOptions:
    qe: QeConfig | None = None
    rerank: RerankConfig | None = None


@dataclass
class QueryResult:
    result: SearchResult
    applied: list[str] = field(default_factory=list)  # the post-processing steps, in order


def applied_in_index(index: VersionIndex) -> list[str]:
    """The version's own post-processing, as report lines."""
    steps = []
    if (w := index.manifest.whitening) is not None:
        steps.append(
            f"whitening {w.dim_in}->{w.dim_out} (shrinkage {w.shrinkage:g}, sha256 "
            f"{w.sha256[:12]}, from the index)"
        )
    if (d := index.manifest.dba) is not None:
        steps.append(f"DBA k={d.k} alpha={d.alpha:g} (built into the index)")
    return steps


def describe_search(index: VersionIndex, params: SearchParams) -> str:
    """One line: the search setting used and the recall the version promises with it (the
    recall its build measured when it tuned this setting, ``--target-recall``)."""
    if index.exact:
        return "exact search (Flat): recall 1"
    setting = f"nprobe {params.nprobe}, k_factor {params.k_factor}"
    tuning = index.manifest.tuning
    if tuning is None:
        return f"{setting}: no recall measured (build with --target-recall to tune and measure)"
    if params == tuning.params:
        return f"{setting} (the version's tuned default): {tuning.promise()}"
    return (
        f"{setting} (from the flags; recall not measured; the version's tuned {tuning.summary()})"
    )


def describe(opts: QueryOptions) -> list[str]:
    steps = []
    if opts.qe is not None:
        steps.append(f"alpha-QE k={opts.qe.k} alpha={opts.qe.alpha:g}")
    if opts.rerank is not None:
        r = opts.rerank
        steps.append(f"re-ranking M={r.m} K={r.k} beta={r.beta:g} (SuperGlobal)")
    return steps


def expand_queries(
    index: SearchableIndex,
    stored: VectorSource,
    q: np.ndarray,
    cfg: QeConfig,
    params: SearchParams | None = None,
) -> np.ndarray:
    """αQE of prepared queries q (n, d) with their top-k in the version."""
    top = index.search(q, cfg.k, params, prepared=True)
    return alpha_expand(q, stored.vectors(top.ids), top.scores, cfg.alpha)


def rerank_result(
    result: SearchResult, q: np.ndarray, stored: VectorSource, cfg: RerankConfig
) -> SearchResult:
    """``result`` (at least the top M per query) with its top M re-ranked."""
    ids, scores, keys = result.ids.copy(), result.scores.copy(), [list(k) for k in result.keys]
    for i in range(len(q)):
        m = min(cfg.m, int((ids[i] >= 0).sum()))
        if m < 2:
            continue
        order, new_scores = rerank(q[i : i + 1], stored.vectors(ids[i : i + 1, :m]), cfg)
        ids[i, :m] = ids[i, :m][order[0]]
        scores[i, :m] = new_scores[0]
        keys[i][:m] = [keys[i][j] for j in order[0]]
    return SearchResult(ids, scores, keys)


def search(
    index: VersionIndex,
    queries: np.ndarray,
    k: int,
    opts: QueryOptions,
    params: SearchParams | None = None,
) -> QueryResult:
    """Top-k for descriptors as extracted, with the version's and ``opts``' post-processing;
    ``params``: search settings (default: the version's recorded ones)."""
    q = index.prepare_queries(queries)
    stored = index.stored_vectors() if opts.qe or opts.rerank else None
    if opts.qe is not None and stored is not None:
        q = expand_queries(index, stored, q, opts.qe, params)
    depth = max(k, opts.rerank.m) if opts.rerank is not None else k
    result = index.search(q, depth, params, prepared=True)
    if opts.rerank is not None and stored is not None:
        result = rerank_result(result, q, stored, opts.rerank)
    top = SearchResult(result.ids[:, :k], result.scores[:, :k], [r[:k] for r in result.keys])
    return QueryResult(top, applied_in_index(index) + describe(opts))
