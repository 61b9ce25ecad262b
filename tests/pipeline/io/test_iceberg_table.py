"""``--table iceberg`` through jobs/extract.py, on a real local Ray and a SQL catalog (SQLite),
with the output on the moto S3 server and in a local folder: the catalog's tables hold exactly
the committed shards' files, once; pyiceberg scans them with a row filter (its own S3 client,
pointed at the endpoint from the standard variables); a re-run adds no snapshot; an output
with Iceberg tables reads back through jobs/inspect_output.py's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.extract import main as extract_main
from pipeline.io.iceberg_table import open_catalog
from tests.support.extraction import (
    IMAGE_SIZE,
    assert_exactly_once,
    expected_keys,
    shard_pattern,
)

ARGS = ["--image-size", str(IMAGE_SIZE), "--batch-size", "4", "--retry-backoff", "0"]


def run_into_iceberg(shards: list[str], output: str, catalog: str, weights: str) -> None:
    args = ["--input", shard_pattern(shards), "--output", output, *ARGS, "--weights", weights]
    iceberg = ["--table", "iceberg", "--catalog", catalog, "--iceberg-table", "glam.r1"]
    assert extract_main([*args, *iceberg, "--register-every", "2,600"]) == 0


def assert_iceberg_holds_the_committed_shards(catalog: str, output: str, shards: list[str]) -> None:
    """Each shard's descriptor and error files once, and their rows exactly the shard's."""
    tables = open_catalog(catalog)
    descriptors = tables.load_table("glam.r1")
    paths = descriptors.inspect.files()["file_path"].to_pylist()
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == [
        f"part-{i:06d}.parquet" for i in range(len(shards))
    ]
    assert all(p.startswith(output.rstrip("/") + "/descriptors/") for p in paths), paths
    for i, source in enumerate(shards):
        want, bad = expected_keys(i)
        rows = descriptors.scan(
            row_filter=f"source == '{source}'", selected_fields=("key",)
        ).to_arrow()
        assert sorted(rows["key"].to_pylist()) == sorted(want)  # ids exactly, no duplicate
        errors = tables.load_table("glam.r1_errors").scan(row_filter=f"source == '{source}'")
        assert sorted(errors.to_arrow()["key"].to_pylist()) == sorted(bad)


@pytest.mark.parametrize("where", ["s3", "local"])
def test_extract_registers_committed_shards_in_an_iceberg_catalog(
    where: str,
    ray_local: str,
    s3_bucket: str,
    shards: list[str],
    tiny_weights: str,
    tmp_path: Path,
) -> None:
    output = f"s3://{s3_bucket}/runs/ice" if where == "s3" else str(tmp_path / "ice")
    catalog = f"sqlite:///{tmp_path}/catalog.db"
    run_into_iceberg(shards, output, catalog, tiny_weights)
    assert_exactly_once(output, 3)
    assert_iceberg_holds_the_committed_shards(catalog, output, shards)
    snapshots = len(open_catalog(catalog).load_table("glam.r1").snapshots())
    assert snapshots >= 2  # registered in batches (every 2 shards, then the rest)

    run_into_iceberg(shards, output, catalog, tiny_weights)  # a re-run: nothing to add
    assert len(open_catalog(catalog).load_table("glam.r1").snapshots()) == snapshots
    assert_iceberg_holds_the_committed_shards(catalog, output, shards)
