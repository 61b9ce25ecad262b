"""Sharded FAISS index builds through the moto S3 endpoint and a local Ray: exact search vs
brute force, recall of IVF, up-to-date skips, new versions, retention, refused mixes, crashes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from jobs.build_index import main as build_main
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.search import ShardedIndex
from pipeline.index.versions import list_versions, read_latest
from pipeline.io.storage import exists, join, read_bytes, write_bytes_atomic, write_json_atomic
from tests.support.descriptors import DIM, unit, write_descriptor_file, write_folder
from tests.support.index_reference import held_keys
from tests.support.paths import REPO


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_flat_shards_equal_brute_force(ray_local, s3_bucket: str) -> None:
    keys, x = write_folder(f"s3://{s3_bucket}/desc", 3, 400)
    out = f"s3://{s3_bucket}/index"
    result = build_index(f"s3://{s3_bucket}/desc", out, IndexBuildConfig(shards=2))
    assert not result.up_to_date and result.vectors == 1200 and len(result.shard_counts) == 2
    index = ShardedIndex.load(out)
    assert index.exact and index.ntotal == 1200
    q = unit(np.random.default_rng(9).normal(size=(7, DIM)))
    found = index.search(q, 10)
    expected = brute_force(x, q, 10)
    np.testing.assert_array_equal(found.ids, expected)  # ids are positions in file order
    assert found.keys == [[keys[i] for i in row] for row in expected]
    np.testing.assert_allclose(found.scores, np.take_along_axis(q @ x.T, expected, 1), rtol=1e-5)
    manifest = read_latest(out)[1]
    assert manifest.factory == "Flat" and manifest.dim == DIM
    assert [i.rows for i in manifest.inputs] == [400, 400, 400]
    assert manifest.descriptor_model["weights_sha256"] == "a" * 64


def test_ivf_recall_is_reported(ray_local, s3_bucket: str) -> None:
    _, x = write_folder(f"s3://{s3_bucket}/desc", 2, 1000, seed=1)
    out = f"s3://{s3_bucket}/ivf"
    build_index(
        f"s3://{s3_bucket}/desc",
        out,
        IndexBuildConfig(factory="IVF16,Flat", shards=2, train_size=1500),
    )
    index = ShardedIndex.load(out)
    assert not index.exact
    q = x[:50] + 0.05 * unit(np.random.default_rng(2).normal(size=(50, DIM)))
    found, expected = index.search(q, 10).ids, brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected, strict=True)])
    print(f"IVF16,Flat recall@10 with nprobe=1: {recall:.3f}")
    assert 0.2 < recall <= 1.0
    # Mostly, each query's own near-duplicate comes first (nprobe=1 misses some cells).
    assert np.mean(found[:, 0] == np.arange(50)) > 0.8


def test_training_sample_is_uniform_across_files(s3_bucket: str) -> None:
    from pipeline.index.build import sample_training_vectors
    from pipeline.io.descriptor_reader import list_descriptor_files

    write_folder(f"s3://{s3_bucket}/desc", 4, 250, seed=3)
    files = list_descriptor_files(f"s3://{s3_bucket}/desc")
    sample = sample_training_vectors(files, 400, seed=0)
    assert sample.shape == (400, DIM)
    _, x = write_folder(f"s3://{s3_bucket}/desc", 4, 250, seed=3)
    rows = [int(np.argmin(np.abs(x - s).sum(1))) for s in sample]
    per_file = np.bincount(np.array(rows) // 250, minlength=4)
    assert per_file.min() > 60  # not a prefix: every file contributes about a quarter


def test_rebuild_skips_when_unchanged_and_versions_new_shards(ray_local, s3_bucket, capsys) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    write_folder(desc, 2, 100)
    args = ["--descriptors", desc, "--output", out, "--shards", "2", "--retention", "2"]
    assert build_main(args) == 0
    first = read_latest(out)[0]
    assert build_main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert list_versions(out) == [first]
    # A later extraction adds a shard: the next scheduled build makes a new version.
    rng = np.random.default_rng(5)
    write_descriptor_file(
        join(desc, "part-000002.parquet"),
        [f"new{i}" for i in range(50)],
        unit(rng.normal(size=(50, DIM))),
    )
    assert build_main(args) == 0
    second, manifest = read_latest(out)
    assert second != first and manifest.count == 250
    assert "new7" in held_keys(ShardedIndex.load(out))
    assert build_main([*args, "--force"]) == 0
    third = read_latest(out)[0]
    assert third not in (first, second)
    # retention 2 keeps the second version, and so the first, whose shards it reuses
    assert list_versions(out) == [first, second, third]
    assert build_main([*args, "--force"]) == 0
    fourth = read_latest(out)[0]
    assert list_versions(out) == [third, fourth]  # nothing references the first two now


def test_mixing_models_is_refused(ray_local, s3_bucket: str, capsys) -> None:
    desc = f"s3://{s3_bucket}/desc"
    write_folder(desc, 1, 20)
    write_descriptor_file(
        join(desc, "part-000009.parquet"), ["other"], unit(np.ones((1, DIM))), weights="b" * 64
    )
    assert build_main(["--descriptors", desc, "--output", f"s3://{s3_bucket}/x"]) == 1
    assert "different models or configurations" in capsys.readouterr().err
    assert not exists(f"s3://{s3_bucket}/x/LATEST")


def test_only_committed_shards_of_an_extraction_are_indexed(ray_local, s3_bucket) -> None:
    run = f"s3://{s3_bucket}/run"
    rng = np.random.default_rng(0)
    for shard in ("000000", "000001"):
        write_descriptor_file(
            f"{run}/descriptors/part-{shard}.parquet",
            [f"{shard}-{i}" for i in range(5)],
            unit(rng.normal(size=(5, DIM))),
        )
    write_json_atomic(f"{run}/_shards/000000.json", {"status": "committed"})  # 000001: no marker
    build_index(run, f"s3://{s3_bucket}/i", IndexBuildConfig())
    index = ShardedIndex.load(f"s3://{s3_bucket}/i")
    assert index.ntotal == 5 and all(
        k.startswith("000000-") for k in index.held[0].table["key"].to_pylist()
    )


def test_latest_never_points_at_an_incomplete_version(
    ray_local, s3_bucket, tmp_path, monkeypatch
) -> None:
    """Only the crashing run needs a process of its own (the failpoint exits it); the runs
    before and after it are the same job in this process."""
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    write_folder(desc, 3, 100)
    args = ["--descriptors", desc, "--output", out, "--shards", "3", "--ray-address", ray_local]
    cmd = [sys.executable, str(REPO / "jobs" / "build_index.py"), *args]
    assert build_main(args) == 0
    good = read_latest(out)[0]
    failpoint = {
        "GLAM_FAILPOINTS": "index_crash_after_shards=1",
        "GLAM_FAILPOINT_DIR": str(tmp_path),
    }
    env = {**os.environ, **failpoint}
    crashed = subprocess.run([*cmd, "--force"], env=env, capture_output=True, timeout=300)
    assert crashed.returncode != 0
    assert (tmp_path / "index_crash_after_shards-1.fired").exists()
    versions = list_versions(out)
    assert len(versions) == 2
    incomplete = next(v for v in versions if v != good)
    assert exists(join(out, incomplete, "shard-00000.faiss"))
    assert not exists(join(out, incomplete, "manifest.json"))
    assert read_bytes(join(out, "LATEST")).decode() == good
    assert ShardedIndex.load(out).ntotal == 300  # readers still get the complete version
    for name, value in failpoint.items():  # still armed: it has fired, the re-run goes on
        monkeypatch.setenv(name, value)
    assert build_main([*args, "--force"]) == 0
    assert incomplete not in list_versions(out)  # abandoned versions are pruned


@pytest.mark.parametrize("factory", ["NotAnIndex", "IVF,Flat"])
def test_bad_factory_is_a_clear_error(factory: str) -> None:
    with pytest.raises(ValueError, match="index_factory"):
        IndexBuildConfig(factory=factory)


def test_no_descriptors_is_a_clear_error(ray_local, s3_bucket, capsys) -> None:
    write_bytes_atomic(f"s3://{s3_bucket}/empty/readme.txt", b"x")
    assert (
        build_main(["--descriptors", f"s3://{s3_bucket}/empty", "--output", f"s3://{s3_bucket}/o"])
        == 1
    )
    assert "no descriptor Parquet files" in capsys.readouterr().err


def test_two_builds_started_together_end_done_or_refused(ray_local, s3_bucket) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/together"
    _, x = write_folder(desc, 3, 200)
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "build_index.py"),
        "--descriptors",
        desc,
        "--output",
        out,
        "--shards",
        "3",
        "--ray-address",
        ray_local,
        "--force",
    ]
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    for code, err in outcomes:
        assert code == 0 or "is being written by another run: build_index" in err, err[-2000:]
    assert any(code == 0 for code, _ in outcomes)
    versions = list_versions(out)
    assert versions and all(exists(join(out, v, "manifest.json")) for v in versions)
    latest, manifest = read_latest(out)
    assert latest == versions[-1] and manifest.count == 600  # LATEST is the newest, complete
    q = unit(np.random.default_rng(3).normal(size=(4, DIM)))
    np.testing.assert_array_equal(ShardedIndex.load(out).search(q, 5).ids, brute_force(x, q, 5))


def test_latest_only_moves_forward(tmp_path) -> None:
    from pipeline.index.versions import advance_latest, new_version_name, read_latest_name

    out = str(tmp_path / "idx")
    first = new_version_name(out, "a" * 64)
    assert advance_latest(out, first)
    older = "20000101T000000000000Z-bbbbbbbb"
    assert not advance_latest(out, older)  # a build that started earlier and finished later
    assert read_latest_name(out) == first
    # A host whose clock is behind still names its version after LATEST.
    write_bytes_atomic(join(out, "LATEST"), b"29990101T000000000000Z-cccccccc")
    assert new_version_name(out, "d" * 64) == "29990101T000000000001Z-dddddddd"


def test_search_refuses_queries_of_another_model(ray_local, s3_bucket, capsys) -> None:
    from jobs.search_index import main as search_main

    write_folder(f"s3://{s3_bucket}/desc", 1, 20)
    build_index(f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx", IndexBuildConfig())
    write_descriptor_file(
        f"s3://{s3_bucket}/other/part-000000.parquet", ["q"], unit(np.ones((1, DIM))), "b" * 64
    )
    args = ["--index", f"s3://{s3_bucket}/idx", "--descriptors", f"s3://{s3_bucket}/other"]
    assert search_main([*args, "--key", "q"]) == 1
    err = capsys.readouterr().err
    assert "was made by a different model or configuration (differs in: weights_sha256)" in err


def test_duplicate_keys_across_files_keep_the_first_and_are_named(tmp_path, caplog) -> None:
    import logging

    from pipeline.io.descriptor_reader import read_descriptors

    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=(3, DIM))), unit(rng.normal(size=(2, DIM)))
    write_descriptor_file(str(tmp_path / "part-000000.parquet"), ["x", "y", "z"], a)
    write_descriptor_file(str(tmp_path / "part-000001.parquet"), ["y", "w"], b)
    with caplog.at_level(logging.WARNING, logger="pipeline.io.descriptor_reader"):
        keys, x, _ = read_descriptors(str(tmp_path))
    assert keys == ["x", "y", "z", "w"]
    np.testing.assert_array_equal(x, np.concatenate([a, b[1:]]))
    assert "1 rows whose key an earlier file already has (the first is kept): y" in caplog.text


def test_a_build_that_lost_its_lease_publishes_nothing(ray_local, s3_bucket, monkeypatch) -> None:
    """Another run takes the lease over while the shards are built (simulated after the real
    shard tasks): no manifest, LATEST stays, and nothing is pruned."""
    import pipeline.index.build as build
    from pipeline.runtime.lease import LEASE_FILE, LeaseLostError, LeaseRecord

    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    write_folder(desc, 2, 50)
    cfg = IndexBuildConfig(shards=2, retention=1)
    good = build_index(desc, out, cfg).version
    real = build._build_shards

    def shards_then_taken_over(*args, **kwargs):
        counts = real(*args, **kwargs)
        other = LeaseRecord("other-token", "build_index", "node-9", 4242, 0.0, 9e9, 90.0)
        write_bytes_atomic(join(out, LEASE_FILE), other.to_bytes())
        return counts

    monkeypatch.setattr(build, "_build_shards", shards_then_taken_over)
    with pytest.raises(LeaseLostError, match="taken over by build_index"):
        build_index(desc, out, cfg, force=True)
    versions = list_versions(out)
    lost = next(v for v in versions if v != good)
    assert exists(join(out, lost, "shard-00001.faiss"))  # built, never published
    assert not exists(join(out, lost, "manifest.json"))
    assert read_latest(out)[0] == good and good in versions
