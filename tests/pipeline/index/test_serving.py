"""Search across Ray actors (a local cluster): the same answers as the single-process search,
through the jobs too, with each actor holding only its share of the shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray

from jobs.evaluate import main as evaluate_main
from jobs.search_index import main as search_main
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.search import SearchResult, ShardedIndex
from pipeline.index.search_config import SearchParams, ServingConfig
from pipeline.index.serving import DistributedIndex
from tests.support.descriptors import (
    DIM,
    assert_same_ranking,
    queries_near,
    write_clustered_folder,
    write_folder,
)
from tests.support.waiting import wait_until

# Three actors on the test cluster's two CPUs; no memory beyond the (small) shards reserved.
SERVING = ServingConfig(actors=3, cpus_per_actor=0.5, overhead_bytes=0)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,PQ8x4fs,RFlat"])
def test_actors_answer_as_the_single_process_search(ray_local, s3_bucket, factory) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_clustered_folder(desc, 5, 300)
    build_index(desc, out, IndexBuildConfig(factory=factory, shards=5, train_size=1500, nprobe=4))
    local = ShardedIndex.load(out)
    q = queries_near(x, 20)
    with DistributedIndex.start(out, serving=SERVING) as served:
        assert sorted(s for group in served.plan for s in group) == [0, 1, 2, 3, 4]
        assert len(served.plan) == 3 and served.exact == local.exact
        for params in (local.params, SearchParams(nprobe=16, k_factor=2)):
            got, want = served.search(q, 30, params), local.search(q, 30, params)
            # Across a process boundary: BLAS thread counts differ, so scores agree to rounding
            # and ids exactly, except where two vectors tie within rounding.
            assert_same_ranking(got.ids, got.scores, want.ids, want.scores)
            assert_same_keys(got, want)
        if local.exact:
            # Midway between scores, never on one: a count must not hang on float rounding.
            s = np.sort(q @ x[:40].T, axis=1)
            thresholds = (s[:, :-1] + s[:, 1:]) / 2
            np.testing.assert_array_equal(
                served.count_above(q, thresholds), local.count_above(q, thresholds)
            )
        actors = list(served.actors)
    wait_until(lambda: all(stopped(a) for a in actors), 120, "closed actors to stop")


def assert_same_keys(got: SearchResult, want: SearchResult) -> None:
    """Each id names the same key in both answers (ids may swap only where scores tie)."""
    named = {
        int(i): k
        for row_ids, row_keys in zip(want.ids, want.keys, strict=True)
        for i, k in zip(row_ids, row_keys, strict=False)
    }
    for row_ids, row_keys in zip(got.ids, got.keys, strict=True):
        assert [named.get(int(i)) for i in row_ids[: len(row_keys)]] == row_keys


def assert_same_printed_hits(got: list[str], want: list[str]) -> None:
    """search_index.py's lines from two processes: the same hits in the same order, the
    printed scores within one unit of their last printed digit (rounding apart)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g_fields, w_fields = g.split(), w.split()
        if len(g_fields) == 3 and g_fields[0].isdigit():  # "  rank  score  key"
            assert (g_fields[0], g_fields[2]) == (w_fields[0], w_fields[2]), (g, w)
            assert abs(float(g_fields[1]) - float(w_fields[1])) <= 1.5e-4, (g, w)
        else:
            assert g == w


def stopped(actor: ray.actor.ActorHandle) -> bool:
    try:
        ray.get(actor.ready.remote())
    except ray.exceptions.RayActorError:
        return True
    return False


def test_each_actor_holds_only_its_shards(ray_local, tmp_path) -> None:
    desc, out = str(tmp_path / "desc"), str(tmp_path / "idx")
    rng = np.random.default_rng(0)
    from tests.support.descriptors import unit, write_descriptor_file

    for f in range(6):  # 6 shards of 30,000 x 256 float32 (~30 MB each)
        x = unit(rng.normal(size=(30_000, 256)).astype(np.float32))
        write_descriptor_file(
            f"{desc}/part-{f:06d}.parquet", [f"{f}-{i}" for i in range(30_000)], x
        )
    build_index(desc, out, IndexBuildConfig(shards=6))
    with DistributedIndex.start(out, serving=SERVING) as served:
        served.search(x[:5], 10)
        memory = served.memory()
    assert sorted(s for m in memory for s in m.shards) == list(range(6))
    for m in memory:
        assert len(m.shards) == 2 and m.shard_bytes > 2 * 30_000 * 256 * 4
        # What loading and searching added stays within the shards plus a fixed overhead
        # (first use of the Parquet reader ~70 MB, id tables, search buffers; BENCHMARKS.md
        # measures it at 1M): an actor holding all six shards would be ~120 MB over.
        assert m.rss - m.rss_before_load < 1.1 * m.shard_bytes + (128 << 20), m


def test_jobs_search_and_evaluate_through_actors(ray_local, s3_bucket, tmp_path, capsys) -> None:
    import pickle

    from pipeline.io.storage import write_bytes_atomic
    from tests.support.descriptors import unit, write_descriptor_file

    root = f"s3://{s3_bucket}"
    keys, _ = write_folder(f"{root}/r1m", 3, 200, seed=4, prefix="d")
    build_index(f"{root}/r1m", f"{root}/r1m-index", IndexBuildConfig(shards=4))
    query = ["--index", f"{root}/r1m-index", "--descriptors", f"{root}/r1m", "--key", keys[7]]
    capsys.readouterr()
    assert search_main([*query, "-k", "5"]) == 0
    alone = capsys.readouterr().out.splitlines()
    assert (
        search_main(
            [
                *query,
                "-k",
                "5",
                "--distributed",
                "--actors",
                "2",
                "--cpus-per-actor",
                "0.5",
                "--actor-overhead-mb",
                "0",
            ]
        )
        == 0
    )
    spread = capsys.readouterr().out.splitlines()
    assert "2 actors" in spread[0] and keys[7] in spread[1]
    assert_same_printed_hits(spread[1:], alone[1:])
    # evaluate.py: the same report with the distractors served by actors.
    rng = np.random.default_rng(1)
    q = unit(rng.normal(size=(2, DIM)))
    db = unit(q.repeat(3, 0) + 0.8 * rng.normal(size=(6, DIM)))
    imlist, qimlist = [f"db{i}" for i in range(6)], ["q0", "q1"]
    gnd = [{"easy": [0, 1], "hard": [2], "junk": []}, {"easy": [3], "hard": [4, 5], "junk": []}]
    write_bytes_atomic(
        f"{root}/gnd_roxford5k.pkl",
        pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}),
    )
    write_descriptor_file(f"{root}/q/part-000000.parquet", qimlist, q)
    write_descriptor_file(f"{root}/db/part-000000.parquet", imlist, db)
    reports = []
    for extra in (
        [],
        ["--distributed", "--actors", "2", "--cpus-per-actor", "0.5", "--actor-overhead-mb", "0"],
    ):
        path = tmp_path / f"report{len(reports)}.json"
        args = [
            "--gnd",
            f"{root}/gnd_roxford5k.pkl",
            "--queries",
            f"{root}/q",
            "--database",
            f"{root}/db",
        ]
        assert (
            evaluate_main(
                [*args, "--distractors", f"{root}/r1m-index", "--report", str(path), *extra]
            )
            == 0
        )
        reports.append(json.loads(path.read_text()))
    assert reports[0] == reports[1] and reports[0]["exact"] and reports[0]["distractors"] == 600


def test_actors_answer_with_the_version_post_processing(ray_local, s3_bucket, capsys) -> None:
    """A whitened version served by actors: queries are whitened in the driver before any
    shard sees them; αQE and re-ranking read stored vectors from the actors; queries of another
    model are refused as in one process (search_index.py with and without --distributed)."""
    from jobs.learn_whitening import main as learn_main
    from pipeline.index.expansion import QeConfig
    from pipeline.index.query import QueryOptions, search
    from pipeline.index.rerank import RerankConfig
    from tests.support.descriptors import unit, write_descriptor_file

    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    wfile = f"s3://{s3_bucket}/whitening.safetensors"
    keys, x = write_clustered_folder(desc, 4, 150)
    assert learn_main(["--descriptors", desc, "--output", wfile, "--dim", "24"]) == 0
    build_index(desc, out, IndexBuildConfig(shards=4, whitening=wfile))
    local = ShardedIndex.load(out)
    q = queries_near(x, 10)  # as extracted (32-d): both whiten them to the version's 24
    opts = QueryOptions(QeConfig(2), RerankConfig(m=20, k=3))
    with DistributedIndex.start(out, serving=SERVING) as served:
        assert served.manifest.dim == 24 and served.whitening is not None
        got, want = served.search(q, 15), local.search(q, 15)
        # The whitening matmul runs with another BLAS thread count in the actors (1.8e-7 seen).
        assert_same_ranking(got.ids, got.scores, want.ids, want.scores)
        ids = np.array([[3, -1], [599, 0]])
        np.testing.assert_array_equal(
            served.stored_vectors().vectors(ids), local.stored_vectors().vectors(ids)
        )
        spread, alone = search(served, q, 5, opts), search(local, q, 5, opts)
        np.testing.assert_array_equal(spread.result.ids, alone.result.ids)
        np.testing.assert_allclose(spread.result.scores, alone.result.scores, rtol=1e-6)
        assert spread.applied == alone.applied and spread.applied[0].startswith("whitening")
        with pytest.raises(ValueError, match="differs in: weights_sha256"):
            served.check_queries({**local.manifest.descriptor_model, "weights_sha256": "b"}, "q")
    other = f"s3://{s3_bucket}/other"
    write_descriptor_file(f"{other}/part-000000.parquet", ["q"], unit(np.ones((1, DIM))), "b" * 64)
    args = ["--index", out, "--descriptors", other, "--key", "q"]
    distributed = ["--distributed", "--actors", "2", "--cpus-per-actor", "0.5"]
    for extra in ([], [*distributed, "--actor-overhead-mb", "0"]):
        capsys.readouterr()
        assert search_main([*args, *extra]) == 1
        assert "different model or configuration (differs in: weights_sha256)" in (
            capsys.readouterr().err
        )
    query = ["--index", out, "--descriptors", desc, "--key", keys[7], "--aqe", "2", "--rerank"]
    assert search_main(query) == 0
    alone_out = capsys.readouterr().out.splitlines()
    assert search_main([*query, *distributed, "--actor-overhead-mb", "0"]) == 0
    spread_out = capsys.readouterr().out.splitlines()
    assert keys[7] in spread_out[1]
    assert_same_printed_hits(spread_out[1:], alone_out[1:])
    (applied,) = [line for line in spread_out if line.startswith("post-processing: ")]
    assert "whitening 32->24" in applied and "alpha-QE k=2" in applied
    assert spread_out[-1] == alone_out[-1] and spread_out[-1].startswith("search: ")
