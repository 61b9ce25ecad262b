"""Published retrieval checkpoints as GLAM checkpoints (``attention="none"``): the converted
model computes the source network's own global descriptor.

Two source layouts, each a key filter followed by a strict load that names the layout:

- ``cirtorch`` (Radenović, Tolias, Chum, TPAMI 2018; filipradenovic/cnnimageretrieval-pytorch,
  ``cirtorch/networks/imageretrievalnet.py``): ``{"state_dict", "meta"}``; the state holds
  ``features.N.*`` (torchvision's ResNet children without avgpool and fc: 0 conv1, 1 bn1,
  4-7 layer1-4), ``pool.p`` (GeM, shape (1,)) and, for networks with end-to-end whitening,
  ``whiten.weight``/``whiten.bias``; ``meta`` has ``architecture``, ``pooling``, ``mean``,
  ``std`` and may hold learned whitening ``Lw[dataset]["ss"|"ms"] = {"m", "P"}``. The network
  computes d = L2(W L2(GeM(F)) + b) with its ``whiten`` layer; ``Lw`` is applied the same way
  after the descriptor (``cirtorch/utils/whiten.py``: P (x - m), then L2). Images are PIL RGB
  normalised with ``meta["mean"]``/``meta["std"]``.
- ``cvnet``: the pycls ResNet that CVNet (Lee et al., CVPR 2022; sungonce/CVNet) and
  SuperGlobal (Shao et al., ICCV 2023; ShihaoShao-GH/SuperGlobal) publish for GLDv2-clean:
  ``model_state`` with ``encoder_q.`` + ``stem.*``, ``s1..s4.bN.{proj,bn,f.{a,b,c}{,_bn}}``,
  ``head.pool.p``, ``head.fc.{weight,bias}`` (the re-ranking network's ``conv2ds.*`` and
  ``cv_learner.*`` are dropped). Descriptor: d = L2(fc(GeM(F))) (``model/CVNet_Rerank_model.py``
  ``extract_global_descriptor``). Its bottleneck has STRIDE_1X1 = False, so the stride-2 sits
  on the 3x3 convolution as in torchvision (``model/resnet.py``). Its test loader reads images
  with cv2 (BGR) and normalises them with ImageNet's mean/std in BGR order
  (``test/dataset.py``: mean [0.406, 0.456, 0.485], std [0.225, 0.224, 0.229]): its input is
  exactly our ImageNet-normalised RGB tensor with the channel axis reversed, so reversing the
  input channels of the first convolution's weights is exact (the convolution is linear in its
  channels and zero-pads both the same) and the converted model needs no preprocessing field.

Head mapping: the source's projection becomes the FC (with the bias that centres its input:
P (x - m) = P x - P m), the batch norm is the identity (running_var = 1 - eps, so
(x - 0) / sqrt(1 - eps + eps) = x exactly), and ``head_prenorm`` reproduces cirtorch's L2 before
its whitening. A PCA whitening (``Lw``) may be cut to its first ``dim`` rows; a trained
projection (cirtorch's ``whiten`` layer, CVNet's fc) has no order of rows and is kept whole.
Without any whitening the FC is the identity (d = L2(GeM(F))): fit one with
``jobs/learn_whitening.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from glam.config import BACKBONE_CHANNELS, GlamConfig
from glam.model import GLAM
from glam.preprocess import IMAGENET_MEAN, IMAGENET_STD
from glam.weights import (
    CheckpointError,
    WeightsStore,
    load_foreign_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)

SourceFormat = Literal["cirtorch", "cvnet"]
SOURCE_FORMATS: tuple[str, ...] = ("cirtorch", "cvnet")
WhiteningMode = Literal["ss", "ms"]

# cirtorch's ``features``: the children of a torchvision ResNet up to layer4.
_CIRTORCH_FEATURES = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}
# pycls ResNet stage depths (blocks per stage s1..s4) -> torchvision name.
_PYCLS_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
_PYCLS_DROPPED = ("conv2ds.", "cv_learner.")  # CVNet's re-ranking network
_PYCLS_BLOCK = re.compile(r"s(\d)\.b(\d+)\.(.+)")
_PYCLS_BLOCK_PARTS = {
    "proj.weight": "downsample.0.weight",
    "f.a.weight": "conv1.weight",
    "f.b.weight": "conv2.weight",
    "f.c.weight": "conv3.weight",
}
_PYCLS_BLOCK_BN = {"bn": "downsample.1", "f.a_bn": "bn1", "f.b_bn": "bn2", "f.c_bn": "bn3"}


@dataclass(frozen=True)
class ConversionOptions:
    source_format: SourceFormat
    # cirtorch: the ``meta["Lw"]`` entry to use as the head (e.g. "retrieval-SfM-120k").
    whitening: str | None = None
    # cirtorch: "ms" (learned on multi-scale descriptors) or "ss" (single-scale) Lw.
    whitening_mode: WhiteningMode = "ms"
    # Rows of a PCA whitening kept (the descriptor dimension); None: all.
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.source_format not in SOURCE_FORMATS:
            raise ValueError(
                f"source format must be one of {', '.join(SOURCE_FORMATS)}, "
                f"got {self.source_format!r}"
            )
        if self.whitening_mode not in ("ss", "ms"):
            raise ValueError(f"whitening mode must be 'ss' or 'ms', got {self.whitening_mode!r}")
        if self.dim is not None and self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.whitening is not None and self.source_format != "cirtorch":
            raise ValueError("a named whitening (meta Lw) exists only in cirtorch checkpoints")


@dataclass(frozen=True)
class Head:
    """The source's projection after GeM: y = weight @ x + bias (bias None: none)."""

    weight: torch.Tensor  # (dim, C)
    bias: torch.Tensor | None  # (dim,)
    prenorm: bool  # x = L2(GeM(F)) rather than GeM(F)
    description: str


@dataclass(frozen=True)
class Converted:
    model: GLAM
    # Provenance for the checkpoint's metadata (source format, head, what was dropped).
    notes: dict[str, str]


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().double()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    raise CheckpointError(f"{what} is a {type(x).__name__}, not an array")


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _gem_p(p: torch.Tensor, source: str) -> torch.Tensor:
    if p.numel() != 1:
        raise CheckpointError(
            f"{source}: GeM with {p.numel()} exponents (one per channel, cirtorch's gemmp) "
            "is not supported; only a single p converts"
        )
    return p.reshape(())


def filter_cirtorch(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cirtorch keys -> GLAM keys; keys it does not know pass through unchanged (the strict
    load names them). ``whiten.*`` is left for the head."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _strip(key, ("module.",))
        parts = key.split(".", 2)
        if parts[0] == "features" and len(parts) == 3 and parts[1] in _CIRTORCH_FEATURES:
            out[f"backbone.{_CIRTORCH_FEATURES[parts[1]]}.{parts[2]}"] = value
        elif key == "pool.p":
            out["pool.p"] = value
        else:
            out[key] = value
    return out


def filter_pycls(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pycls (CVNet/SuperGlobal) keys -> GLAM keys; CVNet's re-ranking network is dropped;
    unknown keys pass through unchanged (the strict load names them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _strip(key, ("module.", "encoder_q."))
        if key.startswith(_PYCLS_DROPPED):
            continue
        if key == "stem.conv.weight":
            out["backbone.conv1.weight"] = value
        elif key.startswith("stem.bn."):
            out["backbone.bn1." + key[len("stem.bn.") :]] = value
        elif key == "head.pool.p":
            out["pool.p"] = value
        elif key.startswith("head.fc."):
            out["fc." + key[len("head.fc.") :]] = value
        elif m := _PYCLS_BLOCK.fullmatch(key):
            stage, block, rest = int(m[1]), int(m[2]), m[3]
            prefix = f"backbone.layer{stage}.{block - 1}."
            bn, _, field = rest.rpartition(".")
            if rest in _PYCLS_BLOCK_PARTS:
                out[prefix + _PYCLS_BLOCK_PARTS[rest]] = value
            elif bn in _PYCLS_BLOCK_BN:
                out[f"{prefix}{_PYCLS_BLOCK_BN[bn]}.{field}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    return out


def pycls_backbone(state: Mapping[str, torch.Tensor], source: str) -> str:
    """torchvision ResNet name from a pycls state's blocks per stage."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = _PYCLS_BLOCK.fullmatch(_strip(key, ("module.", "encoder_q.")))
        if m and 1 <= int(m[1]) <= 4:
            blocks[int(m[1]) - 1] = max(blocks[int(m[1]) - 1], int(m[2]))
    name = _PYCLS_DEPTHS.get(tuple(blocks))  # type: ignore[arg-type]
    if name is None:
        raise CheckpointError(
            f"{source}: pycls stages with {blocks} blocks are not a ResNet50/101/152"
        )
    return name


def identity_bn(dim: int, eps: float) -> dict[str, torch.Tensor]:
    """BatchNorm1d state that is exactly the identity in eval mode."""
    return {
        "bn.weight": torch.ones(dim),
        "bn.bias": torch.zeros(dim),
        "bn.running_mean": torch.zeros(dim),
        "bn.running_var": torch.full((dim,), 1.0 - eps),
        "bn.num_batches_tracked": torch.zeros((), dtype=torch.long),
    }


def _pca_head(lw: Mapping[str, Any], dim: int | None, source: str, what: str) -> Head:
    """cirtorch's whitenapply(x, m, P, dim) = L2(P[:dim] (x - m)) as an FC on L2(GeM)."""
    if not isinstance(lw, Mapping) or "m" not in lw or "P" not in lw:
        raise CheckpointError(f"{source}: {what} has no 'm' and 'P'")
    m = _as_tensor(lw["m"], f"{what} m").reshape(-1)  # (C,)
    p = _as_tensor(lw["P"], f"{what} P")  # (C', C), rows by decreasing variance
    if p.ndim != 2 or p.shape[1] != m.numel():
        raise CheckpointError(f"{source}: {what} P {tuple(p.shape)} does not fit m ({m.numel()},)")
    rows = p.shape[0] if dim is None else dim
    if rows > p.shape[0]:
        raise CheckpointError(f"{source}: {what} has {p.shape[0]} rows, fewer than dim {rows}")
    p = p[:rows]
    return Head(p.float(), (-(p @ m)).float(), True, f"{what} (PCA, {rows} rows)")


def _whole(dim: int | None, rows: int, what: str) -> None:
    if dim is not None and dim != rows:
        raise ValueError(
            f"{what} is a trained projection: its rows have no order, so it cannot be cut to "
            f"dim {dim} (it has {rows}); convert it whole and fit a PCA-whitening on top with "
            "jobs/learn_whitening.py"
        )


def cirtorch_head(
    state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], opts: ConversionOptions, src: str
) -> Head:
    channels = BACKBONE_CHANNELS[str(meta["architecture"])]
    if "whiten.weight" in state:
        if opts.whitening is not None:
            raise ValueError(
                f"{src} whitens with its own end-to-end layer; its Lw entries apply after it "
                "and cannot also be the FC: convert without --whitening"
            )
        w = state["whiten.weight"].double()
        _whole(opts.dim, w.shape[0], "cirtorch's whiten layer")
        bias = state.get("whiten.bias")
        return Head(
            w.float(),
            None if bias is None else bias.float(),
            True,
            "whiten layer (end-to-end)",
        )
    if opts.whitening is not None:
        lws = meta.get("Lw") or {}
        if opts.whitening not in lws:
            raise ValueError(
                f"{src} has no learned whitening {opts.whitening!r} in meta['Lw'] "
                f"(it has: {', '.join(sorted(lws)) or 'none'})"
            )
        entry = lws[opts.whitening]
        if opts.whitening_mode not in entry:
            raise ValueError(f"{src}: Lw[{opts.whitening!r}] has no {opts.whitening_mode!r}")
        return _pca_head(
            entry[opts.whitening_mode],
            opts.dim,
            src,
            f"Lw[{opts.whitening!r}][{opts.whitening_mode!r}]",
        )
    _whole(opts.dim, channels, "the identity head (no whitening)")
    return Head(torch.eye(channels), None, False, "none (identity FC)")


def _check_cirtorch_meta(meta: Mapping[str, Any], src: str) -> str:
    arch = str(meta.get("architecture", ""))
    if arch not in BACKBONE_CHANNELS:
        raise CheckpointError(
            f"{src}: cirtorch architecture {arch!r} is not a torchvision ResNet "
            f"({', '.join(sorted(BACKBONE_CHANNELS))}): only ResNet GeM networks convert"
        )
    pooling = str(meta.get("pooling", ""))
    if pooling != "gem":
        raise CheckpointError(f"{src}: cirtorch pooling {pooling!r}: only 'gem' converts")
    for flag in ("local_whitening", "regional"):
        if meta.get(flag):
            raise CheckpointError(f"{src}: cirtorch networks with {flag} do not convert")
    return arch


def _normalisation(meta: Mapping[str, Any]) -> dict[str, Any]:
    """GlamConfig input fields from cirtorch's meta mean/std (none when ImageNet's)."""
    mean = tuple(float(x) for x in meta.get("mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in meta.get("std", IMAGENET_STD))
    if np.allclose(mean, IMAGENET_MEAN, atol=1e-6) and np.allclose(std, IMAGENET_STD, atol=1e-6):
        return {}
    return {"input_mean": mean, "input_std": std}


def _unwrap(obj: Any, keys: tuple[str, ...], src: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, the rest of the top-level mapping) of a checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{src}: expected a mapping, found a {type(obj).__name__}")
    for key in keys:
        if key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
    return dict(obj), {}


def _build(
    config: GlamConfig,
    state: dict[str, torch.Tensor],
    head: Head,
    src: str,
    layout: str,
) -> GLAM:
    """The converted model, loaded strictly: a mismatch names the source layout."""
    state = dict(state)
    if "pool.p" in state:
        state["pool.p"] = _gem_p(state["pool.p"], src)
    state["fc.weight"] = head.weight
    if head.bias is not None:
        state["fc.bias"] = head.bias
    model = GLAM(config)
    state.update(identity_bn(config.dim, model.bn.eps))
    # num_batches_tracked counts training steps and changes nothing in eval; files saved by
    # torch < 0.4.1 lack it.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    load_state_dict_strict(model, state, source=f"{src} ({layout} layout)")
    return model.eval()


def _config(backbone: str, head: Head, **extra: Any) -> GlamConfig:
    return GlamConfig(
        backbone=backbone,
        dim=head.weight.shape[0],
        attention="none",
        head_prenorm=head.prenorm,
        fc_bias=head.bias is not None,
        **extra,
    )


def convert_cirtorch(obj: Any, opts: ConversionOptions, src: str) -> Converted:
    state, rest = _unwrap(obj, ("state_dict",), src)
    meta = rest.get("meta")
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{src}: no 'meta' beside the state dict: not a cirtorch network")
    arch = _check_cirtorch_meta(meta, src)
    mapped = filter_cirtorch(state)
    head = cirtorch_head(mapped, meta, opts, src)
    mapped = {k: v for k, v in mapped.items() if not k.startswith("whiten.")}
    config = _config(arch, head, **_normalisation(meta))
    model = _build(config, mapped, head, src, "cirtorch")
    notes = {"source_format": "cirtorch", "head": head.description, "backbone": arch}
    if "input_mean" in config.to_dict():
        notes["input_normalisation"] = f"mean {config.input_mean}, std {config.input_std}"
    return Converted(model, notes)


def convert_pycls(obj: Any, opts: ConversionOptions, src: str) -> Converted:
    state, _ = _unwrap(obj, ("model_state", "state_dict", "model"), src)
    backbone = pycls_backbone(state, src)
    mapped = filter_pycls(state)
    if "fc.weight" not in mapped:
        raise CheckpointError(f"{src} (pycls layout) has no head.fc: not a CVNet global model")
    weight = mapped.pop("fc.weight").float()
    bias = mapped.pop("fc.bias", None)
    _whole(opts.dim, weight.shape[0], "CVNet's fc")
    head = Head(weight, None if bias is None else bias.float(), False, "fc (trained)")
    # BGR -> RGB: reverse the input channels of the first convolution (exact; see above).
    if "backbone.conv1.weight" in mapped:
        mapped["backbone.conv1.weight"] = mapped["backbone.conv1.weight"].flip(1)
    dropped = sum(_strip(k, ("module.", "encoder_q.")).startswith(_PYCLS_DROPPED) for k in state)
    model = _build(_config(backbone, head), mapped, head, src, "pycls (CVNet)")
    notes = {
        "source_format": "cvnet",
        "head": head.description,
        "backbone": backbone,
        "channel_order": "BGR source; first convolution's input channels reversed",
        "dropped": f"{dropped} keys of CVNet's re-ranking network",
    }
    return Converted(model, notes)


_CONVERTERS: dict[str, Callable[[Any, ConversionOptions, str], Converted]] = {
    "cirtorch": convert_cirtorch,
    "cvnet": convert_pycls,
}


def convert(obj: Any, opts: ConversionOptions, source: str) -> Converted:
    """The GLAM (``attention="none"``) computing ``obj``'s global descriptor; ``source`` names
    it in errors. A checkpoint of another layout than the format's (entries of unexpected
    types, missing nesting) is a ``CheckpointError`` naming the source, not a crash."""
    try:
        return _CONVERTERS[opts.source_format](obj, opts, source)
    except (CheckpointError, ValueError):
        raise
    except (AttributeError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(
            f"{source}: not a {opts.source_format} checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'malformed'})"
        ) from e


def convert_file(
    source: str,
    output: str,
    opts: ConversionOptions,
    label: str,
    store: WeightsStore,
) -> Converted:
    """Read ``source`` from ``store``, convert it, write the GLAM checkpoint ``output``
    through it (atomically). ``label`` names the source in the checkpoint's metadata
    (credentials masked by the caller). The checkpoint's sha256 is on the returned model."""
    checkpoint = load_foreign_checkpoint(source, store)
    converted = convert(checkpoint.obj, opts, label)
    notes = {**converted.notes, "source": label, "source_sha256": checkpoint.sha256}
    model = converted.model
    model.weights_sha256 = save_checkpoint(
        model, output, metadata={"converted": json.dumps(notes)}, store=store
    )
    model.weights_source = output
    return Converted(model, notes)
