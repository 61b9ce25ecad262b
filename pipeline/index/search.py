"""Loading an index version and searching it: top-k (ids, keys, scores) merged across shards.

A search runs in these steps (``search_shards``), the same in one process (``ShardedIndex``)
and across Ray actors (``pipeline.index.serving.DistributedIndex``):

1. ``prepare_queries``: the query-side step (checks; the learned whitening a version records
   applies here, in the process that takes the queries, before they reach any shard; queries
   already in the version's space, e.g. expanded queries or stored vectors, pass
   ``prepared=True``);
2. every shard's candidates (``IndexShard.candidates``);
3. ``merge``: the global top-k (top ``k × k_factor`` for a refined index), defined as one index
   holding every vector would answer it;
4. refined indexes only: the shards re-score that cut from their stored vectors,
   ``refine_cut`` keeps the best k;
5. the keys of the hits, from the shards' id tables.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from types import TracebackType
from typing import Protocol, Self

import numpy as np

from pipeline.index import gpu
from pipeline.index.build_config import is_exact, is_refined
from pipeline.index.merge import Merged, merge, refine_cut
from pipeline.index.search_config import SearchParams
from pipeline.index.shard import (
    Candidates,
    IndexShard,
    flat_topk,
    read_id_table,
    read_shard_index,
)
from pipeline.index.vectors import StoredVectors
from pipeline.index.versions import IndexManifest, read_latest, read_manifest
from pipeline.index.whitening import Whitening
from pipeline.io.storage import join, read_bytes
from pipeline.runtime.records import check_fingerprint

__all__ = [
    "SearchResult",
    "SearchableIndex",
    "ShardedIndex",
    "VersionIndex",
    "flat_topk",
]

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    ids: np.ndarray  # (nq, k) int64, -1 where fewer than k vectors exist
    scores: np.ndarray  # (nq, k) float32, inner products, best first
    keys: list[list[str]]


def resolve_version(output: str, version: str | None) -> tuple[str, IndexManifest]:
    """(version, manifest): ``version``, or the one LATEST names."""
    if version is None:
        latest = read_latest(output, with_inputs=False)  # searching needs no input list
        if latest is None:
            raise ValueError(f"no index at {output} (no LATEST)")
        return latest
    return version, read_manifest(output, version, with_inputs=False)


def check_queries(
    version: str, manifest: IndexManifest, identity: dict[str, str], source: str
) -> None:
    """``VersionIndex.check_queries`` from the manifest alone: a caller can refuse queries of
    another descriptor model before it loads the shards or starts actors for them."""
    check_fingerprint(
        f"the index version {version}",
        manifest.descriptor_model,
        identity,
        f"the queries in {source} come from another descriptor space",
    )


def prepare_queries(
    queries: np.ndarray, manifest: IndexManifest, whitening: Whitening | None = None
) -> np.ndarray:
    """Queries as the shards take them: (nq, d) contiguous float32 in the index's space. The
    place for query-side post-processing that a version records: ``whitening``, the version's
    learned whitening, maps descriptors as extracted into that space."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if whitening is not None:
        if q.shape[1] != whitening.dim_in:
            raise ValueError(
                f"queries have dimension {q.shape[1]}, the index's whitening takes "
                f"{whitening.dim_in}"
            )
        q = np.ascontiguousarray(whitening.apply(q))
    if q.shape[1] != manifest.dim:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index {manifest.dim}")
    return q


def group_by_shard(merged: Merged) -> dict[int, np.ndarray]:
    """Shard -> the distinct positions of its hits in ``merged``."""
    return {
        int(s): np.unique(merged.positions[merged.shards == s])
        for s in np.unique(merged.shards)
        if s >= 0
    }


def result_with_keys(merged: Merged, keys: dict[int, dict[int, str]]) -> SearchResult:
    """The SearchResult of ``merged``; ``keys[shard][position]`` names each hit."""
    rows = [
        [keys[int(s)][int(p)] for s, p in zip(ss, pp, strict=True) if s >= 0]
        for ss, pp in zip(merged.shards, merged.positions, strict=True)
    ]
    return SearchResult(merged.ids, merged.scores, rows)


def search_shards(
    queries: np.ndarray,
    k: int,
    params: SearchParams,
    manifest: IndexManifest,
    prepare: Callable[[np.ndarray], np.ndarray],
    candidates: Callable[[np.ndarray, int, SearchParams], list[Candidates]],
    rescore: Callable[[np.ndarray, Merged], np.ndarray],
    keys: Callable[[dict[int, np.ndarray]], dict[int, dict[int, str]]],
) -> SearchResult:
    """The search algorithm, wherever the shards are: ``prepare(queries)`` (the query-side
    step, ``VersionIndex.prepare_queries``), ``candidates(q, k, params)`` from every shard,
    ``rescore(q, cut)`` of a refined index's cut, ``keys(wanted)`` of the hits."""
    q = prepare(queries)
    refined = is_refined(manifest.factory, manifest.dim)
    merged = merge(candidates(q, k, params), len(q), k * params.k_factor if refined else k)
    if refined:
        merged = refine_cut(merged, rescore(q, merged), k)
    return result_with_keys(merged, keys(group_by_shard(merged)))


class VectorSource(Protocol):
    """The stored vectors of a version by global id (``pipeline.index.vectors``)."""

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...


class SearchableIndex(ABC):
    """Vectors searched by inner product with queries already in their space: what a ranking
    over them needs (top-k, exact counts above a score, their stored vectors). An index
    version is one (``VersionIndex``); so are evaluation's distractors after joint DBA
    (``pipeline.evaluate.postprocess.JointDistractors``)."""

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """The number of vectors searched."""

    @property
    @abstractmethod
    def exact(self) -> bool:
        """True when scores and ranks are exact (flat): ``count_above`` answers only then."""

    @abstractmethod
    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        prepared: bool = False,
    ) -> SearchResult:
        """Top-``k`` per query (nq, d), best first; ``prepared``: the queries are already in
        the index's space."""

    @abstractmethod
    def count_above(
        self, queries: np.ndarray, thresholds: np.ndarray, prepared: bool = False
    ) -> np.ndarray:
        """(nq, m) int64: vectors scoring strictly above ``thresholds[q, j]`` for query q."""

    @abstractmethod
    def stored_vectors(self) -> VectorSource:
        """The stored vectors by global id (αQE, DBA, re-ranking)."""


class VersionIndex(SearchableIndex):
    """An index version, answered the same in one process (``ShardedIndex``) and across
    actors (``DistributedIndex``): the query-side step, run where the queries are, before any
    shard sees them (the version's whitening), the check that queries come from the index's
    descriptor model, and the search (``search_shards``) over the subclass's ``candidates``,
    ``rescore`` and ``keys_of``. ``with index: …`` closes it at the end."""

    output: str
    version: str
    manifest: IndexManifest
    params: SearchParams  # the version's recorded defaults; search(params=…) overrides

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release what the index holds (nothing here; the actors of a distributed one)."""

    @abstractmethod
    def candidates(self, queries: np.ndarray, k: int, params: SearchParams) -> list[Candidates]:
        """Every shard's candidates for prepared ``queries``."""

    @abstractmethod
    def rescore(self, queries: np.ndarray, cut: Merged) -> np.ndarray:
        """(nq, m) float32: the refinement scores of the ``cut``'s entries."""

    @abstractmethod
    def keys_of(self, wanted: dict[int, np.ndarray]) -> dict[int, dict[int, str]]:
        """shard -> {position: key} for the ``wanted`` positions."""

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        prepared: bool = False,
    ) -> SearchResult:
        """Top-``k`` per query (nq, d), best first, merged across shards; ``prepared``: the
        queries are already in the version's space (``prepare_queries``)."""
        return search_shards(
            queries, k, params or self.params, self.manifest,
            lambda q: self.prepare_queries(q, prepared),
            self.candidates, self.rescore, self.keys_of,
        )  # fmt: skip

    def set_nprobe(self, nprobe: int) -> None:
        """IVF cells visited per query from now on (the manifest's value until then)."""
        self.params = self.params.with_overrides(nprobe=nprobe)

    @cached_property
    def whitening(self) -> Whitening | None:
        """The version's learned whitening (its copy in the version folder), read on
        first use: serving actors, which only get prepared queries, never read it."""
        record = self.manifest.whitening
        if record is None:
            return None
        uri = join(self.output, self.manifest.version, record.file)
        return Whitening.from_bytes(read_bytes(uri), uri)

    def prepare_queries(self, queries: np.ndarray, prepared: bool = False) -> np.ndarray:
        """Descriptors as extracted -> (nq, d) float32 in this version's space (its whitening);
        ``prepared``: already in that space (expanded queries, stored vectors): checked only."""
        return prepare_queries(queries, self.manifest, None if prepared else self.whitening)

    def check_queries(self, identity: dict[str, str], source: str) -> None:
        """Refuse query descriptors of another model or configuration than the index's (their
        Parquet metadata, ``source``): scores across two descriptor spaces mean nothing."""
        check_queries(self.version, self.manifest, identity, source)


class ShardedIndex(VersionIndex):
    """A version's shards in this process. ``lazy``: only the id tables stay in memory and each
    search loads one shard's FAISS index at a time (indexes larger than RAM, at the price of
    reading every shard per search)."""

    def __init__(
        self,
        output: str,
        version: str,
        manifest: IndexManifest,
        shards: list[IndexShard],
        params: SearchParams,
        lazy: bool = False,
    ) -> None:
        self.output = output
        self.version = version
        self.manifest = manifest
        self.params = params  # the version's recorded defaults; search(params=…) overrides
        self.lazy = lazy
        self._shards = shards
        self._exact = is_exact(manifest.factory, manifest.dim)

    @classmethod
    def load(
        cls,
        output: str,
        version: str | None = None,
        use_gpu: bool | None = None,
        lazy: bool = False,
        shards: list[int] | None = None,
    ) -> ShardedIndex:
        """Version ``version`` (default LATEST) of the index at ``output``; ``shards``: only
        these shard numbers (an actor's share); ``use_gpu`` None: the GPU when faiss has GPU
        support and sees one (False: the CPU)."""
        version, manifest = resolve_version(output, version)
        return cls.from_manifest(output, manifest, use_gpu, lazy, shards)

    @classmethod
    def from_manifest(
        cls,
        output: str,
        manifest: IndexManifest,
        use_gpu: bool | None = None,
        lazy: bool = False,
        shards: list[int] | None = None,
    ) -> ShardedIndex:
        """The version ``manifest`` describes, also one not published yet (its manifest not
        written: the build's DBA searches the version it is building)."""
        on_gpu = gpu.resolve_gpu(use_gpu)
        numbers = range(manifest.shards) if shards is None else shards
        if lazy:
            loaded = [
                IndexShard(n, None, read_id_table(output, manifest, n), 0, on_gpu) for n in numbers
            ]
        else:
            loaded = [IndexShard.load(output, manifest, n, on_gpu) for n in numbers]
        return cls(
            output,
            manifest.version,
            manifest,
            loaded,
            manifest.search_defaults(),
            lazy,
        )

    # -- search -----------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self._shards)

    @property
    def exact(self) -> bool:
        """True when every shard is a flat (exhaustive) index: scores and ranks are exact."""
        return self._exact

    def _visit(self, shard: IndexShard) -> IndexShard:
        if shard.index is None:
            shard.attach(read_shard_index(self.output, self.manifest, shard.number)[0])
        return shard

    def _done(self, shard: IndexShard) -> None:
        if self.lazy:
            shard.release()

    def candidates(self, queries: np.ndarray, k: int, params: SearchParams) -> list[Candidates]:
        """Every held shard's candidates for prepared ``queries``."""
        out = []
        for shard in self._shards:
            out.append(self._visit(shard).candidates(queries, k, params))
            self._done(shard)
        return out

    def rescore(self, queries: np.ndarray, cut: Merged) -> np.ndarray:
        """(nq, m) float32: the refinement scores of the ``cut``'s entries in held shards
        (-inf for the others)."""
        out = np.full(cut.scores.shape, -np.inf, dtype=np.float32)
        for shard in self._shards:
            mine = cut.shards == shard.number
            if mine.any():
                positions = np.where(mine, cut.positions, -1)
                out[mine] = self._visit(shard).rescore(queries, positions)[mine]
                self._done(shard)
        return out

    @property
    def held(self) -> list[IndexShard]:
        """The shards this object holds (all of the version's, or an actor's share)."""
        return self._shards

    def keys_of(self, wanted: dict[int, np.ndarray]) -> dict[int, dict[int, str]]:
        """shard -> {position: key} for the ``wanted`` positions of held shards."""
        held = {s.number: s for s in self._shards}
        return {
            s: dict(zip(pos.tolist(), held[s].keys_at(pos), strict=True))
            for s, pos in wanted.items()
        }

    def count_above(
        self, queries: np.ndarray, thresholds: np.ndarray, prepared: bool = False
    ) -> np.ndarray:
        """(nq, m) int64: vectors scoring strictly above ``thresholds[q, j]`` for query q
        (exact; flat indexes only)."""
        if not self.exact:
            raise ValueError("exact counts need a flat index")
        q = self.prepare_queries(queries, prepared)
        counts = np.zeros(thresholds.shape, dtype=np.int64)
        for shard in self._shards:
            counts += self._visit(shard).count_above(q, thresholds)
            self._done(shard)
        return counts

    def stored_vectors(self) -> StoredVectors:
        """The held shards' stored vectors by global id (αQE, DBA, re-ranking)."""
        shards = self._shards
        return StoredVectors(
            [s.index for s in shards],
            [s.ids for s in shards],
            int(self.manifest.dim),
            lambda s: shards[s].vectors(),
        )
