"""What an index build records beyond its vectors: the whitening it applies (copied
into the version folder, so the version stays usable when the original moves) and how its
descriptors were extracted (for search by image)."""

from __future__ import annotations

import json
import logging

from pipeline.index.versions import ExtractionRecord, PostProcessing, WhiteningRecord
from pipeline.index.whitening import Whitening, read_whitening, sha256_of
from pipeline.io.descriptor_reader import DescriptorFile
from pipeline.io.layout import job_uri
from pipeline.io.redact import redact_text
from pipeline.io.storage import join, read_bytes, read_json, write_bytes_atomic
from pipeline.runtime.records import check_fingerprint

log = logging.getLogger(__name__)

WHITENING_FILE = "whitening.safetensors"


def load_build_whitening(
    uri: str | None, identity: dict[str, str]
) -> tuple[Whitening | None, str | None]:
    """The whitening file at ``uri`` and its sha256 (None, None without one); refused when it
    was fitted on descriptors of another model than ``identity``."""
    if uri is None:
        return None, None
    whitening, sha = read_whitening(uri)
    if whitening.descriptor_model:
        check_fingerprint(
            f"the whitening {redact_text(uri)} (fitted on its descriptors)",
            whitening.descriptor_model,
            identity,
            "fit a whitening on descriptors of this model (jobs/learn_whitening.py)",
        )
    if int(identity.get("descriptor_dim", whitening.dim_in)) != whitening.dim_in:
        raise ValueError(
            f"the whitening {redact_text(uri)} expects {whitening.dim_in}-d descriptors, "
            f"these are {identity['descriptor_dim']}-d"
        )
    return whitening, sha


def store_whitening(uri: str, whitening: Whitening, version_dir: str) -> PostProcessing:
    """Copy the whitening file into the version folder; its manifest record."""
    data = read_bytes(uri)
    write_bytes_atomic(join(version_dir, WHITENING_FILE), data)
    return PostProcessing(
        whitening=WhiteningRecord(
            file=WHITENING_FILE,
            sha256=sha256_of(data),
            source=redact_text(uri),
            dim_in=whitening.dim_in,
            dim_out=whitening.dim_out,
            shrinkage=whitening.shrinkage,
        )
    )


def version_whitening(version_dir: str) -> Whitening:
    """The whitening copied into a version folder."""
    uri = join(version_dir, WHITENING_FILE)
    return Whitening.from_bytes(read_bytes(uri), uri)


def extraction_record(descriptors: str, files: list[DescriptorFile]) -> ExtractionRecord | None:
    """How the descriptors were extracted, from the first file's Parquet metadata; the weights'
    location from that metadata (``weights_uri``) or, for outputs written before it was
    recorded, from the extraction's ``_job.json``. None for descriptors of another tool."""
    meta = files[0].metadata
    if "glam_config" not in meta or "image_size" not in meta:
        return None
    fingerprint = json.loads(meta.get("fingerprint", "{}"))
    weights: str | None = meta.get("weights_uri")
    seed = int(meta.get("weights_seed", "0"))
    if weights is None:
        job = read_json(job_uri(descriptors)) or {}
        config = job.get("config") or {}
        weights, seed = config.get("weights") or "random", int(config.get("seed") or 0)
        if not job:
            weights = None  # unknown: search by image will ask for --weights
    return ExtractionRecord(
        weights=weights,
        seed=seed,
        weights_sha256=meta.get("weights_sha256", ""),
        glam_config=json.loads(meta["glam_config"]),
        image_size=int(meta["image_size"]),
        scales=[float(s) for s in json.loads(meta.get("scales", "[1.0]"))],
        precision=meta.get("precision", "fp32"),
        max_pixels=fingerprint.get("max_pixels"),
        resize=meta.get("resize", "bilinear"),
        jpeg_draft=bool(fingerprint.get("jpeg_draft", False)),
    )
