"""Incremental versions: a rebuild that finds only new committed files reuses the previous
shards (by reference) and trained quantizer, adds only the new vectors, and answers exactly as
a full rebuild would; a changed or removed input, or a changed configuration, rebuilds in full;
pruning never deletes what a kept version uses."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.build_index import main as build_main
from pipeline.index.build import TRAINED, IndexBuildConfig, build_index
from pipeline.index.plan import plan_build
from pipeline.index.search import ShardedIndex
from pipeline.index.versions import IndexInput, IndexManifest, list_versions, read_latest
from pipeline.io.descriptor_reader import DescriptorFile
from pipeline.io.storage import exists, filesystem, join
from tests.support.descriptors import (
    assert_same_ranking,
    queries_near,
    unit,
    write_clustered_folder,
    write_descriptor_file,
)
from tests.support.index_reference import faiss_search, held_keys, one_index


def files_in(folder: str) -> list[str]:
    fs, path = filesystem(folder)
    fs.invalidate_cache(path)
    return sorted(p.rsplit("/", 1)[1] for p in fs.ls(path))


def test_new_files_make_an_incremental_version_that_answers_as_a_full_rebuild(
    ray_local, s3_bucket, capsys
) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_clustered_folder(desc, 4, 300)
    args = ["--descriptors", desc, "--output", out, "--shards", "3"]
    assert build_main(args) == 0
    first = read_latest(out)[0]
    first_files = {f: exists(join(out, first, f)) for f in files_in(join(out, first))}
    # A later extraction commits one more file (10% more vectors).
    rng = np.random.default_rng(7)
    new = unit(x[rng.integers(0, len(x), 120)] + 0.3 * rng.normal(size=(120, x.shape[1])))
    write_descriptor_file(join(desc, "part-000004.parquet"), [f"new{i}" for i in range(120)], new)
    capsys.readouterr()
    assert build_main(args) == 0
    assert "(incremental: 1 new input files): 1320 vectors in 4 shards, 120 added" in (
        capsys.readouterr().out
    )
    second, manifest = read_latest(out)
    assert manifest.shard_versions == [first, first, first, second]
    assert manifest.base_version == first and manifest.added_since_base == 120
    assert manifest.shard_counts[3] == 120 and manifest.count == 1320
    # Only the new shard was written; the first version's files are untouched.
    assert files_in(join(out, second)) == [
        "ids-00003.parquet",
        "inputs.parquet",
        "manifest.json",
        "shard-00003.faiss",
    ]
    assert {f: exists(join(out, first, f)) for f in files_in(join(out, first))} == first_files
    # The same answers as a full rebuild of the same inputs.
    full = f"s3://{s3_bucket}/full"
    assert build_main(["--descriptors", desc, "--output", full, "--shards", "3"]) == 0
    q = queries_near(np.concatenate([x, new]), 30)
    got, want = ShardedIndex.load(out).search(q, 50), ShardedIndex.load(full).search(q, 50)
    assert_same_ranking(got.ids, got.scores, want.ids, want.scores)
    assert got.keys == want.keys
    assert build_main(args) == 0 and "up to date" in capsys.readouterr().out


def test_incremental_trained_index_reuses_the_quantizer_and_answers_as_one_index(
    ray_local, tmp_path
) -> None:
    desc, out = str(tmp_path / "desc"), str(tmp_path / "idx")
    _, x = write_clustered_folder(desc, 3, 600)
    cfg = IndexBuildConfig(
        factory="IVF16,PQ8,Refine(SQ8)", shards=2, train_size=1800, nprobe=4, k_factor=4
    )
    build_index(desc, out, cfg)
    first = read_latest(out)[0]
    assert exists(join(out, first, TRAINED))
    rng = np.random.default_rng(3)
    new = unit(x[rng.integers(0, len(x), 300)] + 0.2 * rng.normal(size=(300, x.shape[1])))
    write_descriptor_file(join(desc, "part-000003.parquet"), [f"n{i}" for i in range(300)], new)
    result = build_index(desc, out, cfg)
    assert (result.kind, result.added, result.vectors) == ("incremental", 300, 2100)
    manifest = read_latest(out)[1]
    assert manifest.trained_version == first and not exists(join(out, result.version, TRAINED))
    # One index from the same trained parameters holding every vector answers the same.
    all_x = np.concatenate([x, new])
    q = queries_near(all_x, 30)
    found = ShardedIndex.load(out).search(q, 20)
    scores, ids = faiss_search(one_index(out, all_x), q, 20, cfg.search_params())
    assert_same_ranking(found.ids, found.scores, ids, scores)


def test_a_changed_input_means_a_full_rebuild(ray_local, s3_bucket, capsys) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_clustered_folder(desc, 2, 100)
    args = ["--descriptors", desc, "--output", out, "--shards", "2"]
    assert build_main(args) == 0
    write_descriptor_file(join(desc, "part-000001.parquet"), [f"r{i}" for i in range(90)], x[:90])
    capsys.readouterr()
    assert build_main(args) == 0
    assert "(full: an input changed: " in capsys.readouterr().out
    manifest = read_latest(out)[1]
    assert manifest.shard_versions == [] and manifest.count == 190
    assert "r5" in held_keys(ShardedIndex.load(out))


def descriptor_file(name: str, rows: int, etag: str = "e") -> DescriptorFile:
    return DescriptorFile(f"s3://b/d/{name}", rows * 10, etag, rows, 8, {})


def previous(files: list[DescriptorFile], cfg: IndexBuildConfig, **kw) -> IndexManifest:
    from dataclasses import asdict

    fields = dict(
        version="v1",
        signature="old",
        factory=cfg.factory,
        dim=8,
        metric="inner_product",
        shards=cfg.shards,
        shard_counts=[sum(f.rows for f in files)] + [0] * (cfg.shards - 1),
        count=sum(f.rows for f in files),
        config=asdict(cfg),
        inputs=[IndexInput(f.uri, f.size, f.etag, f.rows) for f in files],
        descriptor_model={},
        created_at="",
        faiss="",
    )
    return IndexManifest(**{**fields, **kw})


OLD = [descriptor_file("part-0", 100), descriptor_file("part-1", 100)]
CFG = IndexBuildConfig(factory="IVF4,Flat", shards=2)


@pytest.mark.parametrize(
    "files,cfg,kind,reason",
    [
        ([*OLD, descriptor_file("part-2", 20)], CFG, "incremental", "1 new input files"),
        (OLD, IndexBuildConfig(factory="IVF4,Flat", shards=2, nprobe=8), "incremental", "search"),
        ([OLD[0]], CFG, "full", "an input was removed: s3://b/d/part-1"),
        ([OLD[0], descriptor_file("part-1", 100, "x")], CFG, "full", "an input changed"),
        (OLD, IndexBuildConfig(factory="IVF8,Flat", shards=2), "full", "changed (factory)"),
        (OLD, IndexBuildConfig(factory="IVF4,Flat", shards=3), "full", "changed (shards)"),
        ([*OLD, descriptor_file("part-2", 101)], CFG, "full", "exceed 0.5 of its 200"),
        (OLD, CFG, "up_to_date", "unchanged"),
    ],
)
def test_plan(files, cfg, kind, reason) -> None:
    from pipeline.index.plan import signature

    latest = previous(OLD, CFG, signature=signature(OLD, CFG))
    plan = plan_build(files, latest, cfg, force=False, training_reusable=True)
    assert plan.kind == kind and reason in plan.reason, plan
    if kind == "incremental":
        assert plan.first_id == 200 and plan.first_shard == 2
        assert [f.uri for f in plan.add] == [f.uri for f in files[2:]]
        assert plan.new_shards == (1 if plan.add else 0)


def test_plan_needs_the_stored_training_and_respects_force_and_the_switch() -> None:
    latest = previous(OLD, CFG)
    more = [*OLD, descriptor_file("part-2", 20)]
    assert plan_build(more, latest, CFG, False, training_reusable=False).kind == "full"
    assert plan_build(more, latest, CFG, True, training_reusable=True).reason == "--force"
    off = IndexBuildConfig(factory="IVF4,Flat", shards=2, incremental=False)
    assert plan_build(more, latest, off, False, training_reusable=True).kind == "full"
    # Vectors added by earlier increments count toward the fraction.
    grown = previous(OLD, CFG, count=290, added_since_base=90)
    assert plan_build(more, grown, CFG, False, True).kind == "full"  # 110 > 0.5 x 200
    assert (
        plan_build(more, previous(OLD, CFG, count=270, added_since_base=70), CFG, False, True).kind
        == "incremental"
    )


def test_search_defaults_alone_make_a_version_that_reuses_every_shard(ray_local, tmp_path) -> None:
    desc, out = str(tmp_path / "desc"), str(tmp_path / "idx")
    write_clustered_folder(desc, 2, 200)
    build_index(desc, out, IndexBuildConfig(factory="IVF8,Flat", shards=2, train_size=400))
    first = read_latest(out)[0]
    result = build_index(
        desc, out, IndexBuildConfig(factory="IVF8,Flat", shards=2, train_size=400, nprobe=8)
    )
    assert (result.kind, result.added) == ("incremental", 0)
    manifest = read_latest(out)[1]
    assert manifest.shard_versions == [first, first] and manifest.config["nprobe"] == 8
    assert files_in(join(out, result.version)) == ["inputs.parquet", "manifest.json"]
    assert ShardedIndex.load(out).params.nprobe == 8
    assert list_versions(out) == [first, result.version]


# -- post-processing and incremental versions --------------------------------------


def test_an_incremental_version_whitens_its_new_vectors_with_the_base_whitening(
    ray_local, s3_bucket, capsys
) -> None:
    """The new shards are whitened (and encoded) as the base's; another whitening file behind
    the same URI changes the stored vectors, so it rebuilds in full."""
    from jobs.learn_whitening import main as learn_main
    from pipeline.index.whitening import read_whitening

    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    wfile = f"s3://{s3_bucket}/whitening.safetensors"
    _, x = write_clustered_folder(desc, 3, 300)
    assert learn_main(["--descriptors", desc, "--output", wfile, "--dim", "24"]) == 0
    w, sha = read_whitening(wfile)
    args = ["--descriptors", desc, "--output", out, "--shards", "2", "--whitening", wfile]
    ivf = ["--factory", "IVF8,Flat", "--train-size", "900", "--nprobe", "3"]
    assert build_main([*args, *ivf]) == 0
    first = read_latest(out)[0]
    rng = np.random.default_rng(5)
    new = unit(x[rng.integers(0, len(x), 100)] + 0.3 * rng.normal(size=(100, x.shape[1])))
    write_descriptor_file(join(desc, "part-000003.parquet"), [f"new{i}" for i in range(100)], new)
    capsys.readouterr()
    assert build_main([*args, *ivf]) == 0
    assert "(incremental: 1 new input files)" in capsys.readouterr().out
    second, manifest = read_latest(out)
    assert manifest.shard_versions == [first, first, second] and manifest.dim == 24
    assert manifest.whitening is not None and manifest.whitening.sha256 == sha
    assert exists(join(out, second, manifest.whitening.file))  # its own copy, the base's bytes
    # One index with the base's trained quantizer holding every whitened vector answers the same.
    all_x = np.concatenate([x, new])
    q = queries_near(all_x, 30)
    found = ShardedIndex.load(out).search(q, 20)  # raw queries: the version whitens them
    params = ShardedIndex.load(out).params
    scores, ids = faiss_search(one_index(out, w.apply(all_x)), w.apply(q), 20, params)
    assert_same_ranking(found.ids, found.scores, ids, scores)
    # Another fit behind the same URI: the stored vectors would differ, a full rebuild.
    assert learn_main(["--descriptors", desc, "--output", wfile, "--dim", "16"]) == 0
    capsys.readouterr()
    assert build_main([*args, *ivf]) == 0
    assert "(full: the configuration changed (whitening))" in capsys.readouterr().out
    third = read_latest(out)[1]
    assert third.shard_versions == [] and third.dim == 16 and third.whitening.sha256 != sha


def test_a_rebuild_with_dba_and_new_files_builds_in_full(ray_local, s3_bucket, capsys) -> None:
    """DBA changes every stored vector from its neighbours: new files change old vectors too,
    so no shard of the previous version can be reused."""
    from tests.support.postprocessing import ref_dba

    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_clustered_folder(desc, 2, 150)
    args = ["--descriptors", desc, "--output", out, "--shards", "2", "--dba", "3"]
    assert build_main(args) == 0
    rng = np.random.default_rng(6)
    new = unit(x[rng.integers(0, len(x), 30)] + 0.3 * rng.normal(size=(30, x.shape[1])))
    write_descriptor_file(join(desc, "part-000002.parquet"), [f"new{i}" for i in range(30)], new)
    capsys.readouterr()
    assert build_main(args) == 0
    assert "(full: DBA is configured" in capsys.readouterr().out
    manifest = read_latest(out)[1]
    assert manifest.shard_versions == [] and manifest.base_version == ""
    assert manifest.count == 330 and manifest.dba is not None
    # Every vector, old ones included, augmented among all of them: a full rebuild's answer.
    all_x = np.concatenate([x, new])
    stored = ShardedIndex.load(out).stored_vectors().vectors(np.arange(len(all_x)))
    np.testing.assert_allclose(stored, ref_dba(all_x, 3, 3.0), rtol=1e-5, atol=1e-6)
    # Switching DBA off changes the stored vectors too: a full rebuild, not an increment.
    write_descriptor_file(join(desc, "part-000003.parquet"), ["late"], new[:1])
    capsys.readouterr()
    assert build_main(args[:-2]) == 0
    assert "(full: the configuration changed (dba))" in capsys.readouterr().out


def test_plan_with_dba_or_another_whitening_is_full() -> None:
    from dataclasses import replace

    from pipeline.index.expansion import DbaConfig
    from pipeline.index.versions import PostProcessing, WhiteningRecord

    more = [*OLD, descriptor_file("part-2", 20)]
    dba = replace(CFG, dba=DbaConfig(3))
    plan = plan_build(more, previous(OLD, dba), dba, False, training_reusable=True)
    assert plan.kind == "full" and "DBA" in plan.reason
    record = WhiteningRecord("whitening.safetensors", "1" * 64, "s3://b/w", 8, 8, 1.0)
    whitened = previous(OLD, CFG, postprocessing=PostProcessing(record))
    same = plan_build(more, whitened, CFG, False, True, whitening_sha256="1" * 64)
    assert same.kind == "incremental"
    other = plan_build(more, whitened, CFG, False, True, whitening_sha256="2" * 64)
    assert other.kind == "full" and "(whitening)" in other.reason
    assert plan_build(more, whitened, CFG, False, True).kind == "full"  # whitening dropped
