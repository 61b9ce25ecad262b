"""Search across Ray actors (a local cluster): the same answers as the single-process search,
through the jobs too, with each actor holding only its share of the shards."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

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
    unit,
    write_clustered_folder,
    write_descriptor_file,
    write_folder,
)
from tests.support.waiting import wait_until

# Three actors on the test cluster's two CPUs; no memory beyond the (small) shards reserved.
SERVING = ServingConfig(actors=3, cpus_per_actor=0.5, overhead_bytes=0)
FACTORIES = ("Flat", "IVF16,PQ8x4fs,RFlat")


@dataclass(frozen=True)
class Built:
    """The versions this file's tests serve, built once (each test only reads its own)."""

    root: str  # s3://bucket of the S3 inputs and indexes
    clustered: np.ndarray  # the vectors of root/desc (5 files x 300)
    by_factory: dict[str, str]  # factory -> its index of root/desc (5 shards)
    r1m_keys: list[str]  # root/r1m (3 files x 200) and its Flat index root/r1m-index
    large: str  # local index of 6 shards of 30,000 x 256 (~30 MB each)
    large_queries: np.ndarray
    whitened_keys: list[str]  # root/wdesc (4 files x 150, 32-d) and its whitened index root/widx
    whitened_x: np.ndarray


@pytest.fixture(scope="module")
def built(ray_local, s3_endpoint, tmp_path_factory) -> Iterator[Built]:
    """Every version up front, one build after another on the same Ray task workers (an actor
    started between two builds takes a worker slot, and the next build starts new workers)."""
    import boto3

    from jobs.learn_whitening import main as learn_main

    bucket = f"test-serving-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    root = f"s3://{bucket}"
    _, x = write_clustered_folder(f"{root}/desc", 5, 300)
    by_factory = {}
    for n, factory in enumerate(FACTORIES):
        by_factory[factory] = f"{root}/idx{n}"
        build_index(
            f"{root}/desc",
            by_factory[factory],
            IndexBuildConfig(factory=factory, shards=5, train_size=1500, nprobe=4),
        )
    r1m_keys, _ = write_folder(f"{root}/r1m", 3, 200, seed=4, prefix="d")
    build_index(f"{root}/r1m", f"{root}/r1m-index", IndexBuildConfig(shards=4))
    w_keys, w_x = write_clustered_folder(f"{root}/wdesc", 4, 150)
    wfile = f"{root}/whitening.safetensors"
    assert learn_main(["--descriptors", f"{root}/wdesc", "--output", wfile, "--dim", "24"]) == 0
    build_index(f"{root}/wdesc", f"{root}/widx", IndexBuildConfig(shards=4, whitening=wfile))
    local = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    for f in range(6):  # 6 shards of 30,000 x 256 float32 (~30 MB each)
        large_x = unit(rng.normal(size=(30_000, 256)).astype(np.float32))
        write_descriptor_file(
            f"{local}/desc/part-{f:06d}.parquet", [f"{f}-{i}" for i in range(30_000)], large_x
        )
    build_index(f"{local}/desc", f"{local}/idx", IndexBuildConfig(shards=6))
    yield Built(root, x, by_factory, r1m_keys, f"{local}/idx", large_x[:5].copy(), w_keys, w_x)


@pytest.mark.parametrize("factory", FACTORIES)
def test_actors_answer_as_the_single_process_search(built: Built, factory: str) -> None:
    out, x = built.by_factory[factory], built.clustered
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


def test_each_actor_holds_only_its_shards(built: Built) -> None:
    with DistributedIndex.start(built.large, serving=SERVING) as served:
        served.search(built.large_queries, 10)
        memory = served.memory()
    assert sorted(s for m in memory for s in m.shards) == list(range(6))
    for m in memory:
        assert len(m.shards) == 2 and m.shard_bytes > 2 * 30_000 * 256 * 4
        # What loading and searching added stays within the shards plus a fixed overhead
        # (first use of the Parquet reader ~70 MB, id tables, search buffers; BENCHMARKS.md
        # measures it at 1M): an actor holding all six shards would be ~120 MB over.
        assert m.rss - m.rss_before_load < 1.1 * m.shard_bytes + (128 << 20), m


def test_jobs_search_and_evaluate_through_actors(built: Built, s3_bucket, tmp_path, capsys) -> None:
    import pickle

    from pipeline.io.storage import write_bytes_atomic

    index, root, keys = f"{built.root}/r1m-index", f"s3://{s3_bucket}", built.r1m_keys
    query = ["--index", index, "--descriptors", f"{built.root}/r1m", "--key", keys[7]]
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
        assert evaluate_main([*args, "--distractors", index, "--report", str(path), *extra]) == 0
        reports.append(json.loads(path.read_text()))
    assert reports[0] == reports[1] and reports[0]["exact"] and reports[0]["distractors"] == 600


def test_actors_answer_with_the_version_post_processing(
    built: Built, s3_bucket, capsys, monkeypatch
) -> None:
    """A whitened version served by actors: queries are whitened in the driver before any
    shard sees them; αQE and re-ranking read stored vectors from the actors; queries of another
    model are refused as in one process (search_index.py with and without --distributed), and
    before any actor is started."""
    from pipeline.index.expansion import QeConfig
    from pipeline.index.query import QueryOptions, search
    from pipeline.index.rerank import RerankConfig

    desc, out = f"{built.root}/wdesc", f"{built.root}/widx"
    keys, x = built.whitened_keys, built.whitened_x
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
    started: list[str] = []
    start = DistributedIndex.start

    def counted(output: str, *a, **kw) -> DistributedIndex:
        started.append(output)
        return start(output, *a, **kw)

    monkeypatch.setattr(DistributedIndex, "start", counted)
    for extra in ([], [*distributed, "--actor-overhead-mb", "0"]):
        capsys.readouterr()
        assert search_main([*args, *extra]) == 1
        assert "different model or configuration (differs in: weights_sha256)" in (
            capsys.readouterr().err
        )
    assert started == []  # refused from the manifest: no actor started for it
    query = ["--index", out, "--descriptors", desc, "--key", keys[7], "--aqe", "2", "--rerank"]
    assert search_main(query) == 0
    alone_out = capsys.readouterr().out.splitlines()
    assert search_main([*query, *distributed, "--actor-overhead-mb", "0"]) == 0
    spread_out = capsys.readouterr().out.splitlines()
    assert started == [out] and keys[7] in spread_out[1]
    assert_same_printed_hits(spread_out[1:], alone_out[1:])
    (applied,) = [line for line in spread_out if line.startswith("post-processing: ")]
    assert "whitening 32->24" in applied and "alpha-QE k=2" in applied
    assert spread_out[-1] == alone_out[-1] and spread_out[-1].startswith("search: ")
