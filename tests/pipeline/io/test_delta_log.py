"""Parquet files registered in a Delta table where they lie, with real delta-rs, on a local
folder and on the moto S3 server: added once, never twice; a second writer from the same
version refused; versions read back as they were; source filters skip files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.dataset as pads
import pytest
from deltalake.exceptions import CommitFailedError

from pipeline.io.delta_log import (
    DeltaFolder,
    TableFile,
    file_sizes,
    has_table,
    open_table,
    table_dataset,
)
from pipeline.io.descriptor_writer import descriptor_schema, descriptor_table, parquet_bytes
from pipeline.io.storage import filesystem, join, write_bytes_atomic

DIM = 8


def added_per_path(folder: str) -> Counter[str]:
    """How many times each file was added over the table's whole log (every commit)."""
    fs, path = filesystem(join(folder, "_delta_log"))
    fs.invalidate_cache()
    counts: Counter[str] = Counter()
    for name in sorted(fs.ls(path, detail=False)):
        if name.endswith(".json"):
            for line in fs.cat_file(name).decode().splitlines():
                action = json.loads(line)
                if "add" in action:
                    counts[action["add"]["path"]] += 1
    return counts


def write_part(folder: str, i: int, rows: int = 3) -> TableFile:
    keys = [f"k{i}_{j}" for j in range(rows)]
    vectors = np.random.default_rng(i).random((rows, DIM), dtype=np.float32)
    table = descriptor_table(keys, f"src/{i}.tar", vectors, [1] * rows, [2] * rows, {})
    name = f"part-{i:06d}.parquet"
    write_bytes_atomic(join(folder, name), parquet_bytes(table))
    ((size, mtime),) = file_sizes(folder, [name])
    return TableFile(name, size, mtime, rows, f"src/{i}.tar")


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "descriptors")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out/descriptors"


def test_files_are_added_once_versions_stay_readable_and_filters_skip_files(folder) -> None:
    files = [write_part(folder, i) for i in range(3)]
    table = DeltaFolder(folder, descriptor_schema(DIM))
    assert not has_table(folder) and table.names() == set()
    table.ensure()
    assert has_table(folder) and table_dataset(folder).count_rows() == 0
    assert table.register(files[:2]) == 2
    first = open_table(folder).version()
    # Again, and from a writer that reads the log afresh: nothing is added twice.
    assert table.register(files[:2]) == 0
    assert DeltaFolder(folder, descriptor_schema(DIM)).register(files) == 1
    assert added_per_path(folder) == Counter({f.name: 1 for f in files})

    latest = table_dataset(folder)
    assert latest.count_rows() == 9
    # The descriptors read back through the table as the files hold them (FixedSizeList in
    # the files, a list in the table's schema).
    vectors = np.stack(latest.to_table(columns=["descriptor"])["descriptor"].to_numpy(False))
    assert vectors.shape == (9, DIM) and vectors.dtype == np.float32
    # Version `first` is what it was, whatever was added since.
    assert table_dataset(folder, first).count_rows() == 6
    # A filter on the source skips the other files by the log's statistics.
    only = latest.get_fragments(filter=pads.field("source") == "src/1.tar")
    assert [f.path.rsplit("/", 1)[-1] for f in only] == ["part-000001.parquet"]


def test_a_second_writer_adds_nothing_twice_and_a_racing_one_is_refused(folder) -> None:
    files = [write_part(folder, i) for i in range(3)]
    schema = descriptor_schema(DIM)
    DeltaFolder(folder, schema).ensure()
    a, b, racing = (
        DeltaFolder(folder, schema),
        DeltaFolder(folder, schema),
        DeltaFolder(folder, schema),
    )
    assert a.names() == b.names() == racing.names() == set()
    a.register([files[0]])
    # b read the log before a's commit: it sees the commit that is not its own, reads the
    # log again and adds only what is missing.
    assert b.register(files[:2]) == 1
    # A writer that commits from the version it read, as two writers racing would (delta-rs
    # not asked to catch up): the app transaction it carries is refused.
    stale = open_table(folder, 0)
    stale.update_incremental = lambda: None  # type: ignore[method-assign]
    racing._table, racing._names, racing._version = stale, set(), 0
    with pytest.raises(CommitFailedError):
        racing.register(files)
    assert added_per_path(folder) == Counter({f.name: 1 for f in files[:2]})
    assert DeltaFolder(folder, schema).register(files) == 1
    assert added_per_path(folder) == Counter({f.name: 1 for f in files})


def test_removed_files_leave_the_table_and_older_versions_keep_them(tmp_path) -> None:
    folder = str(tmp_path / "descriptors")
    files = [write_part(folder, i) for i in range(2)]
    table = DeltaFolder(folder, descriptor_schema(DIM))
    table.register(files)
    before = open_table(folder).version()
    assert table.register([], remove=[files[0].name]) == 0
    assert table.names() == {files[1].name}
    assert table_dataset(folder).count_rows() == 3
    assert table_dataset(folder, before).count_rows() == 6


def test_reading_a_folder_without_a_table_is_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match="holds no Delta table"):
        open_table(str(tmp_path / "nothing"))
