"""Index builds read an output's descriptors table: the version read is in the manifest, a
later version with new shards is an incremental build, and an earlier version can be built
again exactly (``--descriptors-version``)."""

from __future__ import annotations

from jobs.build_index import main as build_main
from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.versions import read_latest
from pipeline.io.delta_log import open_table
from pipeline.io.layout import descriptors_folder
from tests.pipeline.extract.test_registration import ROWS, write_shard
from tests.pipeline.io.test_descriptor_tables import registered_output


def test_builds_record_read_and_reread_the_tables_versions(ray_local, tmp_path) -> None:
    output, index = str(tmp_path / "out"), str(tmp_path / "index")
    registrar = registered_output(output, 2)
    first = open_table(descriptors_folder(output)).version()
    cfg = IndexBuildConfig(factory="Flat", shards=1)
    built = build_index(output, index, cfg)
    assert built.vectors == 2 * ROWS
    _, manifest = read_latest(index) or (None, None)
    assert manifest is not None and manifest.descriptors_version == first

    registrar.add(*write_shard(output, 2), ROWS, 1)
    registrar.flush()
    again = build_index(output, index, cfg)
    assert (again.kind, again.vectors, again.added) == ("incremental", 3 * ROWS, ROWS)
    _, manifest = read_latest(index) or (None, None)
    assert manifest is not None and manifest.descriptors_version == first + 1

    # The first version again, into another index: the inputs of the first build.
    old = str(tmp_path / "index-at-first")
    flags = ["--factory", "Flat", "--shards", "1", "--descriptors-version", str(first)]
    assert build_main(["--descriptors", output, "--output", old, *flags]) == 0
    _, manifest = read_latest(old) or (None, None)
    assert manifest is not None and manifest.descriptors_version == first
    assert manifest.count == 2 * ROWS
