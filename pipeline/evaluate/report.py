"""Revisited Oxford/Paris evaluation of descriptor outputs, optionally with the R1M distractor
index: exact full-ranking positions with a flat index (or after joint DBA, which ranks against
the augmented distractors by brute force), a top-k lower bound otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.datasets.gnd import load_gnd
from pipeline.evaluate.postprocess import (
    EvalPostProcessing,
    check_joint_dba,
    prepare,
    ranking,
    resolve_whitening,
)
from pipeline.evaluate.protocol import KAPPAS, PROTOCOLS, evaluate_positions, protocol_ground_truth
from pipeline.index.query import describe_search
from pipeline.index.search import VersionIndex, resolve_version
from pipeline.index.search_config import ServingConfig
from pipeline.index.serving import open_index
from pipeline.io.descriptor_reader import read_descriptors

log = logging.getLogger(__name__)


def _rows(keys: list[str], x: np.ndarray, wanted: list[str], what: str) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    missing = [k for k in wanted if k not in index]
    if missing:
        raise ValueError(f"{len(missing)} {what} images have no descriptor, e.g. {missing[:3]}")
    return x[[index[k] for k in wanted]]


def score_protocols(
    gnd: list[dict[str, Any]], positions_of: Callable[[int, np.ndarray], np.ndarray]
) -> dict[str, dict[str, float]]:
    return {
        p: evaluate_positions(positions_of, protocol_ground_truth(gnd, p), KAPPAS).as_report()
        for p in PROTOCOLS
    }


def evaluate(
    gnd_uri: str,
    queries: str,
    database: str,
    distractors: str | None = None,
    approx_k: int = 1000,
    post: EvalPostProcessing | None = None,
    serving: ServingConfig | None = None,
    search: tuple[int | None, int | None] = (None, None),
) -> dict[str, Any]:
    """The report: easy/medium/hard -> mAP, mP@1/5/10 (fractions), with distractors when given,
    and the database-only figures under ``without_distractors``; ``post``: whitening, DBA, αQE
    and re-ranking (``pipeline.evaluate.postprocess``, joint DBA over database ∪ distractors
    included), listed under ``postprocessing``.
    ``serving``: the distractor index is searched by Ray actors (``pipeline.index.serving``)
    instead of in this process. ``search``: (nprobe, k_factor) overriding the distractor
    version's defaults (its tuned setting, when its build tuned one); None keeps them. The
    report's ``search`` says which setting ran and the recall the version promises with it."""
    post = post or EvalPostProcessing()
    truth = load_gnd(gnd_uri)
    q_keys, q_x, q_model = read_descriptors(queries)
    d_keys, d_x, d_model = read_descriptors(database)
    if q_model != d_model:
        raise ValueError("queries and database descriptors come from different models/configs")
    q = _rows(q_keys, q_x, truth.qimlist, "query")
    x = _rows(d_keys, d_x, truth.imlist, "database")
    gnd = truth.gnd
    if not distractors:
        if post.dba_joint is not None:
            raise ValueError("joint DBA augments database and distractors: it needs distractors")
        return _report(gnd, q, x, None, post, approx_k)
    version = None
    if post.dba_joint is not None:  # its refusals come before the index is loaded
        version, manifest = resolve_version(distractors, None)
        check_joint_dba(manifest, len(x), post)
    with open_index(distractors, version, serving=serving) as index:
        index.check_queries(d_model, database)
        index.params = index.params.with_overrides(*search)
        return _report(gnd, q, x, index, post, approx_k)


def _report(
    gnd: list[dict[str, Any]],
    q: np.ndarray,
    x: np.ndarray,
    index: VersionIndex | None,
    post: EvalPostProcessing,
    approx_k: int,
) -> dict[str, Any]:
    """The figures without distractors, and with ``index``'s when given."""
    # The same whitening with and without distractors (the flag's, or the index's own).
    whitening = resolve_whitening(post, index)
    alone = prepare(q, x, None, post, whitening)
    positions, _ = ranking(alone, post, approx_k)
    report: dict[str, Any] = score_protocols(gnd, positions)
    report.update(queries=len(q), database=len(x), distractors=0, exact=True)
    report["postprocessing"] = alone.applied
    if index is None:
        return report
    prepared = prepare(q, x, index, post, whitening)
    positions, exact = ranking(prepared, post, approx_k)
    without = {p: report[p] for p in PROTOCOLS}
    report.update(score_protocols(gnd, positions))
    report["postprocessing"] = prepared.applied
    report.update(
        distractors=index.ntotal,
        exact=exact,
        without_distractors=without,
        distractor_index_version=index.version,
        search=describe_search(index, index.params),
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
    steps = report.get("postprocessing") or ["none"]
    lines += ["", "Post-processing: " + "; ".join(steps) + "."]
    return "\n".join(lines) + "\n"
