"""jobs/evaluate.py with whitening, DBA, αQE and re-ranking, without and with a distractor
index built with the same whitening and DBA: the report equals an independent full-ranking
reference written here (tests/support/postprocessing.py, tests/support/revisitop.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from jobs.build_index import main as build_main
from jobs.evaluate import main as evaluate_main
from jobs.learn_whitening import main as learn_main
from pipeline.evaluate.protocol import protocol_ground_truth
from pipeline.index.whitening import read_whitening
from pipeline.io.storage import write_bytes_atomic
from tests.support.descriptors import DIM, unit, write_descriptor_file, write_folder
from tests.support.postprocessing import ref_alpha_expand, ref_dba, ref_rerank
from tests.support.revisitop import reference_map


@pytest.fixture
def dataset(s3_bucket: str):
    """4 landmarks: a query each; 3 easy, 2 hard, 1 junk database images per landmark, plus
    10 unrelated ones; a whitening fitted on other descriptors."""
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(4, DIM)))
    q = unit(centres + 0.6 * rng.normal(size=(4, DIM)))
    rows, gnd = [], []
    for c in range(4):
        g = {"bbx": [0, 0, 9, 9], "easy": [], "hard": [], "junk": []}
        for kind, noise in [("easy", 0.8)] * 3 + [("hard", 1.3)] * 2 + [("junk", 1.0)]:
            g[kind].append(len(rows))
            rows.append(unit(centres[c : c + 1] + noise * rng.normal(size=(1, DIM)))[0])
        gnd.append(g)
    rows += list(unit(rng.normal(size=(10, DIM))))
    x = np.stack(rows).astype(np.float32)
    root = f"s3://{s3_bucket}"
    imlist, qimlist = [f"db{i:02d}" for i in range(len(x))], [f"q{i}" for i in range(4)]
    payload = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    write_bytes_atomic(f"{root}/gnd_roxford5k.pkl", pickle.dumps(payload))
    write_descriptor_file(f"{root}/q/part-000000.parquet", qimlist, q)
    write_descriptor_file(f"{root}/db/part-000000.parquet", imlist, x)
    write_folder(f"{root}/train", 1, 300, seed=11, prefix="t")
    assert learn_main(["--descriptors", f"{root}/train", "--output", f"{root}/w.safetensors"]) == 0
    return root, q, x, gnd


def whiten(w, v: np.ndarray) -> np.ndarray:
    y = (v.astype(np.float64) - w.mean) @ w.projection.T
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def reference_report(q, x, gnd, d=None, w=None, dba=None, qe=None, rr=None) -> dict:
    """Full ranking over database ∪ distractors (d: as their index stores them) after the
    steps, each from its definition; then revisitop's scores."""
    if w is not None:
        q, x = whiten(w, q), whiten(w, x)
    union = x if d is None else np.concatenate([x, d])
    if dba is not None:
        sims = x @ union.T
        new = []
        for i in range(len(x)):
            order = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:dba]
            new.append(ref_alpha_expand(x[i], union[order], sims[i][order], 3.0))
        x = np.stack(new)
        union = x if d is None else np.concatenate([x, d])
    if qe is not None:
        q = np.stack(
            [
                ref_alpha_expand(qi, union[top], union[top] @ qi, 3.0)
                for qi in q
                for top in [np.argsort(-(union @ qi), kind="stable")[:qe]]
            ]
        )
    ranking = np.argsort(-(q @ union.T), axis=1, kind="stable").T  # (n, nq)
    if rr is not None:
        m, k = rr
        for i in range(len(q)):
            top = ranking[:m, i]
            order, _ = ref_rerank(q[i], union[top], k, 0.15)
            ranking[:m, i] = top[order]
    out = {}
    for p in ("easy", "medium", "hard"):
        value, prec = reference_map(ranking, protocol_ground_truth(gnd, p))
        out[p] = {"mAP": value, "mP@1": prec[0], "mP@5": prec[1], "mP@10": prec[2]}
    return out


def run(root: str, tmp_path, *extra: str) -> dict:
    path = tmp_path / "report.json"
    args = ["--gnd", f"{root}/gnd_roxford5k.pkl", "--queries", f"{root}/q"]
    assert evaluate_main([*args, "--database", f"{root}/db", "--report", str(path), *extra]) == 0
    return json.loads(path.read_text())


def assert_report(got: dict, expected: dict) -> None:
    for p, values in expected.items():
        for k, v in values.items():
            assert got[p][k] == pytest.approx(v, abs=1e-6), (p, k)


def test_database_only(dataset, tmp_path) -> None:
    root, q, x, gnd = dataset
    w, _ = read_whitening(f"{root}/w.safetensors")
    plain = run(root, tmp_path)
    assert plain["postprocessing"] == []
    report = run(root, tmp_path, "--aqe", "2")
    assert_report(report, reference_report(q, x, gnd, qe=2))
    assert report["postprocessing"] == ["alpha-QE k=2 alpha=3"]
    args = ["--whitening", f"{root}/w.safetensors", "--dba", "3", "--rerank"]
    report = run(root, tmp_path, *args, "--rerank-m", "20", "--rerank-k", "3")
    assert_report(report, reference_report(q, x, gnd, w=w, dba=3, rr=(20, 3)))
    assert [s.split(" ")[0] for s in report["postprocessing"]] == ["whitening", "DBA", "re-ranking"]
    assert report["medium"]["mAP"] != plain["medium"]["mAP"]  # the steps did something
    assert "Post-processing: whitening" in (tmp_path / "report.md").read_text()


def test_with_a_distractor_index_built_with_whitening_and_dba(
    ray_local, dataset, tmp_path, capsys
) -> None:
    root, q, x, gnd = dataset
    _, raw = write_folder(f"{root}/r1m", 2, 60, seed=4, prefix="d")
    index = f"{root}/r1m-index"
    build = ["--descriptors", f"{root}/r1m", "--output", index, "--shards", "2"]
    assert build_main([*build, "--whitening", f"{root}/w.safetensors", "--dba", "3"]) == 0
    w, _ = read_whitening(f"{root}/w.safetensors")
    stored = ref_dba(whiten(w, raw), 3, 3.0)  # what the index should hold
    steps = ["--dba", "3", "--aqe", "2", "--rerank", "--rerank-m", "30", "--rerank-k", "4"]
    report = run(root, tmp_path, "--distractors", index, *steps)  # whitening: the index's
    assert report["distractors"] == 120 and report["exact"]
    assert_report(report, reference_report(q, x, gnd, stored, w, dba=3, qe=2, rr=(30, 4)))
    alone = reference_report(q, x, gnd, None, w, dba=3, qe=2, rr=(30, 4))
    assert_report(report["without_distractors"], alone)
    assert (
        report["postprocessing"][0].startswith("whitening")
        and "index" in report["postprocessing"][0]
    )
    dba = report["postprocessing"][1]  # the approximation is stated, not only "DBA k=3"
    assert dba.startswith("DBA k=3 alpha=3: ") and "among themselves" in dba and "jointly" in dba
    # A database augmented differently from the distractors is refused, both ways.
    args = ["--gnd", f"{root}/gnd_roxford5k.pkl", "--queries", f"{root}/q", "--database"]
    args += [f"{root}/db", "--report", str(tmp_path / "r.json"), "--distractors", index]
    assert evaluate_main(args) == 1
    assert "built with DBA k=3: pass --dba 3" in capsys.readouterr().err
    assert evaluate_main([*args, "--dba", "5"]) == 1
    assert "needs a distractor index built with the same DBA" in capsys.readouterr().err
    write_folder(f"{root}/train2", 1, 200, seed=12, prefix="u")
    assert learn_main(["--descriptors", f"{root}/train2", "--output", f"{root}/w2"]) == 0
    assert evaluate_main([*args, "--dba", "3", "--whitening", f"{root}/w2"]) == 1
    assert "is not the distractor index's" in capsys.readouterr().err
