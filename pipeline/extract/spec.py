"""Typed configuration of an extraction run and the fingerprint that guards an output."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from glam.config import DEFAULT_SCALES
from glam.preprocess import DEFAULT_MAX_PIXELS
from pipeline.io.storage import check_output_folder, check_uri

# The largest image side accepted, and the largest side fed to the model after scaling: a
# typo such as 20000 would need tens of GB per batch and kill every actor, so it is refused.
# The paper's setting is 1024 px at scales up to √2 (1448 px).
MAX_IMAGE_SIZE = 4096
MAX_SCALED_SIDE = 6144


@dataclass(frozen=True)
class ExtractionSpec:
    """What every worker needs to turn shards into descriptors; identical on all actors."""

    # GLAM checkpoint URI, "imagenet" (backbone only) or None/"random" (seeded random).
    weights: str | None = None
    seed: int = 0
    image_size: int = 1024
    scales: tuple[float, ...] = DEFAULT_SCALES
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = 8
    # Images with more pixels are error rows ("oversized"), refused before decoding.
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Whole-shard attempts on storage or stream errors, with exponential backoff.
    shard_attempts: int = 3
    retry_backoff_s: float = 1.0
    # Decoded samples buffered ahead of the model (the reader/decoder thread's lead).
    prefetch: int = 64

    def __post_init__(self) -> None:
        if self.weights:
            check_uri(self.weights)
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"image size must be in 32..{MAX_IMAGE_SIZE} pixels, got {self.image_size}"
            )
        if not self.scales or any(not (math.isfinite(s) and s > 0) for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        largest = self.image_size * max(self.scales)
        if largest > MAX_SCALED_SIDE:
            raise ValueError(
                f"image size {self.image_size} at scale {max(self.scales)} feeds the model "
                f"{largest:.0f} px images; at most {MAX_SCALED_SIDE} px are accepted"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("batch_size", "max_pixels", "shard_attempts", "prefetch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")
        if self.retry_backoff_s < 0:
            raise ValueError("retry backoff must be >= 0")


@dataclass(frozen=True)
class ExtractionJob:
    input: str  # shard URI pattern: brace ranges and globs
    output: str  # output folder URI
    spec: ExtractionSpec = field(default_factory=ExtractionSpec)
    # Number of actors; None: one per GPU, or CPU actors when the cluster has no GPU.
    actors: int | None = None
    # Per-shard actor-death retries before the shard is reported as failed.
    max_shard_restarts: int = 3
    # auto: GPU actors when the cluster has GPUs; gpu: GPU actors even before the autoscaler
    # has started any (needs actors); cpu: CPU actors.
    device: Literal["auto", "gpu", "cpu"] = "auto"

    def __post_init__(self) -> None:
        check_uri(self.input)
        check_uri(self.output)
        check_output_folder(self.output, self.input.rsplit("/", 1)[0], "input shards")
        if self.actors is not None and self.actors <= 0:
            raise ValueError(f"actors must be positive, got {self.actors}")
        if self.device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"device must be auto, gpu or cpu, got {self.device!r}")


def fingerprint(
    spec: ExtractionSpec, glam_config: dict[str, Any], weights_sha256: str
) -> dict[str, Any]:
    """Everything that changes a descriptor or which samples error; must match to resume.

    JSON-normalised (tuples become lists) so that it compares equal to a stored copy.
    """
    fp = {
        "model": "GLAM",
        "glam_config": glam_config,
        "weights_sha256": weights_sha256,
        "image_size": spec.image_size,
        "scales": [float(s) for s in spec.scales],
        "precision": spec.precision,
        "max_pixels": spec.max_pixels,
    }
    normalised: dict[str, Any] = json.loads(json.dumps(fp))
    return normalised


def spec_dict(spec: ExtractionSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["scales"] = list(spec.scales)
    return d
