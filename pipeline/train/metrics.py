"""A training log point: loss, accuracy and throughput since the previous one, combined over the
workers; recorded in the run's history, reported to Ray Train and published as Ray metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.runtime import metrics


@dataclass(frozen=True)
class TrainMetrics:
    step: int  # optimiser steps done
    epoch: int
    lr: float
    loss: float  # mean ArcFace loss over the samples since the previous log point
    accuracy: float  # argmax of cos θ (no margin) equals the label
    samples: int
    replaced_samples: int  # undecodable images replaced by a batch-mate
    images_per_s_per_worker: list[float]  # by rank
    data_wait_fraction: float  # the largest share of time a worker waited for input
    # Samples left out since the run (re)started, by reason, all workers: bad_label,
    # bad_image (header unreadable or over the pixel limit), undecodable (replaced in its
    # batch), and the shard reader's problems (duplicate_key, link_member, ...).
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainMetrics:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def reported(self) -> dict[str, Any]:
        """The scalars reported to Ray Train (one per metric: the slowest worker's rate)."""
        out = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("images_per_s_per_worker", "skipped")
        }
        out["skipped_samples"] = sum(self.skipped.values())
        out["images_per_s_per_worker_min"] = min(self.images_per_s_per_worker)
        return out


def publish(point: TrainMetrics, rank: int) -> None:
    """Every worker publishes its own images/s; rank 0 the run's step, loss and accuracy."""
    metrics.set_gauge("train_rate", point.images_per_s_per_worker[rank], tags={"rank": str(rank)})
    if rank == 0:
        metrics.set_gauge("train_step", point.step)
        metrics.set_gauge("train_loss", point.loss)
        metrics.set_gauge("train_accuracy", point.accuracy)
