"""docs/tables.md's snippets run against an output whose tables are mid-run: two batches
registered, a third shard committed and not registered yet. They answer as documented: the
registered shards only, an earlier version as it was, filters on the source (DuckDB, pandas,
pyarrow, Polars)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.extract.registration import OutputTables, ShardRegistrar
from pipeline.io.descriptor_writer import descriptor_table, error_table, parquet_bytes
from pipeline.io.layout import descriptors_uri, errors_uri, marker_uri
from pipeline.io.storage import write_bytes_atomic, write_json_atomic
from tests.support.paths import REPO

DIM = 512
IMAGES = 4  # per shard


def commit_shard(output: str, i: int) -> tuple[str, str]:
    """Shard ``i`` as the worker commits it: unit descriptors, one error row, the marker."""
    sid, source = f"{i:06d}", f"s3://in/shards/{i:06d}.tar"
    v = np.random.default_rng(i).standard_normal((IMAGES, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    keys = [f"s{i:06d}_{j:05d}" for j in range(IMAGES)]
    table = descriptor_table(keys, source, v, [96] * IMAGES, [72] * IMAGES, {})
    errors = error_table([f"s{i:06d}_bad"], source, ["undecodable"], ["cannot identify"], {})
    write_bytes_atomic(descriptors_uri(output, sid), parquet_bytes(table))
    write_bytes_atomic(errors_uri(output, sid), parquet_bytes(errors))
    body = {"shard": sid, "source": source, "ok": IMAGES, "errors": 1}
    write_json_atomic(marker_uri(output, sid, source), body)
    return sid, source


@pytest.fixture
def output(tmp_path) -> str:
    out = str(tmp_path / "run")
    registrar = ShardRegistrar(out, DIM, OutputTables(every_shards=2))
    registrar.create()  # version 0
    for batch in ([0, 1], [2]):  # versions 1 and 2
        for i in batch:
            registrar.add(*commit_shard(out, i), IMAGES, 1)
        registrar.flush()
    commit_shard(out, 3)  # committed, its batch not registered yet
    return out


def snippets() -> list[str]:
    text = (REPO / "docs" / "tables.md").read_text()
    return re.findall(r"<!-- snippet -->\n```python\n(.*?)```", text, flags=re.S)


def test_the_documented_snippets_answer_as_documented(output: str) -> None:
    found = snippets()
    assert len(found) == 4
    source = "s3://in/shards/000001.tar"
    scope: dict = {"OUTPUT": output, "SOURCE": source, "QUERY_KEY": "s000001_00002", "VERSION": 1}
    for code in found:
        exec(compile(code, "docs/tables.md", "exec"), scope)
    # The registered shards only: shard 3 is committed, not yet in the tables.
    assert sorted(scope["per_shard"]) == [(f"s3://in/shards/{i:06d}.tar", IMAGES) for i in range(3)]
    assert scope["in_one_shard"] == IMAGES
    assert scope["top5"][0][0] == "s000001_00002"
    assert scope["top5"][0][1] == pytest.approx(1, abs=1e-5)
    assert dict(scope["errors_by_type"]) == {"undecodable": 3}
    assert scope["latest"] == 2 and scope["rows_then"] == 2 * IMAGES
    assert scope["files_then"] == ["part-000000.parquet", "part-000001.parquet"]
    assert [v for v, _ in scope["added"]] == [2, 1, 0]
    assert scope["X"].shape == (3 * IMAGES, DIM)
    np.testing.assert_allclose(np.linalg.norm(scope["X"], axis=1), 1, rtol=1e-5)
    assert scope["one_shard"].num_rows == IMAGES
    # Polars reads the registered shards only (shard 3's committed file is not in the log).
    assert (scope["polars_rows"], scope["polars_in_one"]) == (3 * IMAGES, IMAGES)


def test_the_documented_iceberg_scan_answers_as_documented(tmp_path) -> None:
    text = (REPO / "docs" / "tables.md").read_text()
    (code,) = re.findall(r"<!-- iceberg snippet -->\n```python\n(.*?)```", text, flags=re.S)
    out, catalog = str(tmp_path / "run"), f"sqlite:///{tmp_path}/catalog.db"
    registrar = ShardRegistrar(out, DIM, OutputTables("iceberg", 2, catalog=catalog))
    for i in range(3):
        registrar.add(*commit_shard(out, i), IMAGES, 1)
        if registrar.due():
            registrar.flush()
    registrar.flush()
    scope: dict = {"CATALOG": catalog, "SOURCE": "s3://in/shards/000002.tar"}
    exec(compile(code, "docs/tables.md", "exec"), scope)
    assert scope["one_shard"]["key"].to_pylist() == [f"s000002_{j:05d}" for j in range(IMAGES)]
    assert scope["first_batch"].num_rows == 2 * IMAGES
