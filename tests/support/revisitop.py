"""An independent revisitop scorer: walks each query's full ranking as revisitop defines it."""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.protocol import QueryGroundTruth


def reference_map(ranking: np.ndarray, gnd: list[QueryGroundTruth], kappas=(1, 5, 10)):
    """Walk each query's full ranking (n_db, nq) best first, skipping junk, as revisitop
    defines it: trapezoidal AP, mP@k with k_q = min(k, last positive's 1-based position)."""
    aps, precs = [], []
    for q, g in enumerate(gnd):
        if len(g.ok) == 0:
            continue
        ok, junk = set(g.ok.tolist()), set(g.junk.tolist())
        kept = [i for i in ranking[:, q] if i not in junk]
        hits = [r for r, i in enumerate(kept) if i in ok]  # 0-based, junk-free
        ap = 0.0
        for j, r in enumerate(hits):
            before = 1.0 if r == 0 else j / r
            ap += (before + (j + 1) / (r + 1)) / 2 / len(ok)
        aps.append(ap)
        last = hits[-1] + 1
        precs.append([sum(h + 1 <= min(last, k) for h in hits) / min(last, k) for k in kappas])
    return float(np.mean(aps)), np.mean(precs, axis=0)
