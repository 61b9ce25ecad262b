"""Build a GLAM model and load its weights (the model file stays free of I/O)."""

from __future__ import annotations

import logging

import torch

from glam.config import GlamConfig
from glam.model import GLAM
from glam.weights import (
    CheckpointError,
    WeightsStore,
    checkpoint_filter_fn,
    load_checkpoint,
    load_imagenet_state_dict,
    load_state_dict_strict,
    state_dict_sha256,
)

log = logging.getLogger(__name__)

RANDOM = "random"
IMAGENET = "imagenet"


def build_glam(
    weights: str | None = None,
    config: GlamConfig | None = None,
    seed: int = 0,
    store: WeightsStore | None = None,
) -> GLAM:
    """Build ResNet-GLAM in eval mode.

    weights: ``None``/``"random"`` for a seeded random initialisation (identical in every
    process with the same seed), ``"imagenet"`` for torchvision's ImageNet backbone with a
    seeded random head, or the URI of a GLAM checkpoint in ``store`` (None: a local path; its
    recorded config wins; a different ``config`` passed here is refused).
    """
    checkpoint = None
    if weights not in (None, RANDOM, IMAGENET):
        checkpoint = load_checkpoint(weights, store)
        if checkpoint.config is not None:
            if config is not None and config != checkpoint.config:
                raise CheckpointError(
                    f"{weights} was saved with config {checkpoint.config}, "
                    f"which differs from the requested {config}"
                )
            config = checkpoint.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GLAM(config)
    if checkpoint is not None and weights is not None:
        load_state_dict_strict(
            model, checkpoint_filter_fn(checkpoint.state_dict, model), source=weights
        )
        model.weights_source, model.weights_sha256 = weights, checkpoint.sha256
    else:
        if weights == IMAGENET:
            state = load_imagenet_state_dict(model.config.backbone)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            load_state_dict_strict(model.backbone, state, source=f"ImageNet {weights}")
        else:
            log.warning("GLAM with random weights (seed %d): descriptors are not GLAM's", seed)
        model.weights_source = weights or RANDOM
        model.weights_sha256 = state_dict_sha256(model)
    return model.eval()
