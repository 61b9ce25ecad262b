"""Top-M re-ranking with global descriptors only, as in SuperGlobal (Shao, Chen, Karpur, Cui,
Araujo, Cao, "Global Features are All You Need for Image Retrieval and Reranking", ICCV 2023).

The definition follows the authors' implementation (ShihaoShao-GH/SuperGlobal,
``modules/reranking/MDescAug.py`` and ``RerankwMDA.py``), which reproduces the paper's figures:
for a query q and its top M results x_1..x_M (best first),

1. refine each result by its K nearest results among the M (itself first, weight 1; the others
   weighted β s_ij): x'_i = Σ_j w_ij x_j / Σ_j w_ij (not re-normalised);
2. s1_i = qᵀx'_i;
3. expand the query by the element-wise maximum of the refined descriptors of the K + 1 results
   best by s1: q_e = max_j x'_j;
4. s2_i = q_eᵀx'_i, and re-rank the M results by (s1_i + s2_i) / 2; results after the M-th keep
   their places.

Defaults are the paper's and the code's: M = 400, K = 9, β = 0.15. The query itself is not part
of the max-pooled expansion in the code, and neither step re-normalises; both are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RerankConfig:
    m: int = 400  # results re-ranked per query
    k: int = 9  # neighbours refining each of them (itself excluded), and K + 1 expand q
    beta: float = 0.15  # weight of a neighbour's similarity

    def __post_init__(self) -> None:
        if self.m <= 1 or self.k <= 0:
            raise ValueError(f"re-ranking needs M > 1 and K > 0, got M={self.m} K={self.k}")
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"re-ranking beta must be a finite number >= 0, got {self.beta}")


def refine(x: np.ndarray, k: int, beta: float) -> np.ndarray:
    """Step 1: x (n, M, d) -> x' (n, M, d), each result averaged with its k nearest among the
    M, weights 1 (itself, the first by similarity) and β s_ij (the others)."""
    g = np.einsum("nid,njd->nij", x, x)  # (n, M, M) similarities among the top M
    kk = min(k + 1, x.shape[1])
    nearest = np.argsort(-g, axis=-1, kind="stable")[..., :kk]  # (n, M, K+1)
    w = np.take_along_axis(g, nearest, -1) * beta
    w[..., 0] = 1.0
    gathered = np.take_along_axis(x[:, None, :, :], nearest[..., None], axis=2)  # (n,M,K+1,d)
    return np.einsum("nik,nikd->nid", w, gathered) / w.sum(-1, keepdims=True)


def rerank(
    queries: np.ndarray, top: np.ndarray, cfg: RerankConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-4 for queries (n, d) and the vectors of their top results (n, M', d), best
    first (M' <= M). Returns (order, scores): order (n, M') indexes the given results in their
    new order, scores (n, M') are their (s1 + s2) / 2, best first."""
    q = queries.astype(np.float64)
    x = top.astype(np.float64)
    refined = refine(x, cfg.k, cfg.beta)  # x'
    s1 = np.einsum("nd,nid->ni", q, refined)
    best = np.argsort(-s1, axis=1, kind="stable")[:, : min(cfg.k + 1, x.shape[1])]
    expanded = np.take_along_axis(refined, best[..., None], 1).max(axis=1)  # q_e: (n, d)
    s2 = np.einsum("nd,nid->ni", expanded, refined)
    final = (s1 + s2) / 2.0
    order = np.argsort(-final, axis=1, kind="stable")
    return order, np.take_along_axis(final, order, 1).astype(np.float32)
