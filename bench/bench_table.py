"""Reading an extraction output through its Delta table against the plain glob, and what
registering shards in the table costs, in one run on a local folder.

Made up without extraction: N descriptor files (``--rows`` rows of 512 floats each, one
source per file, the real schema and zstd) with a commit marker each. Registration is timed
as the driver does it (``ShardRegistrar``: batches of ``--batch`` shards, a stat per file, one
commit per table), then reconcile's check of a finished output. DuckDB (``--threads``) then
answers ``count(*)``, the README's ``GROUP BY source`` and a full descriptor scan, each from
``read_parquet('descriptors/*.parquet')``, from ``read_parquet([the log's file list])`` and
from the table's Arrow dataset (``pipeline.io.delta_log.table_dataset``); the first two also
from the log's statistics alone. Best of ``--repeat``, the glob first each time. Last, an
index build's input listing through the table against the markers.

    .venv/bin/python bench/bench_table.py --files 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.extract.registration import OutputTables, ShardRegistrar
from pipeline.io.delta_log import table_dataset, table_files
from pipeline.io.descriptor_reader import list_descriptor_files
from pipeline.io.descriptor_writer import descriptor_table, error_table, parquet_bytes
from pipeline.io.layout import descriptors_folder, descriptors_uri, errors_uri, marker_uri

DIM = 512
QUERIES = {
    "count(*)": "SELECT count(*) FROM {t}",
    "GROUP BY source": "SELECT source, count(*) FROM {t} GROUP BY source",
    "full scan": "SELECT sum(list_sum(descriptor)) FROM {t}",
}


def make_output(output: str, files: int, rows: int) -> list[tuple[str, str]]:
    """``files`` committed shards: descriptors, errors (empty), marker; written directly."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal((rows, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    empty = parquet_bytes(error_table([], "", [], [], {}))
    shards = []
    for i in range(files):
        sid, source = f"{i:06d}", f"s3://bench/shards/{i:06d}.tar"
        keys = [f"s{i:06d}_{j:05d}" for j in range(rows)]
        table = descriptor_table(keys, source, v, [640] * rows, [480] * rows, {})
        for uri, data in (
            (descriptors_uri(output, sid), parquet_bytes(table)),
            (errors_uri(output, sid), empty),
        ):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).write_bytes(data)
        marker = Path(marker_uri(output, sid, source))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"shard": sid, "source": source, "ok": rows, "errors": 0}))
        shards.append((sid, source))
    return shards


def register(output: str, shards: list[tuple[str, str]], rows: int, batch: int) -> dict:
    registrar = ShardRegistrar(output, DIM, OutputTables(every_shards=batch))
    t = time.perf_counter()
    registrar.create()
    created = time.perf_counter() - t
    t = time.perf_counter()
    for sid, source in shards:
        registrar.add(sid, source, rows, 0)
        if registrar.due():
            registrar.flush()
    registrar.flush()
    registering = time.perf_counter() - t
    t = time.perf_counter()
    complete = ShardRegistrar(output, DIM).complete(len(shards))
    check = time.perf_counter() - t
    assert complete
    return {
        "create_s": round(created, 3),
        "register_s": round(registering, 2),
        "ms_per_shard": round(1000 * registering / len(shards), 3),
        "commits_per_table": -(-len(shards) // batch),
        "finished_check_s": round(check, 3),
    }


def query(output: str, threads: int, repeat: int) -> dict:
    """Each query from the glob, from the file list the log gives (DuckDB's own reader, no
    listing), and from the table's Arrow dataset; count(*) and GROUP BY source also from the
    log's statistics alone (no file opened). Every way's time includes reading the log."""
    import duckdb

    folder = descriptors_folder(output)

    def glob() -> str:
        return f"read_parquet('{folder}/*.parquet')"

    def listed() -> str:
        names = ", ".join(f"'{folder}/{f.name}'" for f in table_files(folder))
        return f"read_parquet([{names}])"

    out: dict[str, dict[str, float]] = {}
    for name, sql in QUERIES.items():
        best: dict[str, float] = {}
        for _ in range(repeat):
            answers = []
            for way in ("glob", "log file list", "table dataset"):
                con = duckdb.connect()
                con.execute(f"SET threads = {threads}")
                t = time.perf_counter()
                if way == "table dataset":
                    con.register("descriptors", table_dataset(folder))
                    source = "descriptors"
                else:
                    source = glob() if way == "glob" else listed()
                answers.append(sorted(con.execute(sql.format(t=source)).fetchall()))
                best[way] = min(best.get(way, float("inf")), time.perf_counter() - t)
            if name != "full scan":
                assert answers[0] == answers[1] == answers[2], name
            if name in ("count(*)", "GROUP BY source"):
                t = time.perf_counter()
                files = table_files(folder)
                if name == "count(*)":
                    assert [(sum(f.rows for f in files),)] == answers[0]
                else:
                    assert sorted((f.source, f.rows) for f in files) == answers[0]
                way = "log statistics"
                best[way] = min(best.get(way, float("inf")), time.perf_counter() - t)
        out[name] = {f"{k}_s": round(v, 3) for k, v in best.items()}
    return out


def index_inputs(output: str) -> dict:
    """What a build's input listing (``list_descriptor_files``) costs through the table against
    the markers (one read per marker and a footer per file; the table's log hidden for it)."""
    log_folder = Path(descriptors_folder(output)) / "_delta_log"
    hidden = log_folder.with_name("_delta_log.hidden")
    t = time.perf_counter()
    through_table = len(list_descriptor_files(output))
    table_s = time.perf_counter() - t
    log_folder.rename(hidden)
    try:
        t = time.perf_counter()
        through_markers = len(list_descriptor_files(output))
        markers_s = time.perf_counter() - t
    finally:
        hidden.rename(log_folder)
    assert through_table == through_markers
    return {
        "files": through_table,
        "table_s": round(table_s, 2),
        "markers_s": round(markers_s, 2),
        "ratio": round(markers_s / table_s, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--rows", type=int, default=8, help="descriptors per file (default 8)")
    p.add_argument("--batch", type=int, default=100, help="shards per registration (100)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--folder", default=None, help="where to write (default: a temp folder)")
    args = p.parse_args()
    root = args.folder or tempfile.mkdtemp(prefix="bench-table-")
    output = str(Path(root) / "out")
    try:
        t = time.perf_counter()
        shards = make_output(output, args.files, args.rows)
        made = time.perf_counter() - t
        result = {
            "files": args.files,
            "rows_per_file": args.rows,
            "threads": args.threads,
            "make_s": round(made, 1),
            "registration": register(output, shards, args.rows, args.batch),
            "queries": query(output, args.threads, args.repeat),
            "index_inputs": index_inputs(output),
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.folder is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
