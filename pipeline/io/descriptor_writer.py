"""Parquet output: the descriptor and error schemas of ARCHITECTURE.md, with model metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ERROR_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)


def descriptor_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("descriptor", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
        ]
    )


def file_metadata(
    fp: Mapping[str, object],
    package_version: str,
    weights_uri: str | None = None,
    weights_seed: int | None = None,
) -> dict[bytes, bytes]:
    """Key-value metadata: model, weights sha256, backbone, scales, image size, dim, precision,
    pixel limit, draft decode, resize filter, package version (all strings; ``glam_config`` as
    JSON); where the weights are (``weights_uri``, credentials masked by the caller, and
    ``weights_seed`` of random weights), so that a query image can be described the same way
    (not part of the model's identity: the sha256 is)."""
    cfg = fp["glam_config"]
    assert isinstance(cfg, Mapping)
    meta = {
        "model": str(fp["model"]),
        "weights_sha256": str(fp["weights_sha256"]),
        "backbone": str(cfg["backbone"]),
        "scales": json.dumps(fp["scales"]),
        "image_size": str(fp["image_size"]),
        "descriptor_dim": str(cfg["dim"]),
        "precision": str(fp["precision"]),
        # Which samples error and how large JPEGs decode: part of what a descriptor is.
        "max_pixels": str(fp["max_pixels"]),
        "jpeg_draft": json.dumps(fp["jpeg_draft"]),
        "resize": str(fp["resize"]),
        "package_version": package_version,
        "glam_config": json.dumps(cfg, sort_keys=True),
        "fingerprint": json.dumps(fp, sort_keys=True),
    }
    if weights_uri is not None:
        meta["weights_uri"] = weights_uri
    if weights_seed is not None:
        meta["weights_seed"] = str(weights_seed)
    return {k.encode(): v.encode() for k, v in meta.items()}


def descriptor_table(
    keys: Sequence[str],
    source: str,
    descriptors: np.ndarray,
    widths: Sequence[int],
    heights: Sequence[int],
    metadata: Mapping[bytes, bytes],
) -> pa.Table:
    n, dim = descriptors.shape if descriptors.size else (0, descriptors.shape[-1])
    flat = pa.array(np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1))
    schema = descriptor_schema(dim).with_metadata(dict(metadata))
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "source": pa.array([source] * n, pa.string()),
            "descriptor": pa.FixedSizeListArray.from_arrays(flat, dim),
            "width": pa.array(widths, pa.int32()),
            "height": pa.array(heights, pa.int32()),
        },
        schema=schema,
    )


def error_table(
    keys: Sequence[str],
    source: str,
    errors: Sequence[str],
    messages: Sequence[str],
    metadata: Mapping[bytes, bytes],
) -> pa.Table:
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "source": pa.array([source] * len(keys), pa.string()),
            "error": pa.array(errors, pa.string()),
            "message": pa.array(messages, pa.string()),
        },
        schema=ERROR_SCHEMA.with_metadata(dict(metadata)),
    )


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
