"""Typed configuration of a GLAM model.

Every field the paper leaves open is marked ``NOTE: not in paper`` with the reason for the
default; all of them are configurable so that a checkpoint trained with other choices loads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# C of conv5 per torchvision ResNet; the paper uses ResNet101. The small ones serve fast
# experiments and tests (their conv5 has 512 channels).
BACKBONE_CHANNELS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
}

SpatialActivation = Literal["none", "sigmoid"]
# Table 4 of the paper: the baseline (GeM on the backbone), +local, +global, and the full model.
Attention = Literal["none", "local", "global", "global-local"]
ATTENTION_VARIANTS: tuple[str, ...] = ("none", "local", "global", "global-local")
StreamFusion = Literal["residual", "stream"]

# Fields added after the first release, with the value every earlier model had: written only
# when they differ from it, so a model made before them keeps its identity (output
# fingerprints, the index's descriptor model) and an old checkpoint loads as what it was.
_LATER_FIELDS: dict[str, object] = {
    "attention": "global-local",
    "single_stream_fusion": "residual",
    "head_prenorm": False,
    "fc_bias": False,
    "input_mean": None,
    "input_std": None,
}


@dataclass(frozen=True)
class GlamConfig:
    """Architecture of ResNet-GLAM (Song, Han, Avrithis, WACV 2022, arXiv 2107.08000)."""

    # torchvision ResNet whose conv5 (layer4, stride 32) output is F.
    backbone: str = "resnet101"
    # Output descriptor dimension: FC 2048 -> dim after GeM (paper §3.5: 512).
    dim: int = 512
    # NOTE: not in paper: c' (reduced channels of both spatial attentions) is not stated;
    # C/8 = 256 follows the non-local / CBAM reduction habit and keeps A_s^g cheap.
    reduced_channels: int = 256
    # Kernel of the ECA-style Conv1d in the local channel attention (paper: k = 3).
    local_channel_kernel: int = 3
    # Kernel of the two Conv1d branches (Q_c, K_c) of the global channel attention.
    # NOTE: not in paper: the global branch's k is not stated separately; we reuse the
    # local channel attention's k = 3 since the paper builds both from ECA.
    global_channel_kernel: int = 3
    # NOTE: not in paper: the text says dilations 1, 2, 3 while a figure caption says 1, 3, 5;
    # we follow the text.
    dilations: tuple[int, ...] = (1, 2, 3)
    # NOTE: not in paper: no activation is mentioned after the local spatial map A_s^l, so
    # none is applied by default; "sigmoid" bounds it to (0, 1) as CBAM does.
    local_spatial_activation: SpatialActivation = "none"
    # NOTE: not in paper: no softmax temperature or 1/sqrt(d) scaling is mentioned for
    # A_c^g = softmax(K_c^T Q_c) or A_s^g = softmax(K_s^T Q_s); both default to 1.
    channel_softmax_scale: float = 1.0
    spatial_softmax_scale: float = 1.0
    # GeM exponent p, learnable (paper: p = 3).
    gem_p: float = 3.0
    gem_eps: float = 1e-6
    # Dropout before the FC, active in training only.
    # NOTE: not in paper: the rate is not stated; 0 keeps eval and train heads identical.
    dropout: float = 0.0
    # Which attention the model has (paper Table 4): "none" is the baseline GeM -> FC -> BN ->
    # L2 on the backbone with no attention module at all; "local" and "global" keep one
    # stream (§3.1 or §3.2); "global-local" is the paper's model (Eq. 7).
    attention: Attention = "global-local"
    # NOTE: not in paper: Table 4 does not say how a single stream meets the head. "residual"
    # is Eq. 7 without the absent stream's term, w_x F^x + w F with the softmax over the two
    # remaining weights (the full model's residual path kept); "stream" is F^x alone.
    single_stream_fusion: StreamFusion = "residual"
    # L2-normalise the GeM vector before the FC. Not part of GLAM: converted networks need it
    # (cirtorch applies its whitening to the unit GeM vector), and so does a PCA-whitening
    # fitted on unit descriptors when it becomes the FC (jobs/learn_whitening.py).
    head_prenorm: bool = False
    # A bias in the FC (the paper's FC has none: the batch norm after it has one). Converted
    # whitening needs it: P(x - m) = Px - Pm.
    fc_bias: bool = False
    # The input normalisation the weights expect (mean and std of the [0, 1] RGB channels);
    # None: ImageNet's, which is what extraction produces. Otherwise the model maps its
    # ImageNet-normalised input to this one itself (glam.input_norm), so extraction needs no
    # other setting. Converted checkpoints set it from the source's own metadata.
    input_mean: tuple[float, float, float] | None = None
    input_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_CHANNELS:
            raise ValueError(
                f"backbone must be one of {sorted(BACKBONE_CHANNELS)}, got {self.backbone!r}"
            )
        for name in ("dim", "reduced_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("local_channel_kernel", "global_channel_kernel"):
            k = getattr(self, name)
            if k <= 0 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd integer, got {k}")
        if not self.dilations or any(d <= 0 for d in self.dilations):
            raise ValueError(f"dilations must be positive integers, got {self.dilations}")
        if self.local_spatial_activation not in ("none", "sigmoid"):
            raise ValueError(
                "local_spatial_activation must be 'none' or 'sigmoid', "
                f"got {self.local_spatial_activation!r}"
            )
        for name in ("channel_softmax_scale", "spatial_softmax_scale", "gem_p"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTION_VARIANTS)}, got {self.attention!r}"
            )
        if self.single_stream_fusion not in ("residual", "stream"):
            raise ValueError(
                "single_stream_fusion must be 'residual' or 'stream', "
                f"got {self.single_stream_fusion!r}"
            )
        if (self.input_mean is None) != (self.input_std is None):
            raise ValueError("input_mean and input_std are given together or not at all")
        for name in ("input_mean", "input_std"):
            v = getattr(self, name)
            if v is not None and (len(v) != 3 or not all(math.isfinite(x) for x in v)):
                raise ValueError(f"{name} must be three finite numbers, got {v}")
        if self.input_std is not None and min(self.input_std) <= 0:
            raise ValueError(f"input_std must be positive, got {self.input_std}")

    @property
    def channels(self) -> int:
        """C, the channel count of the backbone output F."""
        return BACKBONE_CHANNELS[self.backbone]

    @property
    def uses_local(self) -> bool:
        return self.attention in ("local", "global-local")

    @property
    def uses_global(self) -> bool:
        return self.attention in ("global", "global-local")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GlamConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GlamConfig fields: {sorted(unknown)}")
        kw = dict(d)
        for name in ("dilations", "input_mean", "input_std"):
            if kw.get(name) is not None:
                kw[name] = tuple(kw[name])
        return cls(**kw)


DEFAULT_SCALES: tuple[float, ...] = (1 / math.sqrt(2), 1.0, math.sqrt(2))


@dataclass(frozen=True)
class ExtractConfig:
    """How descriptors are extracted at test time (paper §4: multi-resolution test)."""

    # Scales of the input image (its longer side set by decode or ``preprocess``); descriptors
    # are averaged over them, then L2-normalised.
    scales: tuple[float, ...] = field(default=DEFAULT_SCALES)
    # "fp32" or "bf16" (autocast; descriptors are returned in fp32).
    precision: Literal["fp32", "bf16"] = "fp32"
    # channels_last memory format for the convolutions (faster on CPU and tensor cores).
    channels_last: bool = True
    # Fold the backbone's batch norms into its convolutions (same function, fewer passes).
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        if not self.scales or any(not (math.isfinite(s) and s > 0) for s in self.scales):
            raise ValueError(f"scales must be positive finite numbers, got {self.scales}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
