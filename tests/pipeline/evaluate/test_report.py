"""jobs/evaluate.py on synthetic descriptors with a ground truth we control, with and without a
distractor index (exact Flat and approximate IVF), against an independent full-ranking
reference."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from jobs.evaluate import main as evaluate_main
from pipeline.datasets.gnd import load_gnd
from pipeline.evaluate.protocol import protocol_ground_truth
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.io.storage import read_bytes, write_bytes_atomic
from tests.support.descriptors import DIM, unit, write_descriptor_file, write_folder
from tests.support.revisitop import reference_map


@pytest.fixture
def dataset(s3_bucket: str):
    """12 database images, 3 queries; positives are near the query, junk and hard in between."""
    rng = np.random.default_rng(0)
    q = unit(rng.normal(size=(3, DIM)))
    x = unit(rng.normal(size=(12, DIM)))
    for i, (easy, hard, junk) in enumerate([([0, 1], [2], [3]), ([4], [5, 6], []), ([], [], [7])]):
        for j, db in enumerate(easy + hard + junk):
            x[db] = unit(q[i : i + 1] + (0.3 + 0.25 * j) * rng.normal(size=(1, DIM)))[0]
    imlist = [f"db{i:02d}" for i in range(12)]
    qimlist = ["q0", "q1", "q2"]
    gnd = [
        {"bbx": [0, 0, 10, 10], "easy": np.array([0, 1]), "hard": [2], "junk": [3]},
        {"bbx": [0, 0, 10, 10], "easy": [4], "hard": [5, 6], "junk": []},
        {"bbx": [0, 0, 10, 10], "easy": [], "hard": [], "junk": [7]},  # no positives
    ]
    root = f"s3://{s3_bucket}"
    write_bytes_atomic(
        f"{root}/gnd_roxford5k.pkl",
        pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}),
    )
    write_descriptor_file(f"{root}/q/part-000000.parquet", qimlist, q)
    write_descriptor_file(f"{root}/db/part-000000.parquet", imlist[::-1], x[::-1])  # any order
    return root, q, x, gnd


def expected_report(q: np.ndarray, x: np.ndarray, gnd, distractors=None) -> dict:
    scores = q @ x.T
    if distractors is not None:
        scores = np.concatenate([scores, q @ distractors.T], axis=1)  # database first at ties
    ranking = np.stack([np.argsort(-s, kind="stable") for s in scores], axis=1)
    out = {}
    for p in ("easy", "medium", "hard"):
        m, prec = reference_map(ranking, protocol_ground_truth(gnd, p))
        out[p] = {"mAP": m, "mP@1": prec[0], "mP@5": prec[1], "mP@10": prec[2]}
    return out


def assert_report(got: dict, expected: dict) -> None:
    for p, values in expected.items():
        for k, v in values.items():
            assert got[p][k] == pytest.approx(v, abs=1e-6), (p, k)


def evaluate_args(root: str, report: str, database: str = "db", *extra: str) -> list[str]:
    return [
        "--gnd",
        f"{root}/gnd_roxford5k.pkl",
        "--queries",
        f"{root}/q",
        "--database",
        f"{root}/{database}",
        "--report",
        report,
        *extra,
    ]


def test_database_only(dataset, tmp_path, capsys) -> None:
    root, q, x, gnd = dataset
    report_path = tmp_path / "report.json"
    assert evaluate_main(evaluate_args(root, str(report_path))) == 0
    report = json.loads(report_path.read_text())
    assert_report(report, expected_report(q, x, gnd))
    assert 0 < report["medium"]["mAP"] <= 1 and report["exact"] and report["queries"] == 3
    md = (tmp_path / "report.md").read_text()
    assert "| ROxf |" in md and "Medium mAP" in md
    assert "| ROxf |" in capsys.readouterr().out


@pytest.mark.parametrize("factory,exact", [("Flat", True), ("IVF4,Flat", False)])
def test_with_distractors(ray_local, dataset, tmp_path, factory: str, exact: bool) -> None:
    root, q, x, gnd = dataset
    _, distractors = write_folder(f"{root}/r1m", 2, 150, seed=4, prefix="d")
    build_index(
        f"{root}/r1m",
        f"{root}/r1m-index",
        IndexBuildConfig(factory=factory, shards=2, train_size=300),
    )
    report_path = tmp_path / "report.json"
    args = evaluate_args(root, str(report_path), "db", "--distractors", f"{root}/r1m-index")
    assert evaluate_main(args) == 0
    report = json.loads(report_path.read_text())
    assert report["distractors"] == 300 and report["exact"] is exact
    assert_report(report["without_distractors"], expected_report(q, x, gnd))
    if exact:  # every positive's exact rank among database + distractors, not cut at k
        assert_report(report, expected_report(q, x, gnd, distractors))
    else:
        assert "approximate" in report["note"]
        ref = expected_report(q, x, gnd, distractors)
        assert report["medium"]["mAP"] >= ref["medium"]["mAP"] - 1e-9  # an upper bound
    assert "+R1M" in (tmp_path / "report.md").read_text()


def test_missing_descriptors_and_bad_gnd_are_clear_errors(dataset, tmp_path, capsys) -> None:
    root, *_ = dataset
    write_descriptor_file(f"{root}/db2/part-000000.parquet", ["db00"], unit(np.ones((1, DIM))))
    assert evaluate_main(evaluate_args(root, str(tmp_path / "r.json"), "db2")) == 1
    assert "11 database images have no descriptor" in capsys.readouterr().err
    write_bytes_atomic(f"{root}/evil.pkl", pickle.dumps({"imlist": print}))
    with pytest.raises(ValueError, match="not a revisitop ground-truth"):
        load_gnd(f"{root}/evil.pkl")
    assert read_bytes(f"{root}/gnd_roxford5k.pkl")
