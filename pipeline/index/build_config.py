"""How an index is built (``IndexBuildConfig``), and which of its fields decide the content of
the shards (a change there means a full rebuild) versus how they are searched or kept.

The post-processing (whitening, DBA) decides the content too, and ``pipeline.index.plan`` compares
it by what was applied rather than by these fields: the whitening by its file's sha256 (the
same URI may hold another fit), DBA by being configured at all (it changes every stored vector
from its neighbours, so a build with DBA is always a full one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import faiss

from pipeline.index.expansion import DbaConfig
from pipeline.index.factory_choice import AUTO, FactoryPolicy
from pipeline.index.search_config import SearchParams
from pipeline.index.tuning_record import RecallTarget

METRIC = "inner_product"
# Fields whose change makes every shard different: a full rebuild.
CONTENT_FIELDS = ("factory", "shards", "train_size", "seed")
# With --factory auto, also the policy's inputs (absent from manifests of other factories, so
# that their content, and their plans, stay as they were).
AUTO_FIELDS = ("flat_below", "max_index_memory")


@dataclass(frozen=True)
class IndexBuildConfig:
    # A FAISS index_factory string: Flat, IVF4096,Flat, IVF65536,PQ64, OPQ32,IVF1024,PQ32x4fs,
    # and refined ones that re-score candidates from stored vectors: IVF1024,PQ64x4fs,RFlat
    # (float32 copy) or IVF1024,PQ64x4fs,Refine(SQ8) (8 bits per dimension); or "auto":
    # chosen per full build from N and the memory budget (pipeline.index.factory_choice).
    factory: str = "Flat"
    shards: int = 1
    # Vectors sampled uniformly at random across all input files to train the index.
    train_size: int = 100_000
    seed: int = 0
    # Versions kept (LATEST included); older ones are deleted after a successful build.
    retention: int = 3
    # Rows per streamed batch while adding.
    batch_rows: int = 65536
    # CPUs each shard-building Ray task holds; FAISS adds with as many threads. Not content:
    # the shards are the same whatever it is.
    cpus_per_task: int = 1
    # None: FAISS on the GPU when faiss has GPU support and a GPU is visible.
    use_gpu: bool | None = None
    # Search defaults recorded in the manifest (readers may override them per search).
    nprobe: int = 16
    k_factor: int = 4
    # A rebuild that finds only new input files adds them to a new version that reuses the
    # previous version's shards and trained quantizer; False: always a full rebuild.
    incremental: bool = True
    # A full rebuild (retraining the quantizer on all data) instead, once the vectors added
    # since the last full build exceed this fraction of that build's.
    max_new_fraction: float = 0.5
    # A whitening file (jobs/learn_whitening.py) applied to every stored vector and,
    # at search, to every query; and database-side augmentation (pipeline.index.dba).
    whitening: str | None = None
    dba: DbaConfig | None = None
    # --target-recall / --recall-at: the search defaults tuned on the version's own data
    # (pipeline.index.tuning) instead of nprobe and k_factor above.
    target: RecallTarget | None = None
    # --factory auto only: exact search below this many vectors; the index's memory budget.
    flat_below: int = FactoryPolicy.flat_below
    max_index_memory: int | None = None

    def __post_init__(self) -> None:
        if self.shards <= 0 or self.train_size <= 0 or self.retention <= 0:
            raise ValueError("shards, train size and retention must be positive")
        if self.cpus_per_task < 1:
            raise ValueError(f"cpus_per_task must be at least 1, not {self.cpus_per_task}")
        if self.max_new_fraction < 0:
            raise ValueError("max_new_fraction must be non-negative")
        self.search_params()  # validates nprobe and k_factor
        self.factory_policy()  # validates the auto fields
        if self.target is not None and self.dba is not None:
            raise ValueError(
                "--target-recall measures recall against exact search of the descriptors; "
                "with --dba the stored vectors are others: tune without --dba"
            )
        if self.factory == AUTO:
            return
        try:
            faiss.index_factory(
                8 if "PQ" not in self.factory else 64, self.factory, faiss.METRIC_INNER_PRODUCT
            )
        except RuntimeError as e:
            raise ValueError(f"not a FAISS index_factory string: {self.factory!r}") from e

    def search_params(self) -> SearchParams:
        return SearchParams(nprobe=self.nprobe, k_factor=self.k_factor)

    def factory_policy(self) -> FactoryPolicy:
        return FactoryPolicy(flat_below=self.flat_below, max_bytes=self.max_index_memory)

    def content(self) -> dict[str, Any]:
        """What the shards' content is a function of, besides the input files."""
        return content_of(asdict(self))


def content_of(config: dict[str, Any]) -> dict[str, Any]:
    """``content()`` of a config as recorded in a manifest."""
    names = CONTENT_FIELDS + (AUTO_FIELDS if config.get("factory") == AUTO else ())
    return {**{f: config.get(f) for f in names}, "metric": METRIC}


@cache
def is_exact(factory: str, dim: int) -> bool:
    """Whether ``factory`` makes a flat (exhaustive, exact) index."""
    probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    return isinstance(faiss.downcast_index(probe), faiss.IndexFlat)


@cache
def is_refined(factory: str, dim: int) -> bool:
    """Whether ``factory`` re-scores candidates from stored vectors (``RFlat``, ``Refine(…)``)."""
    probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    return isinstance(probe, faiss.IndexRefine)
