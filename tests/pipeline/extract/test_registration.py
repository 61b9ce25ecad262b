"""Committed shards registered in an output's Delta tables, without Ray: outputs written as
the shard worker writes them (files, then the marker), on a local folder and the moto S3
server. A file is in a table iff its marker is committed, whatever crashes in between."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from pipeline.extract.registration import OutputTables, ShardRegistrar
from pipeline.io.delta_log import open_table, table_dataset
from pipeline.io.descriptor_writer import descriptor_table, error_table, parquet_bytes
from pipeline.io.layout import (
    descriptors_folder,
    descriptors_uri,
    errors_folder,
    errors_uri,
    list_markers,
    marker_uri,
)
from pipeline.io.storage import filesystem, write_bytes_atomic, write_json_atomic
from tests.pipeline.io.test_delta_log import added_per_path

DIM = 8
ROWS = 3


def write_shard(output: str, i: int, commit: bool = True) -> tuple[str, str]:
    """Shard ``i``'s two files and, with ``commit``, its marker last (as the worker does)."""
    sid, source = f"{i:06d}", f"s3://in/shards/{i:06d}.tar"
    keys = [f"s{i}_{j}" for j in range(ROWS)]
    vectors = np.random.default_rng(i).random((ROWS, DIM), dtype=np.float32)
    table = descriptor_table(keys, source, vectors, [1] * ROWS, [1] * ROWS, {})
    errors = error_table([f"s{i}_bad"], source, ["corrupt"], ["not an image"], {})
    write_bytes_atomic(descriptors_uri(output, sid), parquet_bytes(table))
    write_bytes_atomic(errors_uri(output, sid), parquet_bytes(errors))
    if commit:
        body = {"shard": sid, "source": source, "ok": ROWS, "errors": 1, "samples": ROWS + 1}
        write_json_atomic(marker_uri(output, sid, source), body)
    return sid, source


def table_names(folder: str) -> set[str]:
    paths = open_table(folder).get_add_actions(flatten=True).column("path").to_pylist()
    return set(paths)


def assert_tables_match_markers(output: str) -> None:
    """Both tables hold exactly the committed shards' files, each added once in all."""
    committed = {f"part-{m.sid}.parquet" for m in list_markers(output)}
    for folder in (descriptors_folder(output), errors_folder(output)):
        assert table_names(folder) == committed
        assert added_per_path(folder) == Counter(dict.fromkeys(committed, 1))


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs/out"


def test_batches_by_count_and_by_age() -> None:
    now = [0.0]
    registrar = ShardRegistrar("unused", DIM, OutputTables("delta", 3, 10.0), lambda: now[0])
    assert not registrar.due()
    registrar.add("000000", "a.tar", 1, 0)
    registrar.add("000001", "b.tar", 1, 0)
    assert not registrar.due()
    now[0] = 9.9
    assert not registrar.due()
    now[0] = 10.0
    assert registrar.due()  # the first pending one is 10 s old
    registrar.add("000002", "c.tar", 1, 0)
    now[0] = 0.0
    assert registrar.due()  # three pending
    with pytest.raises(ValueError, match="table must be one of delta, iceberg, none"):
        OutputTables("parquet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--table iceberg needs --catalog URI"):
        OutputTables("iceberg")


def test_a_crash_between_commit_and_registration_is_reconciled_exactly_once(output) -> None:
    registrar = ShardRegistrar(output, DIM, OutputTables(every_shards=2))
    registrar.create()
    for i in range(2):
        registrar.add(*write_shard(output, i), ROWS, 1)
    assert registrar.due() and registrar.flush() == 2
    registered = open_table(descriptors_folder(output)).version()
    # Shard 2 commits, and the driver dies before its batch is registered; shard 3 wrote its
    # files and no marker (its actor died first): it is not committed.
    registrar.add(*write_shard(output, 2), ROWS, 1)
    write_shard(output, 3, commit=False)
    del registrar
    # A reader meanwhile sees the registered shards only.
    assert table_dataset(descriptors_folder(output)).count_rows() == 2 * ROWS

    # The next run (or the one that takes over) finds the tables behind the markers.
    again = ShardRegistrar(output, DIM)
    assert not again.complete(3)
    assert again.reconcile() == 1
    assert again.complete(3)
    assert_tables_match_markers(output)
    assert again.reconcile() == 0  # a finished output: nothing more
    errors = table_dataset(errors_folder(output)).to_table()
    assert sorted(errors["key"].to_pylist()) == ["s0_bad", "s1_bad", "s2_bad"]
    # The version the reader saw reads the same later (time travel).
    old = table_dataset(descriptors_folder(output), registered).to_table(columns=["key"])
    assert sorted(old["key"].to_pylist()) == [f"s{i}_{j}" for i in range(2) for j in range(3)]


def test_a_driver_killed_before_registering_leaves_no_file_registered_twice(tmp_path) -> None:
    """A real process exit at the failpoint, between the shards' commits and the Delta commit
    of their batch; the next registrar adds each committed shard once."""
    output = str(tmp_path / "out")
    script = f"""
from tests.pipeline.extract.test_registration import write_shard, DIM, ROWS
from pipeline.extract.registration import OutputTables, ShardRegistrar
r = ShardRegistrar({output!r}, DIM, OutputTables(every_shards=1))
r.create()
for i in range(3):
    r.add(*write_shard({output!r}, i), ROWS, 1)
    r.flush()
"""
    env = {"GLAM_FAILPOINTS": "driver_exit_before_registering=2"}
    env["GLAM_FAILPOINT_DIR"] = str(tmp_path)
    crashed = subprocess.run(
        [sys.executable, "-c", script], env=_env(env), capture_output=True, text=True
    )
    assert crashed.returncode == 1, crashed.stderr[-2000:]
    assert table_names(descriptors_folder(output)) == {"part-000000.parquet"}
    assert len(list(list_markers(output))) == 2  # the second shard committed, unregistered
    assert ShardRegistrar(output, DIM).reconcile() == 1
    assert_tables_match_markers(output)


def test_a_file_whose_marker_is_gone_leaves_the_tables(tmp_path) -> None:
    output = str(tmp_path / "out")
    registrar = ShardRegistrar(output, DIM)
    for i in range(2):
        registrar.add(*write_shard(output, i), ROWS, 1)
    registrar.flush()
    fs, _ = filesystem(output)
    fs.rm_file(marker_uri(output, "000001"))  # to extract the shard again
    assert not ShardRegistrar(output, DIM).complete(1)
    ShardRegistrar(output, DIM).reconcile()
    for folder in (descriptors_folder(output), errors_folder(output)):
        assert table_names(folder) == {"part-000000.parquet"}
    # Extracted again and committed: back in the tables.
    write_shard(output, 1)
    assert ShardRegistrar(output, DIM).reconcile() == 1
    assert table_names(descriptors_folder(output)) == {"part-000000.parquet", "part-000001.parquet"}
    assert table_dataset(descriptors_folder(output)).count_rows() == 2 * ROWS


def test_no_tables_with_table_none(tmp_path) -> None:
    output = str(tmp_path / "out")
    registrar = ShardRegistrar(output, DIM, OutputTables("none"))
    registrar.create()
    registrar.add(*write_shard(output, 0), ROWS, 1)
    assert not registrar.due() and registrar.flush() == 0 and registrar.complete(1)
    assert not (tmp_path / "out" / "descriptors" / "_delta_log").exists()


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    from tests.support.paths import REPO

    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_iceberg_tables_hold_each_committed_shard_once_after_a_crash(tmp_path) -> None:
    """--table iceberg on a SQL catalog (SQLite): the same rule, through add_files."""
    from pipeline.io.iceberg_table import open_catalog

    output, catalog = str(tmp_path / "out"), f"sqlite:///{tmp_path}/catalog.db"
    tables = OutputTables("iceberg", 2, catalog=catalog, iceberg_table="glam.r1")
    registrar = ShardRegistrar(output, DIM, tables)
    registrar.create()
    for i in range(2):
        registrar.add(*write_shard(output, i), ROWS, 1)
    registrar.flush()
    registrar.add(*write_shard(output, 2), ROWS, 1)  # committed; the driver dies here
    write_shard(output, 3, commit=False)  # files without a marker: not committed
    del registrar
    again = ShardRegistrar(output, DIM, tables)
    assert not again.complete(3) and again.reconcile() == 1 and again.complete(3)
    assert again.reconcile() == 0
    table = open_catalog(catalog).load_table("glam.r1")
    paths = table.inspect.files()["file_path"].to_pylist()
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == [f"part-{i:06d}.parquet" for i in range(3)]
    one = table.scan(row_filter="source == 's3://in/shards/000001.tar'").to_arrow()
    assert sorted(one["key"].to_pylist()) == [f"s1_{j}" for j in range(ROWS)]
    first = table.snapshots()[0].snapshot_id  # time travel: the first batch, as it was
    assert table.scan(snapshot_id=first).to_arrow().num_rows == 2 * ROWS
    errors = open_catalog(catalog).load_table("glam.r1_errors").scan().to_arrow()
    assert sorted(errors["key"].to_pylist()) == ["s0_bad", "s1_bad", "s2_bad"]
    assert not (tmp_path / "out" / "descriptors" / "metadata").exists()  # beside, not inside
