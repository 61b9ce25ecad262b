"""Revisited Oxford/Paris evaluation of descriptor outputs, optionally with the R1M distractor
index: exact full-ranking positions with a flat index, a top-k lower bound otherwise."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.datasets.gnd import load_gnd
from pipeline.evaluate.protocol import KAPPAS, PROTOCOLS, evaluate_positions, protocol_ground_truth
from pipeline.evaluate.ranking import RankingModel, distractor_counter
from pipeline.index.params import ServingConfig
from pipeline.index.search import open_index
from pipeline.io.descriptor_reader import read_descriptors

log = logging.getLogger(__name__)


def _rows(keys: list[str], x: np.ndarray, wanted: list[str], what: str) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    missing = [k for k in wanted if k not in index]
    if missing:
        raise ValueError(f"{len(missing)} {what} images have no descriptor, e.g. {missing[:3]}")
    return x[[index[k] for k in wanted]]


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
    serving: ServingConfig | None = None,
) -> dict[str, Any]:
    """The report: easy/medium/hard -> mAP, mP@1/5/10 (fractions), with distractors when given,
    and the database-only figures under ``without_distractors``. ``serving``: the distractor
    index is searched by Ray actors (``pipeline.index.serving``) instead of in this process."""
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
        with open_index(distractors, serving=serving) as index:
            if index.manifest.descriptor_model != d_model:
                raise ValueError("the distractor index was built from another model's descriptors")
            counts, exact = distractor_counter(index, q, approx_k, db_scores)
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
                f"approximate distractor index ({index.manifest.factory}, nprobe "
                f"{index.params.nprobe}, k_factor {index.params.k_factor}): "
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
