"""A quick look at an extraction output through DuckDB: counts, errors, one descriptor's norm.

Reads the output's Delta tables (the committed shards' files, as of a version if asked; a
folder without tables is read file by file) as Arrow datasets that DuckDB scans: only the
columns a query needs are read, and a filter on the source skips the other shards' files by
the tables' statistics. Over fsspec or delta-rs, so s3:// needs no DuckDB extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow.dataset as pads

from pipeline.io.delta_log import folder_dataset
from pipeline.io.layout import descriptors_folder, errors_folder


@dataclass(frozen=True)
class OutputSummary:
    descriptors: int
    dim: int
    shards: int  # shards with descriptors
    first_key: str  # the smallest key, and its descriptor's norm (1 for a sound output)
    first_norm: float
    errors: dict[str, int]  # error rows by type


def summarize(output: str, version: int | None = None, source: str | None = None) -> OutputSummary:
    """The output's summary, at table ``version`` (None: the latest), of one ``source`` shard
    URI as the files hold it (None: all)."""
    descriptors = folder_dataset(descriptors_folder(output), version)
    errors = folder_dataset(errors_folder(output), version)
    if source is not None:
        descriptors = descriptors.filter(pads.field("source") == source)
        errors = errors.filter(pads.field("source") == source)
    dim = getattr(descriptors.schema.field("descriptor").type, "list_size", 0)  # 512: GLAM
    con = duckdb.connect()
    con.register("descriptors", descriptors)
    con.register("errors", errors)
    count, shards = _one(con, "SELECT count(*), count(DISTINCT source) FROM descriptors")
    if dim <= 0:  # a table's schema says list<float>: the dim is the descriptors' length
        (dim,) = _one(con, "SELECT len(descriptor) FROM descriptors LIMIT 1")
    key, norm = _one(
        con,
        f"SELECT key, sqrt(list_dot_product(descriptor::FLOAT[{dim}], descriptor::FLOAT[{dim}])) "
        "FROM descriptors ORDER BY key LIMIT 1",
    )
    by_type = dict(
        con.execute("SELECT error, count(*) FROM errors GROUP BY 1 ORDER BY 1").fetchall()
    )
    return OutputSummary(count, dim, shards, key, norm, by_type)


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    row = con.execute(sql).fetchone()
    if row is None:
        raise ValueError("the output holds no descriptors")
    return tuple(row)
