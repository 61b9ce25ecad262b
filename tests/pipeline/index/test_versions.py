"""Index manifests round-trip through their JSON, keeping keys a newer writer added."""

from __future__ import annotations

from pipeline.index.versions import IndexInput, IndexManifest, read_latest, write_manifest
from pipeline.io.storage import join, write_bytes_atomic


def manifest(version: str) -> IndexManifest:
    return IndexManifest(
        version=version,
        signature="s" * 64,
        factory="Flat",
        dim=8,
        metric="inner_product",
        shards=1,
        shard_counts=[3],
        count=3,
        config={"factory": "Flat"},
        inputs=[IndexInput("s3://b/part-0.parquet", 10, "etag", 3)],
        descriptor_model={"model": "GLAM"},
        created_at="2026-11-25T00:00:00+00:00",
        faiss="1.15",
        extra={"whitening": {"dim": 8}},
    )


def test_manifest_round_trip_keeps_unknown_keys(tmp_path) -> None:
    out = str(tmp_path / "idx")
    m = manifest("v1")
    d = m.to_dict()
    assert d["whitening"] == {"dim": 8} and "extra" not in d
    assert d["inputs"] == [{"uri": "s3://b/part-0.parquet", "size": 10, "etag": "etag", "rows": 3}]
    assert IndexManifest.from_dict(d) == m
    write_manifest(out, m)
    assert read_latest(out) is None  # written, not yet published
    write_bytes_atomic(join(out, "LATEST"), b"v1")
    assert read_latest(out) == ("v1", m)


def test_pruning_keeps_the_versions_that_kept_versions_reference(tmp_path) -> None:
    from dataclasses import replace

    from pipeline.index.versions import list_versions, prune_versions, shard_file

    out = str(tmp_path / "idx")
    v1 = replace(manifest("v1"), shards=2, shard_counts=[3, 3], count=6)
    v2 = replace(v1, version="v2", shard_versions=["v1", "v1"], base_version="v1")
    v3 = replace(
        v2, version="v3", shards=3, shard_counts=[3, 3, 1], shard_versions=["v1", "v1", "v3"]
    )
    for m in (v1, v2, v3):
        write_manifest(out, m)
    write_bytes_atomic(join(out, "v0-crashed", "shard-00000.faiss"), b"partial")
    assert shard_file(out, v3, 2) == join(out, "v3", "shard-00002.faiss")
    assert shard_file(out, v3, 0, "ids") == join(out, "v1", "ids-00000.parquet")
    assert v3.referenced_versions() == {"v1"} and v1.referenced_versions() == set()
    prune_versions(out, retention=1, keep="v3")
    assert list_versions(out) == ["v1", "v3"]  # v2 and the crashed build go; v3 uses v1
    v4 = replace(manifest("v4"), shards=1)
    write_manifest(out, v4)
    prune_versions(out, retention=1, keep="v4")
    assert list_versions(out) == ["v4"]  # a full build references nothing


def test_pruning_keeps_latest_and_what_it_references(tmp_path) -> None:
    """A build whose version did not become LATEST (LATEST only moves forward) still keeps the
    version readers load, and the versions whose shards it uses."""
    from dataclasses import replace

    from pipeline.index.versions import list_versions, prune_versions

    out = str(tmp_path / "idx")
    v1 = manifest("v1")
    v2 = replace(v1, version="v2")
    v3 = replace(v1, version="v3", shard_versions=["v1"], base_version="v1")
    v4 = replace(v1, version="v4")
    for m in (v1, v2, v3, v4):
        write_manifest(out, m)
    write_bytes_atomic(join(out, "LATEST"), b"v3")
    prune_versions(out, retention=1, keep="v4")
    assert list_versions(out) == ["v1", "v3", "v4"]  # v2 goes; v3 is LATEST and uses v1


def test_inputs_live_beside_the_manifest_which_stays_small(tmp_path) -> None:
    """A million input files would make a JSON manifest of ~150 MB that every search reads:
    they are stored in ``inputs.parquet``, read only by builds."""
    import dataclasses
    import json

    import pyarrow.parquet as pq

    from pipeline.index.versions import read_manifest

    out = str(tmp_path / "idx")
    inputs = [IndexInput(f"s3://b/part-{i:06d}.parquet", 10 + i, f"e{i}", 3) for i in range(5000)]
    m = dataclasses.replace(manifest("v1"), inputs=inputs)
    write_manifest(out, m)
    stored = json.loads((tmp_path / "idx" / "v1" / "manifest.json").read_text())
    assert "inputs" not in stored and stored["input_count"] == 5000
    assert (tmp_path / "idx" / "v1" / "manifest.json").stat().st_size < 2000
    assert pq.read_table(tmp_path / "idx" / "v1" / "inputs.parquet").num_rows == 5000
    assert read_manifest(out, "v1") == m
    assert read_manifest(out, "v1", with_inputs=False) == dataclasses.replace(m, inputs=[])


def test_a_manifest_with_its_inputs_inline_still_reads(tmp_path) -> None:
    """Versions written before ``inputs.parquet`` hold their inputs in the JSON."""
    from pipeline.io.storage import write_json_atomic

    out = str(tmp_path / "idx")
    m = manifest("v0")
    write_json_atomic(join(out, "v0", "manifest.json"), m.to_dict())
    write_bytes_atomic(join(out, "LATEST"), b"v0")
    assert read_latest(out) == ("v0", m)
