"""αQE, DBA at build time and SuperGlobal re-ranking, each against an independent reference
written here in plain loops from the papers' definitions (and SuperGlobal's published code)."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.build_index import main as build_main
from jobs.search_index import main as search_main
from pipeline.index.expansion import QeConfig, alpha_expand
from pipeline.index.query import QueryOptions, search
from pipeline.index.rerank import RerankConfig, rerank
from pipeline.index.search import ShardedIndex
from pipeline.index.versions import read_latest
from tests.support.descriptors import DIM, unit, write_folder
from tests.support.postprocessing import ref_alpha_expand, ref_dba, ref_rerank


def clustered(n_clusters: int, per: int, seed: int, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_clusters, DIM)))
    return unit(np.repeat(centres, per, 0) + noise * rng.normal(size=(n_clusters * per, DIM)))


def test_alpha_expansion_matches_the_reference() -> None:
    rng = np.random.default_rng(0)
    v = unit(rng.normal(size=(4, DIM)))
    nb = unit(rng.normal(size=(12, DIM))).reshape(4, 3, DIM)
    sims = np.array([[0.9, 0.5, -0.2], [0.3, 0.2, 0.1], [-0.1, -0.2, -0.3], [1.0, -np.inf, 0.4]])
    got = alpha_expand(v, nb, sims, 3.0)
    for i in range(4):
        want = ref_alpha_expand(v[i], nb[i][np.isfinite(sims[i])], sims[i][np.isfinite(sims[i])], 3)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], v[2], rtol=1e-6)  # only negative neighbours: unchanged


@pytest.mark.parametrize("m,k,beta", [(30, 9, 0.15), (12, 3, 0.5), (5, 9, 0.15)])
def test_rerank_matches_the_reference(m: int, k: int, beta: float) -> None:
    x = clustered(4, 10, seed=1)
    rng = np.random.default_rng(2)
    q = unit(x[:2] + 0.5 * rng.normal(size=(2, DIM)))
    tops = np.stack([x[np.argsort(-(x @ qi))[:m]] for qi in q])
    order, scores = rerank(q, tops, RerankConfig(m, k, beta))
    for i in range(2):
        want_order, want_scores = ref_rerank(q[i], tops[i].astype(np.float64), k, beta)
        assert order[i].tolist() == want_order
        np.testing.assert_allclose(scores[i], want_scores, rtol=1e-5, atol=1e-6)


def test_rerank_changes_the_order() -> None:
    """Guard against a re-ranking that returns its input: on clustered data it moves items."""
    x = clustered(5, 12, seed=3, noise=1.0)
    q = unit(x[:3] + np.random.default_rng(4).normal(size=(3, DIM)))
    tops = np.stack([x[np.argsort(-(x @ qi))[:40]] for qi in q])
    order, _ = rerank(q, tops, RerankConfig(40, 9, 0.15))
    assert any(order[i].tolist() != list(range(40)) for i in range(3))


def test_dba_at_build_time_matches_the_reference(ray_local, s3_bucket: str, capsys) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_folder(desc, 3, 120, seed=5)
    args = ["--descriptors", desc, "--output", out, "--shards", "2"]
    assert build_main([*args, "--dba", "4", "--dba-alpha", "3"]) == 0
    printed = capsys.readouterr().out
    assert "DBA k=4 alpha=3:" in printed and "peak RSS" in printed
    manifest = read_latest(out)[1]
    dba = manifest.dba
    assert dba is not None and (dba.k, dba.alpha, dba.exact) == (4, 3.0, True)
    assert dba.seconds > 0 and dba.peak_rss_bytes > 0
    assert manifest.config["dba"]["k"] == 4
    index = ShardedIndex.load(out)
    stored = index.stored_vectors().vectors(np.arange(len(x)))
    np.testing.assert_allclose(stored, ref_dba(x, 4, 3.0), rtol=1e-5, atol=1e-6)
    assert build_main([*args, "--dba", "4"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert build_main([*args, "--dba", "2"]) == 0  # another DBA: a new version
    assert read_latest(out)[1].dba.k == 2


def test_dba_with_an_approximate_index(ray_local, s3_bucket: str) -> None:
    """Neighbours from IVF (nprobe 16 of 8 lists: every list, so the same as exact here)."""
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/ivf"
    _, x = write_folder(desc, 2, 150, seed=6)
    args = ["--descriptors", desc, "--output", out, "--factory", "IVF8,Flat", "--train-size", "300"]
    assert build_main([*args, "--dba", "3"]) == 0
    assert not read_latest(out)[1].dba.exact
    stored = ShardedIndex.load(out).stored_vectors().vectors(np.arange(len(x)))
    np.testing.assert_allclose(stored, ref_dba(x, 3, 3.0), rtol=1e-5, atol=1e-6)


def test_search_with_qe_and_rerank(ray_local, s3_bucket: str, capsys) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_folder(desc, 2, 100, seed=7)
    assert build_main(["--descriptors", desc, "--output", out]) == 0
    index = ShardedIndex.load(out)
    q = unit(np.random.default_rng(8).normal(size=(3, DIM)))
    opts = QueryOptions(QeConfig(2, 3.0), RerankConfig(20, 4, 0.15))
    found = search(index, q, 5, opts)
    assert found.applied == ["alpha-QE k=2 alpha=3", "re-ranking M=20 K=4 beta=0.15 (SuperGlobal)"]
    for i in range(3):
        top2 = np.argsort(-(x @ q[i]), kind="stable")[:2]
        qe = ref_alpha_expand(q[i], x[top2], x[top2] @ q[i], 3.0)
        top20 = np.argsort(-(x @ qe), kind="stable")[:20]
        order, _ = ref_rerank(qe, x[top20].astype(np.float64), 4, 0.15)
        assert found.result.ids[i].tolist() == top20[order][:5].tolist()
    args = ["--index", out, "--descriptors", desc, "--key", "k00_00003", "--aqe", "2", "--rerank"]
    assert search_main(args) == 0
    printed = capsys.readouterr().out
    assert "post-processing: alpha-QE k=2 alpha=3; re-ranking M=400 K=9" in printed
    assert "k00_00003" in printed
