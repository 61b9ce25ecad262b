"""Search as one index would answer it, however the vectors are sharded: sharded versions
against a single FAISS index built from the same trained parameters (FAISS's own IndexRefine
for the refined factories), refinement that recovers recall, search settings recorded in the
manifest and overridden per search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from jobs.build_index import main as build_main
from jobs.search_index import main as search_main
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.merge import merge, refine_cut
from pipeline.index.search import ShardedIndex
from pipeline.index.search_config import SearchParams
from pipeline.index.shard import Candidates
from pipeline.index.versions import read_latest
from tests.support.descriptors import (
    assert_same_ranking,
    queries_near,
    write_clustered_folder,
    write_folder,
)
from tests.support.index_reference import faiss_search, one_index


@pytest.mark.parametrize(
    "factory", ["Flat", "IVF16,Flat", "IVF16,SQ8,RFlat", "IVF16,PQ8,Refine(SQ8)"]
)
def test_sharded_version_answers_as_one_faiss_index(ray_local, tmp_path, factory) -> None:
    desc, out = str(tmp_path / "desc"), str(tmp_path / "index")
    _, x = write_clustered_folder(desc, 4, 700)
    cfg = IndexBuildConfig(factory=factory, shards=3, train_size=2800, nprobe=3, k_factor=3)
    build_index(desc, out, cfg)
    index = ShardedIndex.load(out)
    assert len(index.held) == 3 and index.params == SearchParams(nprobe=3, k_factor=3)
    q = queries_near(x, 25)
    found = index.search(q, 20)
    scores, ids = faiss_search(one_index(out, x), q, 20, index.params)
    assert_same_ranking(found.ids, found.scores, ids, scores)  # ids: positions in file order
    lazy = ShardedIndex.load(out, lazy=True)  # one shard's FAISS index in memory at a time
    again = lazy.search(q, 20)
    np.testing.assert_array_equal(again.ids, found.ids)
    np.testing.assert_array_equal(again.scores, found.scores)
    assert again.keys == found.keys and all(s.index is None for s in lazy.held)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True)])
    )


def test_refinement_recovers_what_compressed_codes_lose(ray_local, tmp_path) -> None:
    desc = str(tmp_path / "desc")
    _, x = write_clustered_folder(desc, 2, 2000, clusters=20, noise=0.8)
    q = queries_near(x, 40)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    index = {}
    for factory in ("IVF8,PQ16x4fs", "IVF8,PQ16x4fs,RFlat"):
        out = str(tmp_path / factory.replace(",", "_"))
        cfg = IndexBuildConfig(factory=factory, shards=2, train_size=4000, nprobe=8)
        build_index(desc, out, cfg)
        index[factory] = ShardedIndex.load(out)
    plain = recall(index["IVF8,PQ16x4fs"].search(q, 10).ids, exact)
    refined = index["IVF8,PQ16x4fs,RFlat"]
    few, many = (refined.search(q, 10, SearchParams(8, kf)) for kf in (1, 8))
    assert plain < 0.7 and recall(few.ids, exact) < 0.8 and recall(many.ids, exact) > 0.9, (
        plain,
        recall(few.ids, exact),
        recall(many.ids, exact),
    )
    # Refined scores are the stored vectors' exact inner products.
    np.testing.assert_allclose(many.scores, np.take_along_axis(q @ x.T, many.ids, 1), rtol=1e-6)


def test_manifest_records_search_settings_and_searches_override_them(
    ray_local, s3_bucket, capsys
) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/ivf"
    keys, x = write_folder(desc, 2, 800)  # no clusters: one IVF cell holds few neighbours
    args = ["--descriptors", desc, "--output", out, "--factory", "IVF32,Flat", "--shards", "2"]
    assert build_main([*args, "--train-size", "1600", "--nprobe", "1", "--k-factor", "2"]) == 0
    manifest = read_latest(out)[1]
    assert (manifest.config["nprobe"], manifest.config["k_factor"]) == (1, 2)
    index = ShardedIndex.load(out)
    q = queries_near(x, 40, noise=0.6)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    narrow = recall(index.search(q, 10).ids, exact)  # the recorded nprobe 1
    wide = recall(index.search(q, 10, index.params.with_overrides(nprobe=32)).ids, exact)
    assert wide == 1.0 and narrow < 0.9, (narrow, wide)
    # The search job takes the recorded setting unless told otherwise.
    capsys.readouterr()
    query = ["--index", out, "--descriptors", desc, "--key", keys[5], "-k", "3"]
    assert search_main([*query, "--nprobe", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == keys[5]  # its own vector first, at score 1
    assert float(lines[1].split()[1]) == pytest.approx(1.0, abs=1e-4)


def test_merge_cuts_before_refinement_and_breaks_ties_by_id() -> None:
    def shard(n: int, ids: list[int], scores: list[float]) -> Candidates:
        a = np.array([ids])
        return Candidates(n, a, a, np.array([scores], np.float32))

    # k = 1, k_factor = 2: the two best by codes are ids 1 (0.9) and 7 (0.8); id 3 scores
    # better once refined, but one index would not have re-scored it.
    cut = merge([shard(0, [1, 3], [0.9, 0.7]), shard(1, [7], [0.8])], 1, 2)
    assert cut.ids.tolist() == [[1, 7]] and cut.shards.tolist() == [[0, 1]]
    refined = refine_cut(cut, np.array([[0.5, 0.6]], np.float32), 1)
    assert refined.ids.tolist() == [[7]] and refined.positions.tolist() == [[7]]
    tie = merge([shard(0, [9], [0.5]), shard(1, [4], [0.5])], 1, 2)
    assert tie.ids.tolist() == [[4, 9]]
    padded = merge([shard(0, [2], [0.1])], 1, 3)
    assert padded.ids.tolist() == [[2, -1, -1]] and np.isneginf(padded.scores[0, 1:]).all()


@pytest.mark.parametrize("refine", ["Flat", "SQ8", "SQ8_uniform"])
def test_rescoring_reads_the_refinement_codes_as_faiss_decodes_them(refine: str) -> None:
    from pipeline.index.shard import _rescore

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 24)) * np.linspace(0.2, 2, 24)).astype(np.float32)
    q = rng.normal(size=(20, 24)).astype(np.float32)
    metric = faiss.METRIC_INNER_PRODUCT
    if refine == "SQ8_uniform":
        index = faiss.IndexScalarQuantizer(24, faiss.ScalarQuantizer.QT_8bit_uniform, metric)
    else:
        index = faiss.index_factory(24, refine, metric)
    index.train(x)
    index.add(x)
    positions = rng.integers(-1, 500, size=(20, 30))
    got = _rescore(index, q, positions)
    decoded = index.reconstruct_n(0, 500)
    want = np.where(
        positions >= 0, np.einsum("qmd,qd->qm", decoded[np.maximum(positions, 0)], q), -np.inf
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
