"""The training recipe of GLAM (paper §4: GLDv2-clean, ArcFace, SGD), as a typed config.

Every value the paper states is the default; every value it leaves open is marked
``NOTE: not in paper`` with the reason, and is configurable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "constant"]

# NOTE: not in paper: the group-size sampling's aspect ratios (W/H) are not listed; these
# cover GLDv2's common portrait and landscape shapes, 1:2 to 2:1.
DEFAULT_ASPECT_RATIOS: tuple[float, ...] = (1 / 2, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 2.0)


@dataclass(frozen=True)
class AugmentConfig:
    """Paper §4: "scaling, random crop and illumination change"; the magnitudes are ours."""

    # NOTE: not in paper: the image is scaled to cover its group's size times a factor drawn
    # from [1, max_zoom], then randomly cropped to that size; 1.25 keeps >= 64% of the area.
    max_zoom: float = 1.25
    # NOTE: not in paper: illumination change as brightness / contrast / saturation factors
    # drawn from [1 - j, 1 + j] (ColorJitter's parametrisation), j = 0.2 each.
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_zoom) and self.max_zoom >= 1.0):
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (identical on every worker)."""

    # SGD with the paper's values (§4): lr 1e-3, momentum 0.9, weight decay 1e-5.
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    # Global batch size (paper: 64), split evenly over the workers.
    batch_size: int = 64
    # ArcFace margin m (paper: 0.3).
    arcface_margin: float = 0.3
    # NOTE: not in paper: the ArcFace scale s is not stated; 30 is the common choice for
    # landmark retrieval with ArcFace (e.g. Yokoo et al., whose recipe GLAM follows).
    arcface_scale: float = 30.0
    # NOTE: not in paper: the training resolution is not stated; the longer side of every
    # group-size batch is 512, the usual GLDv2 training size at this batch size.
    image_size: int = 512
    # Group-size sampling (Yokoo et al.): each batch holds images of one aspect-ratio group.
    aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS
    # NOTE: not in paper: neither the epoch count nor the schedule is stated; 10 epochs with
    # cosine decay to 0 (no warm-up) as in Yokoo et al.; "constant" keeps lr fixed.
    epochs: int = 10
    lr_schedule: Schedule = "cosine"
    # "auto": bf16 autocast on GPUs that support it, else fp16 with loss scaling; fp32 on CPUs
    # (paper §4: mixed precision).
    precision: Precision = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("lr", "arcface_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise ValueError("batch_size and epochs must be positive")
        if not 0.0 <= self.arcface_margin < math.pi / 2:
            raise ValueError(f"arcface_margin must be in [0, π/2), got {self.arcface_margin}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not self.aspect_ratios or any(
            not (math.isfinite(r) and r > 0) for r in self.aspect_ratios
        ):
            raise ValueError(f"aspect_ratios must be positive numbers, got {self.aspect_ratios}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aspect_ratios"] = list(self.aspect_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        kw = dict(d)
        if "aspect_ratios" in kw:
            kw["aspect_ratios"] = tuple(kw["aspect_ratios"])
        if isinstance(kw.get("augment"), dict):
            kw["augment"] = AugmentConfig(**kw["augment"])
        return cls(**kw)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """lr before optimiser step ``step`` (0-based): constant, or η·(1 + cos(π t/T))/2."""
    if config.lr_schedule == "constant" or total_steps <= 0:
        return config.lr
    t = min(max(step, 0), total_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * t / total_steps))


def build_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter (paper §4)."""
    return torch.optim.SGD(
        list(params), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``config.precision`` on ``device`` (None: plain fp32)."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    if config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
