"""GLAM: global-local, spatial-channel attention for image retrieval (arXiv 2107.08000).

Public API::

    from glam import build_glam, GlamExtractor, ExtractConfig, decode_image, preprocess
    model = build_glam(weights="glam.safetensors")    # or None / "imagenet"; store=… for URIs
    extractor = GlamExtractor(model, ExtractConfig(precision="bf16"))
    x = preprocess(decode_image(open("a.jpg", "rb").read()), image_size=1024)
    descriptors = extractor([x])                                    # (1, 512), unit norm
"""

from glam.arcface import ArcFaceHead, arcface_loss
from glam.builder import IMAGENET, RANDOM, build_glam
from glam.classifier import GlamClassifier
from glam.config import DEFAULT_SCALES, ExtractConfig, GlamConfig
from glam.extract import GlamExtractor, select_device
from glam.model import GLAM
from glam.preprocess import ImageDecodeError, decode_image, preprocess
from glam.recipe import AugmentConfig, TrainConfig
from glam.weights import (
    Checkpoint,
    CheckpointError,
    WeightsStore,
    WeightsUnavailableError,
    checkpoint_bytes,
    load_checkpoint,
    parse_checkpoint,
    save_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SCALES",
    "GLAM",
    "IMAGENET",
    "RANDOM",
    "ArcFaceHead",
    "AugmentConfig",
    "Checkpoint",
    "CheckpointError",
    "ExtractConfig",
    "GlamClassifier",
    "GlamConfig",
    "GlamExtractor",
    "ImageDecodeError",
    "TrainConfig",
    "WeightsStore",
    "WeightsUnavailableError",
    "__version__",
    "arcface_loss",
    "build_glam",
    "checkpoint_bytes",
    "decode_image",
    "load_checkpoint",
    "parse_checkpoint",
    "preprocess",
    "save_checkpoint",
    "select_device",
]
