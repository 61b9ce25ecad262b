"""Search settings of an index and of its distributed serving: plain values, no FAISS, no Ray.

``SearchParams`` are recorded in a version's manifest at build time (the defaults its readers
use) and can be overridden per search. ``ServingConfig`` says how a version is spread over Ray
actors (``pipeline.index.serving``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SearchParams:
    """How an approximate index is searched.

    ``nprobe``: IVF cells visited per query (every shard shares one coarse quantizer, so every
    shard visits the same cells). ``k_factor``: with a refined index (``…,RFlat`` or
    ``…,Refine(SQ8)``), the ``k × k_factor`` best candidates by the compressed codes' scores,
    taken across all shards, are re-scored from the stored (Flat) or SQ8 vectors and the best
    ``k`` of those returned. Neither changes a Flat index's exact answer.
    """

    nprobe: int = 16
    k_factor: int = 4

    def __post_init__(self) -> None:
        if self.nprobe <= 0 or self.k_factor <= 0:
            raise ValueError(f"nprobe and k_factor must be positive: {self}")

    def with_overrides(
        self, nprobe: int | None = None, k_factor: int | None = None
    ) -> SearchParams:
        """These settings with the given ones replaced (None keeps the recorded value)."""
        return replace(
            self,
            nprobe=self.nprobe if nprobe is None else nprobe,
            k_factor=self.k_factor if k_factor is None else k_factor,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SearchParams:
        """The defaults recorded in a manifest's build config (older manifests: FAISS-like 1)."""
        return cls(nprobe=int(config.get("nprobe", 1)), k_factor=int(config.get("k_factor", 1)))


@dataclass(frozen=True)
class ServingConfig:
    """A version served by Ray actors, each holding some of its shards (``--distributed``)."""

    actors: int = 2
    cpus_per_actor: float = 1.0
    # 0 on CPU clusters: a num_gpus actor on a cluster without GPUs waits forever.
    gpus_per_actor: float = 0.0
    # Memory Ray reserves per actor beyond its shards' bytes (the worker, FAISS, torch, the id
    # tables); BENCHMARKS.md measures what an actor really uses.
    overhead_bytes: int = 1 << 30
    # "SPREAD" places the actors on as many nodes as possible; "DEFAULT" packs them.
    placement: str = "SPREAD"

    def __post_init__(self) -> None:
        if self.actors <= 0 or self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError(f"actors must be positive, CPUs and GPUs non-negative: {self}")
        if self.overhead_bytes < 0:
            raise ValueError("overhead_bytes must be non-negative")
        if self.placement not in ("SPREAD", "DEFAULT"):
            raise ValueError(f"placement must be SPREAD or DEFAULT, got {self.placement!r}")
