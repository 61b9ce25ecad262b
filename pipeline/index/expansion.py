"""α-weighted query expansion (αQE) and database-side augmentation (α-DBA).

Radenović, Tolias, Chum, "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018,
§5 (following Arandjelović & Zisserman's average QE and DBA): a vector v with neighbours
x_1..x_k (best first, similarities s_i = vᵀx_i) becomes

    v' = L2(v + Σ_{i=1..k} max(s_i, 0)^α x_i),

the vector itself weighted 1 = (vᵀv)^α. αQE applies it to a query with its top-k results before
searching again; DBA applies it to every database vector with its k nearest other database
vectors at index build time (``pipeline.index.dba``). The paper uses α = 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 3.0


@dataclass(frozen=True)
class DbaConfig:
    """Database-side augmentation at build time."""

    k: int  # neighbours per vector (itself excluded)
    alpha: float = DEFAULT_ALPHA
    # Vectors searched per batch while augmenting. Memory: a flat shard's search holds
    # batch x 131072 scores (0.5 GiB at 1024), plus batch x k x d neighbour floats.
    batch_rows: int = 1024
    # NOTE: not in paper: IVF cells visited when an IVF index finds the neighbours.
    nprobe: int = 16

    def __post_init__(self) -> None:
        check_expansion(self.k, self.alpha, "DBA")
        if self.batch_rows <= 0 or self.nprobe <= 0:
            raise ValueError("DBA batch rows and nprobe must be positive")


@dataclass(frozen=True)
class QeConfig:
    """αQE at search time."""

    k: int
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        check_expansion(self.k, self.alpha, "αQE")


def check_expansion(k: int, alpha: float, what: str) -> None:
    if k <= 0:
        raise ValueError(f"{what} needs k >= 1 neighbours, got {k}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"{what} alpha must be a finite number >= 0, got {alpha}")


def alpha_expand(
    v: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: float
) -> np.ndarray:
    """v' = L2(v + Σ_i max(s_i, 0)^α x_i) for each row.

    v: (n, d); neighbours: (n, k, d); similarities: (n, k), with -inf (or any value <= 0) for
    missing neighbours, which then weigh nothing. Returns float32 (n, d), unit rows."""
    s = np.where(np.isfinite(similarities), similarities, 0.0)
    w = np.maximum(s, 0.0).astype(np.float64) ** alpha  # (n, k)
    out = v.astype(np.float64) + np.einsum("nk,nkd->nd", w, neighbours.astype(np.float64))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def drop_self(
    ids: np.ndarray, scores: np.ndarray, own: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k neighbours of each row other than itself, from a top-(k+1) search.

    ids, scores: (n, k+1) best first; own: (n,) each row's own id. When an approximate index
    does not return a vector among its own neighbours, its last neighbour is dropped."""
    keep = ids != own[:, None]
    # Rows where self was not found keep k+1 candidates; cut every row to its first k kept.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
