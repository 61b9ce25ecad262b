"""Search by image: describe query images exactly as the indexed descriptors were described,
through extraction's decode path, with the model configuration, weights, image size, scales,
precision, pixel limit, draft decode and resize filter recorded in the version's manifest
(``IndexManifest.extraction``, from the descriptors' Parquet metadata).

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
        scales=tuple(record.scales),
        precision="bf16" if record.precision == "bf16" else "fp32",
    )
    return GlamExtractor(model, cfg)


def describe_images(
    manifest: IndexManifest, images: list[str], weights: str | None = None
) -> np.ndarray:
    """Descriptors (n, dim) of the images at ``images`` (paths or URIs), as the index's."""
    record = extraction_of(manifest)
    return describe_as_extracted(record, load_query_model(record, weights), images)


def describe_as_extracted(
    record: ExtractionRecord, extractor: GlamExtractor, images: list[str]
) -> np.ndarray:
    """Descriptors (n, dim) of ``images`` decoded by extraction's own path
    (``pipeline.extract.decode``) with the output's recorded settings: pixel limit, JPEG draft
    decode, resize filter, image size; then the extractor's uint8 batch path, one image a
    batch. An image extraction would make an error row is a ``ValueError`` saying why."""
    from glam.preprocess import DEFAULT_MAX_PIXELS
    from pipeline.extract.decode import DecodedSample, decode_bytes
    from pipeline.extract.spec import draft_side_of

    side = draft_side_of(record.image_size, record.scales, record.jpeg_draft)
    rows = []
    for n, uri in enumerate(images):
        try:
            data = read_bytes(uri)
        except FileNotFoundError:
            raise ValueError(f"no image at {uri}") from None
        item = decode_bytes(
            n,
            uri,
            data,
            record.image_size,
            record.max_pixels or DEFAULT_MAX_PIXELS,
            side,
            resize=record.resize,
        )
        if not isinstance(item, DecodedSample):
            raise ValueError(f"{uri}: {item.message}")
        rows.append(extractor.extract_images([item.image]).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, extractor.model.config.dim), np.float32)
