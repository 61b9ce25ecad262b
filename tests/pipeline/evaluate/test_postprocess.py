"""jobs/evaluate.py with whitening, DBA, αQE and re-ranking, without and with a distractor
index built with the same whitening and DBA, and joint DBA over database + distractors (an
index built without DBA): the report equals an independent full-ranking reference written here
(tests/support/postprocessing.py, tests/support/revisitop.py)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from jobs.build_index import main as build_main
from jobs.evaluate import main as evaluate_main
from jobs.learn_whitening import main as learn_main
from pipeline.evaluate.postprocess import (
    EvalPostProcessing,
    JointDba,
    check_joint_dba,
    joint_dba,
    joint_dba_bytes,
)
from pipeline.evaluate.protocol import protocol_ground_truth
from pipeline.evaluate.report import evaluate
from pipeline.index.expansion import DbaConfig
from pipeline.index.search import ShardedIndex
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


def reference_report(q, x, gnd, d=None, w=None, dba=None, qe=None, rr=None, joint=False) -> dict:
    """Full ranking over database ∪ distractors (d: as their index stores them) after the
    steps, each from its definition; then revisitop's scores. ``joint``: DBA of every vector of
    the union over the union (``ref_dba`` of the concatenation)."""
    if w is not None:
        q, x = whiten(w, q), whiten(w, x)
    union = x if d is None else np.concatenate([x, d])
    if dba is not None and joint:
        union = ref_dba(union, dba, 3.0)
        x = union[: len(x)]
    elif dba is not None:
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


def build(root: str, folder: str, output: str, *extra: str) -> str:
    args = ["--descriptors", f"{root}/{folder}", "--output", f"{root}/{output}", "--shards", "2"]
    assert build_main([*args, *extra]) == 0
    return f"{root}/{output}"


def test_joint_dba_equals_dba_of_the_union(ray_local, dataset, tmp_path) -> None:
    """Every vector of database ∪ distractors expanded over the union, from the distractors'
    raw stored vectors, then αQE, re-ranking and an exact ranking against the augmented union:
    the brute-force reference, also when chunks of rows straddle database and distractors."""
    root, q, x, gnd = dataset
    _, raw = write_folder(f"{root}/r1m", 2, 60, seed=4, prefix="d")
    index = build(root, "r1m", "r1m-raw", "--whitening", f"{root}/w.safetensors")  # no --dba
    w, _ = read_whitening(f"{root}/w.safetensors")
    stored = whiten(w, raw)
    union = ref_dba(np.concatenate([whiten(w, x), stored]), 3, 3.0)
    with ShardedIndex.load(index) as loaded:  # chunks of 7 rows: 28..34 holds both
        x_aug, joint = joint_dba(whiten(w, x), loaded, DbaConfig(3), JointDba(chunk_rows=7))
    assert joint.ntotal == 120 and joint.exact
    np.testing.assert_allclose(x_aug, union[: len(x)], atol=1e-5)
    got = joint.stored_vectors().vectors(np.arange(120))
    np.testing.assert_allclose(got, union[len(x) :], atol=1e-5)

    steps = ["--dba", "3", "--dba-joint", "--aqe", "2", "--rerank", "--rerank-m", "30"]
    report = run(root, tmp_path, "--distractors", index, *steps, "--rerank-k", "4")
    assert report["distractors"] == 120 and report["exact"]
    expected = reference_report(q, x, gnd, stored, w, dba=3, qe=2, rr=(30, 4), joint=True)
    assert_report(report, expected)
    alone = reference_report(q, x, gnd, None, w, dba=3, qe=2, rr=(30, 4))
    assert_report(report["without_distractors"], alone)  # no distractors: the database's DBA
    assert report["postprocessing"][1] == (
        "DBA k=3 alpha=3: joint over database + distractors (every vector with its k nearest "
        "others in their union, the distractors from their raw stored vectors; ranked exactly "
        "against the augmented union)"
    )
    post = EvalPostProcessing(dba=DbaConfig(3), dba_joint=JointDba(chunk_rows=5))
    direct = evaluate(f"{root}/gnd_roxford5k.pkl", f"{root}/q", f"{root}/db", index, post=post)
    assert_report(direct, reference_report(q, x, gnd, stored, w, dba=3, joint=True))


def test_joint_dba_differs_from_the_default_and_its_refusals(
    ray_local, dataset, tmp_path, capsys
) -> None:
    """Distractors near database images (their neighbours include those images): joint DBA
    augments them with the database, the default leaves them augmented among themselves."""
    root, q, x, gnd = dataset
    rng = np.random.default_rng(5)
    near = unit(x[rng.integers(0, 24, 30)] + 0.05 * rng.normal(size=(30, DIM)))
    far = unit(rng.normal(size=(30, DIM)))
    raw = np.concatenate([near, far])
    for f, part in enumerate((raw[:30], raw[30:])):
        keys = [f"n{f}_{i:02d}" for i in range(30)]
        write_descriptor_file(f"{root}/near/part-{f:06d}.parquet", keys, part)
    with_dba = build(root, "near", "near-dba", "--dba", "3")
    without = build(root, "near", "near-raw")
    default = run(root, tmp_path, "--distractors", with_dba, "--dba", "3")
    assert_report(default, reference_report(q, x, gnd, ref_dba(raw, 3, 3.0), dba=3))
    assert "among themselves" in default["postprocessing"][0]
    joint = run(root, tmp_path, "--distractors", without, "--dba", "3", "--dba-joint")
    assert_report(joint, reference_report(q, x, gnd, raw, dba=3, joint=True))
    assert "joint over database + distractors" in joint["postprocessing"][0]
    both = np.concatenate([x, raw])
    sims = both[len(x) : len(x) + 30] @ both.T  # the near distractors' neighbours in the union
    sims[np.arange(30), len(x) + np.arange(30)] = -np.inf
    assert (np.argsort(-sims, axis=1)[:, :3] < len(x)).any(axis=1).all()  # database images
    joint_d = ref_dba(both, 3, 3.0)[len(x) : len(x) + 30]
    moved = np.linalg.norm(joint_d - ref_dba(raw, 3, 3.0)[:30], axis=1)
    assert (moved > 0.01).all()  # so each is augmented otherwise than among distractors
    figures = [(p, m) for p in ("easy", "medium", "hard") for m in ("mAP", "mP@5", "mP@10")]
    assert any(joint[p][m] != pytest.approx(default[p][m], abs=1e-6) for p, m in figures)

    args = ["--gnd", f"{root}/gnd_roxford5k.pkl", "--queries", f"{root}/q", "--database"]
    args += [f"{root}/db", "--report", str(tmp_path / "r.json"), "--dba", "3", "--dba-joint"]
    # An index that stored augmented vectors has no raw ones to augment jointly.
    assert evaluate_main([*args, "--distractors", with_dba]) == 1
    err = capsys.readouterr().err
    assert "stores them augmented among themselves" in err and "rebuild it without --dba" in err
    # Over the memory limit: refused, naming the estimate (94 vectors of 32 floats).
    n = len(x) + 60
    need = 3 * n * DIM * 4 + n * (n * 4 + 3 * DIM * 12)
    assert joint_dba_bytes(n, DIM, 3, 1024) == need
    assert evaluate_main([*args, "--distractors", without, "--dba-joint-max-gib", "1e-5"]) == 1
    err = capsys.readouterr().err
    assert f"needs about {need / 2**30:.3g} GiB" in err and "more than 1e-05 GiB" in err
    # The default limit is a fraction of the memory available: a billion distractors exceed it.
    with ShardedIndex.load(without) as loaded:
        huge = dataclasses.replace(loaded.manifest, count=10**9)
    post = EvalPostProcessing(dba=DbaConfig(3), dba_joint=JointDba())
    with pytest.raises(ValueError, match=r"needs about .* GiB .*0.75 of the .* GiB available"):
        check_joint_dba(huge, len(x), post)
    check_joint_dba(loaded.manifest, len(x), post)  # the real one fits


def test_joint_dba_needs_dba_and_distractors(dataset, tmp_path, capsys) -> None:
    root, *_ = dataset
    args = ["--gnd", f"{root}/gnd_roxford5k.pkl", "--queries", f"{root}/q", "--database"]
    args += [f"{root}/db", "--report", str(tmp_path / "r.json"), "--dba-joint"]
    for extra in (["--distractors", f"{root}/none"], ["--dba", "3"]):
        with pytest.raises(SystemExit) as stop:
            evaluate_main([*args, *extra])
        assert stop.value.code == 2
        assert "--dba-joint needs --dba K and --distractors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main([*args[:-1], "--dba", "3", "--dba-joint-max-gib", "4"])
    assert "with --dba-joint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="joint DBA needs DBA's k and alpha"):
        EvalPostProcessing(dba_joint=JointDba())
    post = EvalPostProcessing(dba=DbaConfig(3), dba_joint=JointDba())
    with pytest.raises(ValueError, match="it needs distractors"):
        evaluate(f"{root}/gnd_roxford5k.pkl", f"{root}/q", f"{root}/db", post=post)
    with pytest.raises(ValueError, match="chunk_rows"):
        JointDba(chunk_rows=0)
