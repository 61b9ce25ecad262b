"""Training checkpoints (the full state a resumed run needs) and their export to a GLAM
checkpoint that ``jobs/extract.py --weights`` loads."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from glam.config import GlamConfig
from glam.model import GLAM
from glam.weights import load_state_dict_strict, save_checkpoint
from pipeline.io.storage import WEIGHTS_STORE, join, read_bytes
from pipeline.train.metrics import TrainMetrics

STATE_FILE = "state.pt"
GLAM_PREFIX = "glam."


@dataclass
class TrainProgress:
    """Where training stands: optimiser steps done, and what happened so far."""

    step: int = 0
    # Metrics at each log point, all workers combined.
    history: list[TrainMetrics] = field(default_factory=list)
    # The step each resumption started from.
    resumed_from: list[int] = field(default_factory=list)


def save_state(
    folder: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    progress: TrainProgress,
    meta: dict[str, Any],
) -> str:
    """Write ``folder/state.pt``: weights (model and ArcFace head), optimiser and loss-scaler
    state, progress, and the job's description. Loadable with ``weights_only=True``."""
    path = os.path.join(folder, STATE_FILE)
    payload = {
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": progress.step,
        "history": [m.to_dict() for m in progress.history],
        "resumed_from": progress.resumed_from,
        "meta": json.dumps(meta),
    }
    torch.save(payload, path)
    return path


def load_state(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, STATE_FILE)
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    state["meta"] = json.loads(state["meta"])
    return state


def read_state(folder_uri: str) -> dict[str, Any]:
    """The state in a checkpoint folder on any storage (e.g. ``OUTPUT/checkpoints/step-N``)."""
    data = read_bytes(join(folder_uri, STATE_FILE))
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state["meta"] = json.loads(state["meta"])
    return state


def restore(
    state: dict[str, Any],
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> TrainProgress:
    """Load a saved state into freshly built objects; returns the progress to continue from."""
    load_state_dict_strict(net, state["model"], source="training checkpoint")
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return TrainProgress(
        step=int(state["step"]),
        history=[TrainMetrics.from_dict(m) for m in state["history"]],
        resumed_from=[*state["resumed_from"], int(state["step"])],
    )


def glam_from_state(state: dict[str, Any], config: GlamConfig) -> GLAM:
    """The GLAM part of a training state (the ArcFace head is left behind), in eval mode."""
    weights = {
        k[len(GLAM_PREFIX) :]: v for k, v in state["model"].items() if k.startswith(GLAM_PREFIX)
    }
    model = GLAM(config)
    load_state_dict_strict(model, weights, source="training checkpoint")
    return model.eval()


def export_glam(state: dict[str, Any], config: GlamConfig, uri: str) -> str:
    """Write the trained GLAM as a GLAM checkpoint with its training recorded; its sha256."""
    meta = state["meta"]
    last = state["history"][-1] if state["history"] else {}
    metadata = {
        "training": json.dumps(meta, sort_keys=True),
        "steps": str(state["step"]),
        "final_metrics": json.dumps(last, sort_keys=True),
    }
    return save_checkpoint(
        glam_from_state(state, config), uri, metadata=metadata, store=WEIGHTS_STORE
    )
