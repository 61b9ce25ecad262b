"""Search by image: describe query images exactly as the indexed descriptors were described,
with the model configuration, weights, image size, scales and precision recorded in the
version's manifest (``IndexManifest.extraction``, from the descriptors' Parquet metadata).

The weights are found where the extraction read them (``weights_uri`` in the Parquet metadata,
or the extraction's ``_job.json``), or at ``weights`` given by the caller; either way their sha256
must be the indexed descriptors'.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from pipeline.index.versions import ExtractionRecord, IndexManifest
from pipeline.io.storage import WEIGHTS_STORE, read_bytes

if TYPE_CHECKING:
    from glam import GlamExtractor

log = logging.getLogger(__name__)


def extraction_of(manifest: IndexManifest) -> ExtractionRecord:
    if manifest.extraction is None:
        raise ValueError(
            f"index version {manifest.version} does not record how its descriptors were "
            "extracted (descriptors of another tool, or a build older than this feature): "
            "search by image needs it; rebuild the index from the extraction output"
        )
    return manifest.extraction


def load_query_model(record: ExtractionRecord, weights: str | None = None) -> GlamExtractor:
    """The index's own model, ready to extract; ``weights`` overrides where its weights are."""
    from glam import ExtractConfig, GlamConfig, GlamExtractor, build_glam
    from glam.weights import CheckpointError, WeightsUnavailableError

    uri = weights or record.weights
    sha = record.weights_sha256
    if uri is None:
        raise ValueError(
            "the index does not record where its weights are (descriptors extracted before "
            f"the location was recorded): pass --weights URI (the checkpoint with sha256 {sha})"
        )
    config = GlamConfig.from_dict(record.glam_config)
    try:
        model = build_glam(uri, config=config, seed=record.seed, store=WEIGHTS_STORE)
    except (CheckpointError, WeightsUnavailableError, OSError) as e:
        raise ValueError(
            f"the index's weights are not reachable at {uri} ({e}); pass --weights with a "
            f"copy (sha256 {sha})"
        ) from e
    if sha and model.weights_sha256 != sha:
        raise ValueError(
            f"the weights at {uri} (sha256 {model.weights_sha256[:12]}…) are not the ones the "
            f"index's descriptors were extracted with (sha256 {sha[:12]}…)"
        )
    cfg = ExtractConfig(
        image_size=record.image_size,
        scales=tuple(record.scales),
        precision="bf16" if record.precision == "bf16" else "fp32",
    )
    return GlamExtractor(model, cfg)


def describe_images(
    manifest: IndexManifest, images: list[str], weights: str | None = None
) -> np.ndarray:
    """Descriptors (n, dim) of the images at ``images`` (paths or URIs), as the index's."""
    from glam import decode_image, preprocess
    from glam.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError

    record = extraction_of(manifest)
    extractor = load_query_model(record, weights)
    tensors = []
    for uri in images:
        try:
            data = read_bytes(uri)
        except FileNotFoundError:
            raise ValueError(f"no image at {uri}") from None
        try:
            img = decode_image(data, max_pixels=record.max_pixels or DEFAULT_MAX_PIXELS)
            tensors.append(preprocess(img, record.image_size, record.resize))
        except ImageDecodeError as e:
            raise ValueError(f"{uri}: {e}") from None
    return extractor(tensors).numpy()
