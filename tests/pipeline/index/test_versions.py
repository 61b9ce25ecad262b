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
