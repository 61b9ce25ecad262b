"""Typed configuration of a training job and the fingerprint that guards its output folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from glam.config import GlamConfig
from glam.preprocess import DEFAULT_MAX_PIXELS
from glam.recipe import TrainConfig
from pipeline.datasets.train_manifest import TrainDataset
from pipeline.io.storage import check_output_folder, check_uri


@dataclass(frozen=True)
class TrainJob:
    input: str  # shard URI pattern (brace ranges, globs) of labelled WebDataset shards
    output: str  # run folder: checkpoints/, glam.safetensors, _train.json
    train: TrainConfig = field(default_factory=TrainConfig)
    glam: GlamConfig = field(default_factory=GlamConfig)
    # Starting weights: "imagenet" (paper §4), "random", or a GLAM checkpoint URI (fine-tune).
    weights: str = "imagenet"
    seed: int = 0
    # Workers (one per GPU by default); on a CPU cluster, CPU workers.
    workers: int | None = None
    device: Literal["auto", "gpu", "cpu"] = "auto"
    # CPUs per worker (decode threads); None: the cluster's CPUs shared out, at most 16 per GPU.
    cpus_per_worker: float | None = None
    # Override / replace the dataset manifest.
    num_classes: int | None = None
    samples_per_epoch: int | None = None
    # Checkpoint every N optimiser steps, and at every epoch end.
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # Worker-group restarts from the last checkpoint before the run fails.
    max_failures: int = 3
    log_every: int = 50
    max_pixels: int = DEFAULT_MAX_PIXELS
    shuffle_buffer: int = 1000
    # Decode/augment threads per worker (None: the worker's CPUs).
    decode_threads: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        for uri in (self.input, self.output, self.weights):
            check_uri(uri)
        check_output_folder(self.output, self.input.rsplit("/", 1)[0], "training shards")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "max_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")
        if self.workers is not None and self.workers <= 0:
            raise ValueError(f"workers must be positive, got {self.workers}")
        if self.max_failures < 0 or self.shuffle_buffer < 0:
            raise ValueError("max failures and shuffle buffer must be >= 0")
        if self.device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"device must be auto, gpu or cpu, got {self.device!r}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError("cpus per worker must be positive")
        if self.decode_threads is not None and self.decode_threads <= 0:
            raise ValueError("decode threads must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        d["glam"] = self.glam.to_dict()
        normalised: dict[str, Any] = json.loads(json.dumps(d))
        return normalised

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        kw = dict(d)
        kw["train"] = TrainConfig.from_dict(kw["train"])
        kw["glam"] = GlamConfig.from_dict(kw["glam"])
        return cls(**kw)


def fingerprint(job: TrainJob, dataset: TrainDataset, world: int) -> dict[str, Any]:
    """Everything that changes the trained weights; a run folder resumes only on a match.

    Logging, checkpoint cadence, retries and thread counts are left out: they change nothing.
    """
    fp = {
        "model": "GLAM",
        "glam_config": job.glam.to_dict(),
        "train_config": job.train.to_dict(),
        "weights": job.weights,
        "seed": job.seed,
        "shards": list(dataset.shards),
        "num_classes": dataset.num_classes,
        "samples_per_epoch": dataset.num_samples,
        "workers": world,
        "max_pixels": job.max_pixels,
        "shuffle_buffer": job.shuffle_buffer,
    }
    normalised: dict[str, Any] = json.loads(json.dumps(fp))
    return normalised
