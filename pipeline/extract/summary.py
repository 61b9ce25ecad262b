"""A quick look at an extraction output through DuckDB: counts, errors, one descriptor's norm.

Reads the Parquet with pyarrow over fsspec (so s3:// works without DuckDB's httpfs extension)
and queries the Arrow tables in DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow.dataset as pads

from pipeline.io.storage import filesystem, join


@dataclass(frozen=True)
class OutputSummary:
    descriptors: int
    dim: int
    shards: int  # shards with descriptors
    first_key: str  # the smallest key, and its descriptor's norm (1 for a sound output)
    first_norm: float
    errors: dict[str, int]  # error rows by type


def summarize(output: str) -> OutputSummary:
    fs, path = filesystem(output)
    descriptors = pads.dataset(join(path, "descriptors"), filesystem=fs, format="parquet")
    errors = pads.dataset(join(path, "errors"), filesystem=fs, format="parquet")
    table = descriptors.to_table()
    dim = table.schema.field("descriptor").type.list_size  # 512 for the paper's GLAM
    con = duckdb.connect()
    con.register("descriptors", table)
    con.register("errors", errors.to_table())
    count, shards = _one(con, "SELECT count(*), count(DISTINCT source) FROM descriptors")
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
