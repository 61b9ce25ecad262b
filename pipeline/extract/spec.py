"""Typed configuration of an extraction run and the fingerprint that guards an output."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from glam.config import DEFAULT_SCALES
from glam.extract import PRECISIONS
from glam.preprocess import DEFAULT_MAX_PIXELS, RESIZE_FILTERS
from pipeline.io.storage import check_output_folder, check_uri

# The largest image side accepted, and the largest side fed to the model after scaling: a
# typo such as 20000 would need tens of GB per batch and kill every actor, so it is refused.
# The paper's setting is 1024 px at scales up to √2 (1448 px).
MAX_IMAGE_SIZE = 4096
MAX_SCALED_SIDE = 6144

DECODERS = ("cpu", "gpu")


@dataclass(frozen=True)
class ExtractionSpec:
    """What every worker needs to turn shards into descriptors; identical on all actors."""

    # GLAM checkpoint URI, "imagenet" (backbone only) or None/"random" (seeded random).
    weights: str | None = None
    seed: int = 0
    image_size: int = 1024
    scales: tuple[float, ...] = DEFAULT_SCALES
    # auto: bf16 where the actor's device computes it natively, else fp32 (resolved per actor;
    # the fingerprint records the resolved one).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    batch_size: int = 8
    # Images with more pixels are error rows ("oversized"), refused before decoding.
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Whole-shard attempts on storage or stream errors, with exponential backoff.
    shard_attempts: int = 3
    retry_backoff_s: float = 1.0
    # Decoded samples buffered ahead of the model, per shard (bounds the actor's memory).
    prefetch: int = 64
    # cpu: PIL (libjpeg-turbo) in decode threads; gpu: JPEGs batched through nvjpeg on the
    # actor's GPU, anything it cannot take decoded on the CPU (resolved to cpu without CUDA).
    decode: Literal["cpu", "gpu"] = "cpu"
    # Decode threads per actor; None: the CPUs the actor holds.
    decode_workers: int | None = None
    # Decode a JPEG at least twice the largest scale's size at 1/2, 1/4 or 1/8 scale in the
    # DCT domain (never below that size). NOTE: not in paper; moves descriptors slightly.
    jpeg_draft: bool = True
    # How a query crop (an image carrying its full image's size) is sized: full_image, by the
    # full image's factor as the protocol's reference code does (cirtorch), or crop, like any
    # image (longer side image_size; the behaviour before, kept for comparison).
    query_crop_scale: Literal["full_image", "crop"] = "full_image"
    # How the longer side is brought to image_size (glam.preprocess.RESIZE_FILTERS): bilinear,
    # up or down; lanczos-shrink, cirtorch's PIL thumbnail, never enlarging (CPU decode only).
    resize: Literal["bilinear", "lanczos-shrink"] = "bilinear"

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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.query_crop_scale not in ("full_image", "crop"):
            raise ValueError(
                f"query crop scale must be full_image or crop, got {self.query_crop_scale!r}"
            )
        if self.decode not in DECODERS:
            raise ValueError(f"decode must be cpu or gpu, got {self.decode!r}")
        if self.resize not in RESIZE_FILTERS:
            raise ValueError(
                f"resize must be one of {', '.join(RESIZE_FILTERS)}, got {self.resize!r}"
            )
        if self.resize == "lanczos-shrink" and self.decode == "gpu":
            raise ValueError(
                "resize lanczos-shrink is PIL's filter, applied where images decode on the CPU: "
                "use decode cpu with it, or resize bilinear with decode gpu"
            )
        for name in ("batch_size", "max_pixels", "shard_attempts", "prefetch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")
        if self.decode_workers is not None and self.decode_workers <= 0:
            raise ValueError(f"decode workers must be positive, got {self.decode_workers}")
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

    # CPUs each actor holds (decode threads, intra-op threads); None: a GPU actor takes its
    # node's CPUs per GPU (at most MAX_CPUS_PER_GPU_ACTOR while no GPU node is up), CPU actors
    # share the cluster's CPUs.
    cpus_per_actor: float | None = None
    # Shards handed to an actor at a time: the next one is read and decoded while the current
    # one computes, and a finished one is written while the next computes.
    shards_per_actor: int = 2
    # Seconds to wait for the actors to start (GPUs an autoscaler must add, a model loaded
    # from S3), and for a failed actor to be restarted, before giving up on it.
    start_timeout_s: float = 1800.0
    restart_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        check_uri(self.input)
        check_uri(self.output)
        check_output_folder(self.output, self.input.rsplit("/", 1)[0], "input shards")
        if self.actors is not None and self.actors <= 0:
            raise ValueError(f"actors must be positive, got {self.actors}")
        if self.max_shard_restarts < 0:
            raise ValueError(f"max shard restarts must be >= 0, got {self.max_shard_restarts}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ValueError(f"cpus per actor must be positive, got {self.cpus_per_actor}")
        if self.shards_per_actor <= 0:
            raise ValueError(f"shards per actor must be positive, got {self.shards_per_actor}")
        if self.device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"device must be auto, gpu or cpu, got {self.device!r}")
        for name in ("start_timeout_s", "restart_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_s', '').replace('_', ' ')} must be positive")


def fingerprint(
    spec: ExtractionSpec,
    glam_config: dict[str, Any],
    weights_sha256: str,
    precision: str | None = None,
) -> dict[str, Any]:
    """Everything that changes a descriptor or which samples error; must match to resume.

    ``precision``: the one an actor resolved ``spec.precision`` to (default: as requested).
    JSON-normalised (tuples become lists) so that it compares equal to a stored copy.
    """
    fp = {
        "model": "GLAM",
        "glam_config": glam_config,
        "weights_sha256": weights_sha256,
        "image_size": spec.image_size,
        "scales": [float(s) for s in spec.scales],
        "precision": precision or spec.precision,
        "max_pixels": spec.max_pixels,
        "jpeg_draft": spec.jpeg_draft,
        "query_crop_scale": spec.query_crop_scale,
        "resize": spec.resize,
    }
    normalised: dict[str, Any] = json.loads(json.dumps(fp))
    return normalised


# Fingerprint keys added after outputs were first written, with the behaviour of the code
# before them: a stored fingerprint without one was made that way (query crops were sized like
# any image, every image resized bilinearly).
LATER_FINGERPRINT_KEYS = {"query_crop_scale": "crop", "resize": "bilinear"}


def stored_fingerprint(stored: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint read from an output (a marker, ``_job.json``), completed with the keys
    added since it was written (``LATER_FINGERPRINT_KEYS``); an empty one stays empty."""
    if not stored:
        return stored
    return {**LATER_FINGERPRINT_KEYS, **stored}


def draft_side(spec: ExtractionSpec) -> int | None:
    """The longer side a draft JPEG decode keeps: the largest scale's (None: draft off)."""
    return draft_side_of(spec.image_size, spec.scales, spec.jpeg_draft)


def draft_side_of(image_size: int, scales: Sequence[float], jpeg_draft: bool) -> int | None:
    """``draft_side`` from the settings an output records (search by image decodes so too)."""
    return round(image_size * max(scales)) if jpeg_draft else None


def spec_dict(spec: ExtractionSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["scales"] = list(spec.scales)
    return d
