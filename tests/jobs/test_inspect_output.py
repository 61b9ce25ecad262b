"""jobs/inspect_output.py through an output's Delta tables: the registered shards only, an
earlier version, one source's rows with the other shards' files never opened."""

from __future__ import annotations

import json
import os

from jobs.inspect_output import main as inspect_main
from pipeline.extract.registration import ShardRegistrar
from pipeline.io.layout import descriptors_uri
from tests.pipeline.extract.test_registration import DIM, ROWS, write_shard


def test_inspect_reads_the_tables_at_a_version_and_one_source(tmp_path, capsys) -> None:
    output = str(tmp_path / "out")
    registrar = ShardRegistrar(output, DIM)
    registrar.create()
    for batch in ([0, 1], [2]):
        for i in batch:
            registrar.add(*write_shard(output, i), ROWS, 1)
        registrar.flush()
    write_shard(output, 3)  # committed, not registered yet: not read

    def inspect(*args: str) -> dict:
        capsys.readouterr()
        assert inspect_main([output, *args]) == 0
        return json.loads(capsys.readouterr().out)

    latest = inspect()
    assert (latest["descriptors"], latest["shards"], latest["dim"]) == (3 * ROWS, 3, DIM)
    assert latest["errors"] == {"corrupt": 3}
    assert inspect("--version", "1")["shards"] == 2
    # Other shards' files are gone from disk: a source filter never opens them (the first
    # file's footer gives the dataset's schema and metadata).
    for i in (2, 3):
        os.remove(descriptors_uri(output, f"{i:06d}"))
    one = inspect("--source", "s3://in/shards/000001.tar")
    assert (one["descriptors"], one["shards"], one["first_key"]) == (ROWS, 1, "s1_0")
    assert one["errors"] == {"corrupt": 1}
