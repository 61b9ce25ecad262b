"""Index inputs from an output's Delta table: the files its log lists, with sizes and rows from
the log, at a cost that does not grow with the number of shards (one footer, the log, one
listing of the markers), on the moto S3 server and a local folder."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.extract.registration import OutputTables, ShardRegistrar
from pipeline.io.delta_log import DeltaFolder, TableFile, file_sizes, open_table
from pipeline.io.descriptor_reader import list_descriptor_files, read_descriptor_listing
from pipeline.io.descriptor_writer import descriptor_schema, descriptor_table, parquet_bytes
from pipeline.io.layout import descriptors_folder, descriptors_uri
from pipeline.io.storage import write_bytes_atomic
from tests.pipeline.extract.test_registration import DIM, ROWS, write_shard
from tests.pipeline.io.test_delta_log import write_part
from tests.support.s3_recording import recorded_requests, requests_by_kind


def registered_output(output: str, shards: int) -> ShardRegistrar:
    registrar = ShardRegistrar(output, DIM, OutputTables(every_shards=1000))
    registrar.create()
    for i in range(shards):
        registrar.add(*write_shard(output, i), ROWS, 1)
    registrar.flush()
    return registrar


def test_an_outputs_files_come_from_its_table_at_a_cost_that_does_not_grow_with_shards(
    s3_endpoint, s3_bucket
) -> None:
    counts = []
    for shards in (3, 12):
        output = f"s3://{s3_bucket}/runs/{shards}"
        registered_output(output, shards)
        with recorded_requests(s3_endpoint) as requests:
            files = list_descriptor_files(output)
        counts.append(requests_by_kind(requests, s3_bucket))
        assert [f.uri for f in files] == [
            descriptors_uri(output, f"{i:06d}") for i in range(shards)
        ]
        assert {(f.rows, f.dim) for f in files} == {(ROWS, DIM)}
        assert all(f.etag.startswith("delta-mtime=") for f in files)  # what the log recorded
        identities = {tuple(sorted(f.identity().items())) for f in files}
        assert len(identities) == 1
    assert counts[0] == counts[1], counts  # no request per file, nor per marker
    assert counts[1]["GET"] + counts[1]["HEAD"] < 20, counts  # three footers, the log


def test_the_files_and_their_table_version_come_from_one_read_of_the_log(
    s3_endpoint, s3_bucket
) -> None:
    """What a build records as the version read is the version the files were listed from,
    and the log is opened once for both: as many log requests as opening the table once."""
    output = f"s3://{s3_bucket}/runs/one-read"
    registered_output(output, 3)

    def log_requests(requests: list[tuple[str, str]]) -> int:
        return sum(1 for _, path in requests if "_delta_log" in path)  # its LISTs too

    with recorded_requests(s3_endpoint) as opening:
        want = open_table(descriptors_folder(output)).version()
    with recorded_requests(s3_endpoint) as listing_requests:
        listing = read_descriptor_listing(output)
    assert listing.table_version == want
    assert len(listing.files) == 3
    # has_table's existence check(s), then one opening (two openings: twice as many).
    assert log_requests(listing_requests) <= log_requests(opening) + 2, listing_requests


def test_a_file_of_another_model_in_the_outputs_table_is_refused(tmp_path) -> None:
    """The sampled footers (the middle and the last file) catch a file of another
    configuration registered in the output's table."""
    output = str(tmp_path / "out")
    registered_output(output, 3)
    folder = descriptors_folder(output)
    vectors = np.ones((ROWS, DIM), dtype=np.float32)
    other = descriptor_table(
        ["x"] * ROWS, "s.tar", vectors, [1] * ROWS, [1] * ROWS, {b"model": b"other"}
    )
    name = "part-000009.parquet"
    write_bytes_atomic(f"{folder}/{name}", parquet_bytes(other))
    ((size, mtime),) = file_sizes(folder, [name])
    DeltaFolder(folder, descriptor_schema(DIM)).register([TableFile(name, size, mtime, ROWS)])
    with pytest.raises(ValueError, match="different models or configurations"):
        list_descriptor_files(output)


def test_committed_shards_not_registered_yet_are_named_and_versions_are_read(
    tmp_path, caplog
) -> None:
    output = str(tmp_path / "out")
    registered_output(output, 2)
    first = open_table(descriptors_folder(output)).version()
    write_shard(output, 2)  # committed (its marker is written), not registered
    with caplog.at_level(logging.WARNING, logger="pipeline.io.descriptor_reader"):
        files = list_descriptor_files(output)
    assert len(files) == 2
    assert "1 committed shards are not in its descriptors table yet" in caplog.text
    ShardRegistrar(output, DIM).reconcile()
    assert len(list_descriptor_files(output)) == 3
    assert len(list_descriptor_files(output, version=first)) == 2  # as a build read it then


def test_a_delta_folder_of_descriptors_lists_what_its_log_holds_never_a_removed_file(
    tmp_path,
) -> None:
    folder = str(tmp_path / "mine")
    table = DeltaFolder(folder, descriptor_schema(DIM))
    table.register([write_part(folder, i) for i in range(3)])
    table.register([], remove=["part-000001.parquet"])  # still on disk, out of the table
    names = [f.uri.rsplit("/", 1)[1] for f in list_descriptor_files(folder)]
    assert names == ["part-000000.parquet", "part-000002.parquet"]
    with pytest.raises(ValueError, match="holds no Delta table: it has no versions"):
        list_descriptor_files(str(tmp_path / "plain"), version=0)
