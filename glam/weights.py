"""Weights I/O: GLAM checkpoints to and from bytes, read and written through a ``WeightsStore``
the caller passes, and torchvision's ImageNet backbones.

Checkpoints are safetensors files (``.safetensors``) or torch files (``.pt``/``.pth``/``.ckpt``)
loaded with ``weights_only=True``; every load is strict and names the keys that do not match.
glam does no storage I/O of its own: object stores, credentials and atomic writes are the
store's (the pipeline's is ``pipeline.io.storage.WEIGHTS_STORE``); without one, checkpoints
are read from local paths, and written by no one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import safetensors
import safetensors.torch
import torch
from torch import nn

from glam.config import GlamConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "glam"
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_IGNORED_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED_KEYS = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that are neither cached nor downloadable."""


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    # The architecture recorded in the checkpoint; None for a bare state dict.
    config: GlamConfig | None
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 of the model's weights serialised as safetensors (provenance of in-memory weights)."""
    return sha256_hex(safetensors.torch.save(_cpu_state_dict(model)))


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


class WeightsStore(Protocol):
    """Where checkpoints are read and written, by URI: the pipeline passes its own
    (``pipeline.io.storage.WEIGHTS_STORE``: its endpoint, ``GLAM_STORAGE_OPTIONS``, refusal of
    credentials in URIs, atomic writes)."""

    def read(self, uri: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        ...

    def write_atomic(self, uri: str, data: bytes) -> None:
        """Write ``data`` so that no reader ever sees a partial object."""
        ...


def _read_uri(uri: str, store: WeightsStore | None) -> bytes:
    """The checkpoint's bytes from ``store``; without a store, from a local path (another
    scheme is refused: reading it is the store's job)."""
    try:
        if store is not None:
            return store.read(uri)
        scheme, sep, path = uri.partition("://")
        if sep and scheme != "file":
            raise ValueError(
                f"{uri}: glam reads only local paths by itself; pass a WeightsStore that "
                "reads this scheme (the pipeline's: pipeline.io.storage.WEIGHTS_STORE)"
            )
        with open(path if sep else uri, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {uri}") from e


def _parse_safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = safetensors.torch.load(data)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return tensors, dict(header.get("__metadata__") or {})


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 0 < header_len <= len(data) - 8 and data[8:9] == b"{"


def load_checkpoint(uri: str, store: WeightsStore | None = None) -> Checkpoint:
    """Read a GLAM checkpoint (safetensors or torch, ``weights_only=True``) from ``store``
    (None: a local path)."""
    return parse_checkpoint(_read_uri(uri, store), uri)


def parse_checkpoint(data: bytes, uri: str) -> Checkpoint:
    """A GLAM checkpoint from its bytes (safetensors or torch, ``weights_only=True``); ``uri``
    names it in errors."""
    digest = sha256_hex(data)
    config_dict: Any = None
    metadata: dict[str, str] = {}
    try:
        if _looks_like_safetensors(data):
            state, metadata = _parse_safetensors(data)
            if "config" in metadata:
                config_dict = json.loads(metadata["config"])
        else:
            obj = _torch_load(data, uri)
            if isinstance(obj, Mapping) and "state_dict" in obj:
                state = dict(obj["state_dict"])
                config_dict = obj.get("config")
                metadata = {str(k): str(v) for k, v in dict(obj.get("metadata") or {}).items()}
            elif isinstance(obj, Mapping):
                state = dict(obj)
            else:
                raise CheckpointError(f"{uri}: expected a state dict, found a {type(obj).__name__}")
    except CheckpointError:
        raise
    except Exception as e:  # corrupt bytes can fail anywhere in the unpickler or parser
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{uri}: not a readable safetensors or torch checkpoint "
            f"({type(e).__name__}: {first_line[:200]})"
        ) from e
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{uri}: entries that are not tensors: {bad[:_MAX_LISTED_KEYS]}")
    config = GlamConfig.from_dict(config_dict) if config_dict else None
    return Checkpoint(state_dict=state, config=config, sha256=digest, metadata=metadata)


@dataclass(frozen=True)
class ForeignCheckpoint:
    """A checkpoint of another code base, as its torch file holds it (any nesting)."""

    obj: Any
    sha256: str


def _numpy_globals() -> list[Any]:
    """What unpickling a numpy array needs, under the names numpy 1 and 2 pickle it with
    (cirtorch stores its learned whitening as numpy arrays in the checkpoint's ``meta``)."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int64)]
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dtypes,
    ]


def load_foreign_checkpoint(uri: str, store: WeightsStore | None = None) -> ForeignCheckpoint:
    """Read another code base's torch checkpoint from ``store`` (None: a local path)
    (``parse_foreign_checkpoint``)."""
    return parse_foreign_checkpoint(_read_uri(uri, store), uri)


def parse_foreign_checkpoint(data: bytes, uri: str) -> ForeignCheckpoint:
    """Another code base's torch checkpoint from its bytes, with ``weights_only=True``:
    tensors, containers, strings and numbers, plus numpy arrays; ``uri`` names it in errors."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = _torch_load(data, uri)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt bytes can fail anywhere in the unpickler
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{uri}: not a readable torch checkpoint ({type(e).__name__}: {first_line[:200]})"
        ) from e
    return ForeignCheckpoint(obj, sha256_hex(data))


def _torch_load(data: bytes, uri: str) -> Any:
    """``torch.load(weights_only=True)``; a refused Python object is named, without torch's
    advice to load with weights_only=False, i.e. to run the file's code: the one thing not to
    do with a file from elsewhere. Only its diagnosis is kept."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # "Unsupported global: GLOBAL m.f", or "unsupported GLOBAL posix.system whose module
        # posix is blocked" (the modules torch knows to be dangerous): either names the object.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{uri}: refused: it holds Python objects ({found.group(1)}) besides tensors, "
                "and unpickling them could run code; convert it to safetensors where its "
                "source is trusted"
            ) from None
        lines = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        why = [x for x in lines if x.strip() and "weights_only" not in x and "torch.load" not in x]
        raise CheckpointError(
            f"{uri}: not a readable safetensors or torch checkpoint "
            f"(UnpicklingError: {why[0].strip()[:200] if why else 'not a torch file'})"
        ) from None


def save_checkpoint(
    model: nn.Module,
    uri: str,
    metadata: Mapping[str, str] | None = None,
    *,
    store: WeightsStore,
) -> str:
    """Write the model's checkpoint (``checkpoint_bytes``) to ``uri`` through ``store``, which
    writes atomically; return the file's sha256."""
    data = checkpoint_bytes(model, uri, metadata)
    store.write_atomic(uri, data)
    return sha256_hex(data)


def checkpoint_bytes(
    model: nn.Module, name: str, metadata: Mapping[str, str] | None = None
) -> bytes:
    """The model's weights and config as a checkpoint file's bytes, with ``metadata``.

    The format follows the suffix of ``name``: ``.safetensors``, else a torch file
    (``.pt``/``.pth``/...).
    """
    config = getattr(model, "config", None)
    meta = {"format": CHECKPOINT_FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    if isinstance(config, GlamConfig):
        # Which Table 4 variant, spelled out (the config omits it for the default model).
        meta["attention"] = config.attention
    state = _cpu_state_dict(model)
    if name.endswith(".safetensors"):
        if config is not None:
            meta["config"] = json.dumps(config.to_dict())
        data = safetensors.torch.save(state, metadata=meta)
    elif name.endswith(_TORCH_SUFFIXES):
        buf = io.BytesIO()
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict() if config is not None else None,
            "metadata": meta,
            "state_dict": state,
        }
        torch.save(payload, buf)
        data = buf.getvalue()
    else:
        raise ValueError(
            f"cannot tell the checkpoint format of {name!r}: use .safetensors or one of "
            f"{', '.join(_TORCH_SUFFIXES)}"
        )
    return data


def checkpoint_filter_fn(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Remap foreign keys: DDP/compile prefixes, and a bare torchvision ResNet state dict
    (``conv1.weight``, ..., ``fc.*``) onto ``backbone.*`` without the classifier."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in _IGNORED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    expected = model.state_dict()
    is_torchvision_resnet = "conv1.weight" in out and "layer4.0.conv1.weight" in out
    if is_torchvision_resnet and "backbone.conv1.weight" in expected:
        out = {f"backbone.{k}": v for k, v in out.items() if not k.startswith("fc.")}
    return out


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", … (+{more} more)" if more > 0 else "")


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load with strict key and shape checks; the error names every kind of mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_format_keys(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped keys: {_format_keys(misshaped)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), strict=True)


def imagenet_weights(backbone: str) -> Any:
    """The ImageNet weights the paper starts from (torchvision's original V1 release): a
    ``torchvision.models.WeightsEnum``. torchvision is imported here only: importing it loads
    torch._dynamo (seconds in every process that builds a model, e.g. each Ray actor)."""
    import torchvision

    # NOTE: not in paper: which ImageNet release is not stated; V1 is the classic
    # ResNet weights used by the retrieval literature (cirtorch, DELG).
    weights_enum = torchvision.models.get_model_weights(backbone)
    return weights_enum["IMAGENET1K_V1"]


def load_imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``backbone``, from torch's cache or downloaded.

    Offline, raises a one-line error naming the file to place in torch's cache.
    """
    weights = imagenet_weights(backbone)
    filename = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.exists(cached):
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # urllib/ssl/socket errors differ per platform
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} are not cached and cannot be downloaded "
            f"({type(e).__name__}); place {filename} from {weights.url} at {cached}"
        ) from e
