"""What a version records about its search settings beyond the build's flags: the recall target
it was tuned for (``RecallTarget``, part of the build configuration), the measured curve
(``TuningPoint``) and the setting chosen (``SearchTuning``, the manifest's ``tuning`` section),
and how ``auto`` chose the factory (``FactoryChoice``). Plain values: no FAISS, no Ray, so the
read side of an index loads them with the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.index.search_config import SearchParams


@dataclass(frozen=True)
class RecallTarget:
    """``--target-recall R --recall-at K``: tune the version's search defaults on its own data
    until recall@K against exact search reaches ``recall``."""

    recall: float
    k: int = 100  # recall@k: the share of the exact top-k found in the top-k
    # Held-out queries drawn from the indexed descriptors (each one's own id excluded).
    # NOTE: not in the issue: 300 keeps the tuning near a tenth of a 1M build on 2 cores
    # while recall@100's standard error stays below 0.005 (BENCHMARKS.md).
    queries: int = 300
    # A setting meets R when its mean recall minus ``z`` standard errors of that mean does:
    # NOTE: not in the issue: a one-sided 95% bound (z = 1.645), so that queries the tuner
    # did not see meet R too, not only its own sample.
    z: float = 1.645

    def __post_init__(self) -> None:
        if not 0 < self.recall <= 1:
            raise ValueError(f"target recall must be in (0, 1], got {self.recall}")
        if self.k < 1 or self.queries < 2:
            raise ValueError(f"recall@k needs k >= 1 and at least 2 queries: {self}")
        if self.z < 0:
            raise ValueError(f"z must be non-negative, got {self.z}")


@dataclass(frozen=True)
class TuningPoint:
    """One setting measured on the held-out queries."""

    nprobe: int
    k_factor: int
    recall_at_1: float
    recall_at_10: float
    recall_at_k: float  # at the target's k
    recall_bound: float  # recall_at_k minus z standard errors: what the choice compares with R
    cost: float  # the cost model's estimate (the choice's order; deterministic)
    seconds_per_query: float  # measured here: reported, never used to choose

    @property
    def params(self) -> SearchParams:
        return SearchParams(self.nprobe, self.k_factor)


@dataclass(frozen=True)
class SearchTuning:
    """The manifest's ``tuning`` section: the version's search default and how it was found."""

    target: float
    k: int
    queries: int
    seed: int  # of the held-out sample
    reached: bool
    chosen: TuningPoint  # the cheapest point meeting the target, else the best one reached
    curve: list[TuningPoint] = field(default_factory=list)  # cheap to dear, as measured
    seconds: float = 0.0  # the tuning's own time (exact search, sweep)
    # "tuned", "re-checked" (an inherited setting still met R on a fresh sample),
    # "re-tuned" (it did not) or "exact" (a flat index: nothing to tune).
    how: str = "tuned"
    suggestion: str = ""  # when not reached: the factory to use instead, and why

    @property
    def params(self) -> SearchParams:
        return self.chosen.params

    def promise(self) -> str:
        """The recall the tuned setting reached, against what was asked."""
        verdict = "meets" if self.reached else "below"
        return (
            f"recall@{self.k} {self.chosen.recall_at_k:.3f} ({verdict} target {self.target:g}; "
            f"{self.how} on {self.queries} held-out queries)"
        )

    def summary(self) -> str:
        """One line: the tuned setting and what it promises (and, short of the target, the
        factory to use instead)."""
        if self.how == "exact":
            return f"exact search (Flat): recall@{self.k} 1, nothing to tune"
        c = self.chosen
        line = f"nprobe {c.nprobe}, k_factor {c.k_factor}: {self.promise()}"
        return line if self.reached else f"{line}; {self.suggestion}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchTuning:
        points = [TuningPoint(**p) for p in d.get("curve", [])]
        return cls(**{**d, "chosen": TuningPoint(**d["chosen"]), "curve": points})


@dataclass(frozen=True)
class FactoryChoice:
    """What ``--factory auto`` chose for a full build, and why (logged and in the manifest)."""

    factory: str
    reason: str
    vectors: int  # N it was chosen for
    estimated_bytes: int  # the index's memory by the choice's own estimate
    max_bytes: int | None  # the budget (--max-index-memory)
