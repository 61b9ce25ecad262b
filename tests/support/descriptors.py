"""Synthetic descriptor Parquet with a ground truth the tests control."""

from __future__ import annotations

import numpy as np

from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
from pipeline.io.storage import join, write_bytes_atomic

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def metadata(weights_sha256: str = "a" * 64) -> dict[bytes, bytes]:
    cfg = {"backbone": "resnet101", "dim": DIM}
    return file_metadata(fingerprint(ExtractionSpec(), cfg, weights_sha256), "test")


def write_descriptor_file(uri: str, keys: list[str], x: np.ndarray, weights: str = "a" * 64):
    table = descriptor_table(keys, uri, x, [1] * len(keys), [1] * len(keys), metadata(weights))
    write_bytes_atomic(uri, parquet_bytes(table))


def write_folder(folder: str, n_files: int, rows: int, seed: int = 0, prefix: str = "k"):
    """Plain folder of descriptor files; returns (keys, vectors) in file order."""
    rng = np.random.default_rng(seed)
    keys, blocks = [], []
    for f in range(n_files):
        k = [f"{prefix}{f:02d}_{i:05d}" for i in range(rows)]
        x = unit(rng.normal(size=(rows, DIM)))
        write_descriptor_file(join(folder, f"part-{f:06d}.parquet"), k, x)
        keys += k
        blocks.append(x)
    return keys, np.concatenate(blocks)
