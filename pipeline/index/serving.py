"""Serving a version from Ray actors: each actor holds some of its shards, placed across the
cluster's nodes; a query fans out to every actor and their candidates are merged into the
top-k, exactly as ``ShardedIndex`` merges its own shards (``pipeline.index.merge``).

    with DistributedIndex.start("s3://b/indexes/r1m", serving=ServingConfig(actors=4)) as index:
        result = index.search(queries, k=100)

Shards are shared out by size (largest first to the least-loaded actor). Each actor asks Ray
for its shards' bytes plus ``ServingConfig.overhead_bytes`` of memory, so Ray places no more
actors on a node than its memory holds; ``placement="SPREAD"`` puts them on as many nodes as
possible. An actor reads its shards straight from storage (not through the driver).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from pipeline.index.build_config import is_exact
from pipeline.index.merge import Merged
from pipeline.index.plan import balance
from pipeline.index.search import (
    ShardedIndex,
    VersionIndex,
    resolve_version,
)
from pipeline.index.search_config import SearchParams, ServingConfig
from pipeline.index.shard import Candidates
from pipeline.index.vectors import StoredVectors
from pipeline.index.versions import IndexManifest, shard_file
from pipeline.io.storage import filesystem
from pipeline.runtime.memory import rss_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorMemory:
    """What one serving actor holds and what it costs."""

    node: str
    pid: int
    shards: list[int]
    shard_bytes: int  # the FAISS files it loaded
    rss_before_load: int  # the worker with its imports, before any shard
    rss: int  # now


class ShardServer:
    """A Ray actor holding shards ``shards`` of a version (plain class: testable without Ray)."""

    def __init__(self, output: str, version: str, shards: list[int], use_gpu: bool | None) -> None:
        self.rss_before_load = rss_bytes()
        self.index = ShardedIndex.load(output, version, use_gpu=use_gpu, shards=shards)
        self.stored: StoredVectors | None = None  # built on the first vectors() call

    def ready(self) -> int:
        return self.index.ntotal

    def candidates(self, queries: np.ndarray, k: int, params: SearchParams) -> list[Candidates]:
        return self.index.candidates(queries, k, params)

    def rescore(self, queries: np.ndarray, cut: Merged) -> np.ndarray:
        return self.index.rescore(queries, cut)

    def keys(self, wanted: dict[int, np.ndarray]) -> dict[int, dict[int, str]]:
        return self.index.keys_of(wanted)

    def count_above(self, queries: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        return self.index.count_above(queries, thresholds, prepared=True)

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of the ``ids`` this actor holds (``StoredVectors.gather``)."""
        if self.stored is None:
            self.stored = self.index.stored_vectors()
        return self.stored.gather(ids)

    def memory(self) -> ActorMemory:
        return ActorMemory(
            node=ray.get_runtime_context().get_node_id(),
            pid=os.getpid(),
            shards=[s.number for s in self.index.held],
            shard_bytes=sum(s.nbytes for s in self.index.held),
            rss_before_load=self.rss_before_load,
            rss=rss_bytes(),
        )


def shard_sizes(output: str, manifest: IndexManifest) -> list[int]:
    """Bytes of each shard's FAISS file."""
    sizes = []
    for n in range(manifest.shards):
        fs, path = filesystem(shard_file(output, manifest, n))
        sizes.append(int(fs.info(path).get("size") or 0))
    return sizes


class DistributedIndex(VersionIndex):
    """A version served by Ray actors; same ``search`` / ``count_above`` / ``stored_vectors``
    as ``ShardedIndex``. Queries are prepared (whitened) here, in the driver, once."""

    def __init__(
        self,
        output: str,
        version: str,
        manifest: IndexManifest,
        actors: list[Any],
        plan: list[list[int]],
        exact: bool,
    ) -> None:
        self.output = output
        self.version = version
        self.manifest = manifest
        self.params = manifest.search_defaults()  # tuned, or the recorded flags
        self.actors = actors
        self.plan = plan  # shard numbers per actor
        self._exact = exact

    @classmethod
    def start(
        cls,
        output: str,
        version: str | None = None,
        serving: ServingConfig | None = None,
        use_gpu: bool | None = None,
    ) -> DistributedIndex:
        """Start the actors of ``version`` (default LATEST) on the connected Ray cluster and
        wait until every one has loaded its shards."""
        serving = serving or ServingConfig()
        version, manifest = resolve_version(output, version)
        sizes = shard_sizes(output, manifest)
        plan = [group for group in balance(sizes, serving.actors) if group]
        if use_gpu and serving.gpus_per_actor == 0:
            raise ValueError("GPU search across actors needs gpus_per_actor > 0 (--gpus-per-actor)")
        on_gpu = None if serving.gpus_per_actor > 0 else False
        remote: Any = ray.remote(ShardServer)
        actors: list[Any] = [
            remote.options(
                num_cpus=serving.cpus_per_actor,
                num_gpus=serving.gpus_per_actor,
                memory=sum(sizes[s] for s in group) + serving.overhead_bytes,
                scheduling_strategy=serving.placement,
            ).remote(output, version, group, on_gpu)
            for group in plan
        ]
        index = cls(
            output, version, manifest, actors, plan, is_exact(manifest.factory, manifest.dim)
        )
        try:
            loaded = ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as e:
            index.close()
            cause = str(e.cause if isinstance(e, ray.exceptions.RayTaskError) else e)
            raise RuntimeError(
                f"an index actor failed to load its shards: {_last_line(cause)}"
            ) from e
        log.info(
            "serving %s version %s from %d actors (%d vectors; shards per actor %s)",
            output, version, len(actors), sum(loaded), plan,
        )  # fmt: skip
        return index

    def close(self) -> None:
        """Stop the actors."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    @property
    def ntotal(self) -> int:
        return self.manifest.count

    @property
    def exact(self) -> bool:
        return self._exact

    # search() (VersionIndex) fans a query out to every actor and merges their answers.

    def candidates(self, q: np.ndarray, k: int, params: SearchParams) -> list[Candidates]:
        q_ref = ray.put(q)
        per_actor = ray.get([a.candidates.remote(q_ref, k, params) for a in self.actors])
        return [c for cs in per_actor for c in cs]

    def rescore(self, q: np.ndarray, cut: Merged) -> np.ndarray:
        q_ref, cut_ref = ray.put(q), ray.put(cut)
        parts = ray.get([a.rescore.remote(q_ref, cut_ref) for a in self.actors])
        return np.maximum.reduce(parts)  # each entry is held by one actor, -inf elsewhere

    def keys_of(self, wanted: dict[int, np.ndarray]) -> dict[int, dict[int, str]]:
        calls: list[Any] = []
        for actor, group in zip(self.actors, self.plan, strict=True):
            mine = {s: wanted[s] for s in group if s in wanted}
            if mine:
                calls.append(actor.keys.remote(mine))
        return {s: names for part in ray.get(calls) for s, names in part.items()}

    def count_above(
        self, queries: np.ndarray, thresholds: np.ndarray, prepared: bool = False
    ) -> np.ndarray:
        """(nq, m) int64 counts of vectors scoring strictly above ``thresholds`` (Flat only)."""
        if not self.exact:
            raise ValueError("exact counts need a flat index")
        q_ref = ray.put(self.prepare_queries(queries, prepared))
        t_ref = ray.put(thresholds)
        return np.sum(ray.get([a.count_above.remote(q_ref, t_ref) for a in self.actors]), axis=0)

    def stored_vectors(self) -> ActorVectors:
        """The version's stored vectors by global id, gathered from the actors that hold them."""
        return ActorVectors(self.actors, self.manifest.dim)

    def memory(self) -> list[ActorMemory]:
        """Per actor: node, shards, their bytes and the actor's resident memory."""
        return ray.get([a.memory.remote() for a in self.actors])


class ActorVectors:
    """``vectors(ids)`` of a version served by actors: each actor returns the vectors of the ids
    it holds (zeros for the others), summed here."""

    def __init__(self, actors: list[Any], dim: int) -> None:
        self.actors = actors
        self.dim = dim

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(..., d) float32 for ids of any shape; -1 ids give zero vectors."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((*ids.shape, self.dim), np.float32)
        found = np.zeros(ids.shape, bool)
        ids_ref = ray.put(ids)
        for vectors, held in ray.get([a.vectors.remote(ids_ref) for a in self.actors]):
            out += vectors
            found |= held
        if (~found & (ids >= 0)).any():
            raise ValueError("ids not in this index version")
        return out


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def open_index(
    output: str,
    version: str | None = None,
    serving: ServingConfig | None = None,
    use_gpu: bool | None = None,
) -> ShardedIndex | DistributedIndex:
    """The version in this process, or, with ``serving``, spread over Ray actors (the caller
    has connected to Ray). Close it (or use ``with``) to stop the actors."""
    if serving is None:
        return ShardedIndex.load(output, version, use_gpu=use_gpu)
    return DistributedIndex.start(output, version, serving, use_gpu=use_gpu)
