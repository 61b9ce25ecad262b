"""The revisitop protocol: hand-computed cases and an independent full-ranking reference."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.protocol import (
    QueryGroundTruth,
    average_precision,
    evaluate_positions,
    protocol_ground_truth,
    ranking_positions,
    score_query,
)
from pipeline.evaluate.ranking import RankingModel
from tests.support.revisitop import reference_map


def test_average_precision_by_hand() -> None:
    # Positives at 0 and 2 of the ranking: (1+1)/2/2 + (1/2 + 2/3)/2/2
    assert average_precision(np.array([0, 2]), 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    # One of two positives never retrieved in a ranking of 1: half the recall.
    assert average_precision(np.array([0]), 2) == pytest.approx(0.5)


def test_junk_is_removed_before_scoring() -> None:
    ap, prec = score_query(np.array([1, 3]), np.array([0, 2]), 2)
    assert ap == pytest.approx(1.0)
    np.testing.assert_allclose(prec, [1.0, 1.0, 1.0])


def test_precision_at_k_uses_revisitops_definition() -> None:
    # Positives at 1-based 2 and 3: P@1 = 0/1, P@5 = 2/min(3, 5), P@10 = 2/3.
    _, prec = score_query(np.array([1, 2]), np.empty(0, np.int64), 2)
    np.testing.assert_allclose(prec, [0.0, 2 / 3, 2 / 3])


def test_queries_without_positives_are_excluded() -> None:
    gnd = [
        QueryGroundTruth(np.array([0]), np.empty(0, np.int64)),
        QueryGroundTruth(np.empty(0, np.int64), np.empty(0, np.int64)),
    ]
    ranks = np.array([[1, 1], [0, 0]])  # query 0 finds its positive second
    scores = evaluate_positions(ranking_positions(ranks), gnd)
    assert scores.map == pytest.approx((0 + 1 / 2) / 2)  # AP of query 0 only: rank 2 of 2
    assert np.isnan(scores.aps[1])


def test_protocols_split_easy_hard_junk() -> None:
    g = [{"easy": [1, 2], "hard": [3], "junk": [4]}]
    (easy,) = protocol_ground_truth(g, "easy")
    (medium,) = protocol_ground_truth(g, "medium")
    (hard,) = protocol_ground_truth(g, "hard")
    assert sorted(easy.ok) == [1, 2] and sorted(easy.junk) == [3, 4]
    assert sorted(medium.ok) == [1, 2, 3] and sorted(medium.junk) == [4]
    assert sorted(hard.ok) == [3] and sorted(hard.junk) == [1, 2, 4]
    with pytest.raises(ValueError):
        protocol_ground_truth(g, "extreme")


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_full_ranking_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_db, nq = 40, 6
    scores = rng.integers(0, 12, size=(nq, n_db)).astype(np.float32)  # many ties
    gnd = []
    for _ in range(nq):
        perm = rng.permutation(n_db)
        gnd.append(QueryGroundTruth(perm[: rng.integers(0, 6)], perm[6 : 6 + rng.integers(0, 5)]))
    gnd[0] = QueryGroundTruth(np.array([3]), np.empty(0, np.int64))  # at least one positive
    ranking = np.stack([np.argsort(-scores[q], kind="stable") for q in range(nq)], axis=1)
    expected_map, expected_prec = reference_map(ranking, gnd)
    got = evaluate_positions(RankingModel(scores).positions_of, gnd)
    assert got.map == pytest.approx(expected_map, abs=1e-12)
    np.testing.assert_allclose(list(got.mp.values()), expected_prec, atol=1e-12)


def test_distractors_rank_after_database_images_at_equal_score() -> None:
    db = np.array([[0.9, 0.5, 0.5]], dtype=np.float32)
    distractors = np.sort(np.array([0.95, 0.5, 0.1], dtype=np.float32))

    def counts_above(q: int, s: np.ndarray) -> np.ndarray:
        return len(distractors) - np.searchsorted(distractors, s, side="right")

    ranking = RankingModel(db, counts_above)
    # Combined order: d0.95, db0 0.9, db1 0.5, db2 0.5, d0.5, d0.1
    np.testing.assert_array_equal(ranking.positions_of(0, np.array([0, 1, 2])), [1, 2, 3])
