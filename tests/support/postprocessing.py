"""Independent references for the post-processing (whitening, DBA, αQE, re-ranking), in plain
loops from the papers' definitions: α-weighted expansion (Radenović et al., TPAMI 2018) for αQE
and DBA, and SuperGlobal's re-ranking (Shao et al., ICCV 2023, as its published
MDescAug/RerankwMDA do it)."""

from __future__ import annotations

import numpy as np


def ref_alpha_expand(v, neighbours, sims, alpha):
    """v' = L2(v + Σ max(s_i, 0)^α x_i), one vector at a time."""
    out = np.array(v, dtype=np.float64)
    for x, s in zip(neighbours, sims, strict=True):
        out = out + max(float(s), 0.0) ** alpha * np.asarray(x, dtype=np.float64)
    return out / np.linalg.norm(out)


def ref_rerank(q, top, k, beta):
    """SuperGlobal's MDescAug + RerankwMDA for one query: a new order of the top M."""
    m = len(top)
    refined = []
    for i in range(m):
        sims = [float(np.dot(top[i], top[j])) for j in range(m)]
        nearest = sorted(range(m), key=lambda j: -sims[j])[: k + 1]
        weights = [1.0] + [beta * sims[j] for j in nearest[1:]]
        acc = sum(w * top[j] for w, j in zip(weights, nearest, strict=True))
        refined.append(acc / sum(weights))
    s1 = [float(np.dot(q, r)) for r in refined]
    best = sorted(range(m), key=lambda i: -s1[i])[: k + 1]
    expanded = np.max([refined[i] for i in best], axis=0)
    final = [(s1[i] + float(np.dot(expanded, refined[i]))) / 2 for i in range(m)]
    return sorted(range(m), key=lambda i: -final[i]), sorted(final, reverse=True)


def ref_dba(x: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Every vector expanded with its k nearest other vectors (exact, brute force)."""
    out = np.empty_like(x)
    sims = x @ x.T
    for i in range(len(x)):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]
        out[i] = ref_alpha_expand(x[i], x[order], sims[i][order], alpha)
    return out
