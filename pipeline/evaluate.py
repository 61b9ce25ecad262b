"""Revisited Oxford/Paris evaluation of descriptor outputs, optionally with the R1M distractor
index: exact full-ranking positions with a flat index, a top-k lower bound otherwise."""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.descriptor_io import read_descriptors
from pipeline.index_search import ShardedIndex
from pipeline.revisitop import KAPPAS, PROTOCOLS, evaluate_positions, protocol_ground_truth
from pipeline.storage import read_bytes

log = logging.getLogger(__name__)

_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _GndUnpickler(pickle.Unpickler):
    """Plain containers and numpy arrays only: a ground-truth file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a ground-truth file")


def load_gnd(uri: str) -> dict[str, Any]:
    """A revisitop ground truth (``gnd_roxford5k.pkl`` format): imlist, qimlist, gnd."""
    try:
        cfg = _GndUnpickler(io.BytesIO(read_bytes(uri)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{uri} is not a revisitop ground-truth pickle: {e}") from e
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise ValueError(f"{uri} lacks {missing}: not a revisitop ground-truth file")
    return dict(cfg)


def _rows(keys: list[str], x: np.ndarray, wanted: list[str], what: str) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    missing = [k for k in wanted if k not in index]
    if missing:
        raise ValueError(f"{len(missing)} {what} images have no descriptor, e.g. {missing[:3]}")
    return x[[index[k] for k in wanted]]


@dataclass(frozen=True)
class RankingModel:
    """Positions in the combined ranking: database images by descending score (ties in
    database order), distractors after database images at equal score."""

    db_scores: np.ndarray  # (nq, n_db)
    # counts_above(q, scores) -> distractors scoring strictly higher than each score
    counts_above: Callable[[int, np.ndarray], np.ndarray] | None = None

    def positions_of(self, q: int, idx: np.ndarray) -> np.ndarray:
        s = self.db_scores[q]
        order = np.argsort(-s, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        pos = inverse[np.asarray(idx, dtype=np.int64)]
        if self.counts_above is not None:
            pos = pos + self.counts_above(q, s[idx])
        return pos


def distractor_counter(
    index: ShardedIndex, queries: np.ndarray, k: int
) -> tuple[Callable[[int, np.ndarray], np.ndarray], bool]:
    """counts_above for the distractors, and whether it is exact (flat index: every distractor
    scored) or a lower bound from the top-k of an approximate index."""
    if index.exact:
        sorted_scores = []
        for s in range(len(index.shards)):
            sorted_scores.append(index.shard_vectors(s) @ queries.T)  # (n_s, nq)
        per_query = [
            np.sort(np.concatenate([x[:, q] for x in sorted_scores])) for q in range(len(queries))
        ]
        del sorted_scores

        def exact(q: int, scores: np.ndarray) -> np.ndarray:
            ranked = per_query[q]
            return len(ranked) - np.searchsorted(ranked, scores.astype(np.float32), side="right")

        return exact, True
    top = index.search(queries, k).scores  # (nq, k), best first

    def lower_bound(q: int, scores: np.ndarray) -> np.ndarray:
        return (top[q][None, :] > scores[:, None].astype(np.float32)).sum(axis=1)

    return lower_bound, False


def score_protocols(
    gnd: list[dict[str, Any]], ranking: RankingModel
) -> dict[str, dict[str, float]]:
    return {
        p: evaluate_positions(
            ranking.positions_of, protocol_ground_truth(gnd, p), KAPPAS
        ).as_report()
        for p in PROTOCOLS
    }


def evaluate(
    gnd_uri: str,
    queries: str,
    database: str,
    distractors: str | None = None,
    approx_k: int = 1000,
) -> dict[str, Any]:
    """The report: easy/medium/hard -> mAP, mP@1/5/10 (fractions), with distractors when given,
    and the database-only figures under ``without_distractors``."""
    cfg = load_gnd(gnd_uri)
    q_keys, q_x, q_model = read_descriptors(queries)
    d_keys, d_x, d_model = read_descriptors(database)
    if q_model != d_model:
        raise ValueError("queries and database descriptors come from different models/configs")
    q = _rows(q_keys, q_x, list(cfg["qimlist"]), "query")
    x = _rows(d_keys, d_x, list(cfg["imlist"]), "database")
    db_scores = q @ x.T
    gnd = list(cfg["gnd"])
    report: dict[str, Any] = score_protocols(gnd, RankingModel(db_scores))
    report.update(queries=len(q), database=len(x), distractors=0, exact=True)
    if distractors:
        index = ShardedIndex.load(distractors)
        if index.manifest.get("descriptor_model") != d_model:
            raise ValueError("the distractor index was built from another model's descriptors")
        counts, exact = distractor_counter(index, q, approx_k)
        without = {p: report[p] for p in PROTOCOLS}
        report.update(score_protocols(gnd, RankingModel(db_scores, counts)))
        report.update(
            distractors=index.ntotal,
            exact=exact,
            without_distractors=without,
            distractor_index_version=index.version,
        )
        if not exact:
            report["note"] = (
                f"approximate distractor index ({index.manifest['factory']}): "
                f"ranks use its top-{approx_k}, so mAP is an upper bound"
            )
    return report


def markdown(report: dict[str, Any], name: str) -> str:
    """The paper's layout: Medium and Hard mAP (and mP@10), without and with +R1M."""

    def cells(r: dict[str, Any]) -> str:
        return " | ".join(f"{100 * r[p]['mAP']:.1f}" for p in ("medium", "hard"))

    lines = ["| dataset | Medium mAP | Hard mAP |", "| --- | --- | --- |"]
    base = report.get("without_distractors", report)
    lines.append(f"| {name} | {cells(base)} |")
    if report.get("distractors"):
        flag = "" if report["exact"] else " (approx.)"
        lines.append(f"| {name}+R1M{flag} | {cells(report)} |")
    lines += ["", "| protocol | mAP | mP@1 | mP@5 | mP@10 |", "| --- | --- | --- | --- | --- |"]
    for p in PROTOCOLS:
        r = report[p]
        lines.append(
            f"| {p} | "
            + " | ".join(f"{100 * r[k]:.2f}" for k in ("mAP", "mP@1", "mP@5", "mP@10"))
            + " |"
        )
    return "\n".join(lines) + "\n"
