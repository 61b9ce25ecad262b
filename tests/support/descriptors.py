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


def write_clustered_folder(
    folder: str, n_files: int, rows: int, clusters: int = 40, noise: float = 0.5, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Like ``write_folder`` with vectors around ``clusters`` random centres, so that an
    approximate index has neighbours to miss (uniform random vectors have none)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, DIM)))
    keys, blocks = [], []
    for f in range(n_files):
        k = [f"c{f:02d}_{i:05d}" for i in range(rows)]
        x = unit(
            centres[rng.integers(0, clusters, rows)]
            + noise * rng.normal(size=(rows, DIM)) / np.sqrt(DIM)
        )
        write_descriptor_file(join(folder, f"part-{f:06d}.parquet"), k, x)
        keys += k
        blocks.append(x)
    return keys, np.concatenate(blocks)


def queries_near(x: np.ndarray, n: int, noise: float = 0.3, seed: int = 9) -> np.ndarray:
    """``n`` unit queries near random rows of ``x``."""
    rng = np.random.default_rng(seed)
    return unit(
        x[rng.integers(0, len(x), n)]
        + noise * rng.normal(size=(n, x.shape[1])) / np.sqrt(x.shape[1])
    )


def assert_same_ranking(
    ids: np.ndarray, scores: np.ndarray, want_ids: np.ndarray, want_scores: np.ndarray
) -> None:
    """Two top-k answers agree: scores rank by rank (float32 rounding apart), and where the ids
    differ, only vectors tied at that score (within rounding) swapped places."""
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    for q, j in zip(*np.nonzero(ids != want_ids), strict=True):
        where = np.nonzero(want_ids[q] == ids[q, j])[0]
        assert len(where) and abs(want_scores[q, where[0]] - scores[q, j]) < 1e-6, (q, j)
