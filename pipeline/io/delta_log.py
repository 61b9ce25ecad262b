"""A folder of Parquet files as a Delta table (delta-rs): its transaction log
``FOLDER/_delta_log/`` lists the files that make up the dataset at each version, so readers
never list the folder and never see a file the writer has not registered.

Files are registered where they lie, never rewritten: one commit of ``AddAction``s per batch.
Each commit carries the app transaction ``(APP_ID, n)``, n one more than the table's last:
two writers that both believe they may write cannot both commit from one version (delta-rs
refuses the second as a concurrent transaction), and a file already in the log is never
added again (``DeltaFolder.register`` filters on the log's own list). Works on local folders
and S3 (delta-rs's own client, configured from the same variables as fsspec's).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction

from pipeline.io.storage import canonical_uri, filesystem, is_local, join, storage_options

log = logging.getLogger(__name__)

APP_ID = "glam-pipeline"  # the app transaction every registration commits
LOG_FOLDER = "_delta_log"
INFO_BATCH = 256  # file sizes asked concurrently (one HEAD each on S3)
# s3fs options (GLAM_STORAGE_OPTIONS) that delta-rs's S3 client takes under another name.
_S3_NAMES = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"}
_S3_NAMES |= {"token": "AWS_SESSION_TOKEN", "endpoint_url": "AWS_ENDPOINT_URL"}


@dataclass(frozen=True, slots=True)
class TableFile:
    """A Parquet file to register: its name in the table's folder, what the log records of it
    (size and mtime, which readers use to open it), its rows, and its one ``source`` value
    (recorded as min and max, so a filter on the source skips every other file)."""

    name: str
    size: int
    modified_ms: int
    rows: int
    source: str | None = None

    def action(self) -> AddAction:
        stats: dict[str, Any] = {"numRecords": self.rows}
        if self.source is not None:
            stats |= {"minValues": {"source": self.source}, "maxValues": {"source": self.source}}
            stats["nullCount"] = {"source": 0}
        return AddAction(self.name, self.size, {}, self.modified_ms, True, json.dumps(stats))


def delta_options(uri: str) -> dict[str, str]:
    """delta-rs's storage options for ``uri``: the endpoint and credentials fsspec uses
    (``AWS_ENDPOINT_URL``, ``GLAM_STORAGE_OPTIONS``); plain HTTP allowed for a local endpoint.
    delta-rs reads the standard AWS variables itself."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    fs_options = storage_options(uri)
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    options = {"AWS_REGION": region} if region else {}
    flat = {**fs_options, **fs_options.get("client_kwargs", {})}
    for name, value in flat.items():
        if name in _S3_NAMES and isinstance(value, str):
            options[_S3_NAMES[name]] = value
    endpoint = options.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def _table_uri(folder: str) -> str:
    return folder.rstrip("/") if "://" in folder else canonical_uri(folder)


def has_table(folder: str) -> bool:
    """Whether ``folder`` holds a Delta table: its log's first commit or its last checkpoint
    (once old commits are cleaned up). Asked through fsspec: delta-rs's own check holds the
    GIL while it waits, which stalls an S3 server in this process (the tests' moto)."""
    fs, path = filesystem(folder)
    logs = join(path, LOG_FOLDER)
    return any(fs.exists(join(logs, n)) for n in ("00000000000000000000.json", "_last_checkpoint"))


def open_table(folder: str, version: int | None = None) -> DeltaTable:
    """The Delta table in ``folder``, at ``version`` (None: the latest); ValueError without."""
    try:
        return DeltaTable(
            _table_uri(folder), version=version, storage_options=delta_options(folder)
        )
    except TableNotFoundError:
        raise ValueError(f"{folder} holds no Delta table ({LOG_FOLDER}/)") from None


def table_files(folder: str, version: int | None = None) -> list[TableFile]:
    """The files of the table in ``folder`` at ``version`` (None: the latest): ``files_of``
    its ``open_table``."""
    return files_of(open_table(folder, version))


def files_of(table: DeltaTable) -> list[TableFile]:
    """The files of an opened table's version, from its log alone: names, sizes, modification
    times, rows and sources, with no listing and no request per file. Sorted by name."""
    actions = pa.table(table.get_add_actions(flatten=True))
    columns = set(actions.column_names)

    def column(name: str, default: Any = None) -> list[Any]:
        if name in columns:
            return list(actions.column(name).to_pylist())
        return [default] * actions.num_rows

    mtimes = [_epoch_ms(m) for m in column("modification_time", 0)]
    low, high = column("min.source"), column("max.source")
    sources = [a if a is not None and a == b else None for a, b in zip(low, high, strict=True)]
    files = [
        TableFile(n, int(size), mtime, int(rows if rows is not None else -1), source)
        for n, size, mtime, rows, source in zip(
            column("path"),
            column("size_bytes"),
            mtimes,
            column("num_records"),
            sources,
            strict=True,
        )
    ]
    return sorted(files, key=lambda f: f.name)


def table_dataset(folder: str, version: int | None = None) -> pads.Dataset:
    """The table's files at ``version`` as an Arrow dataset that DuckDB, pandas and Polars
    read: built from the log (no listing, each file's size given, so no request per file
    before its data is read), the schema and metadata of the first file's footer (descriptors
    as fixed-size lists), each file guaranteed to hold its one ``source`` so that a filter on
    the source skips every other file."""
    files = table_files(folder, version)
    fs, path = filesystem(folder)
    arrow_fs = pafs.LocalFileSystem() if is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    fmt = pads.ParquetFileFormat()
    if not files:
        schema = pa.schema(open_table(folder, version).schema().to_arrow())
        return pads.FileSystemDataset([], schema, fmt, arrow_fs)
    paths = [join(path, f.name) for f in files]
    with fs.open(paths[0], "rb") as first:
        schema = pq.read_schema(first)
    fragments = []
    for p, f in zip(paths, files, strict=True):
        where: dict[str, Any] = {"file_size": f.size}
        if f.source is not None:
            where["partition_expression"] = pads.field("source") == f.source
        fragments.append(fmt.make_fragment(p, arrow_fs, **where))
    return pads.FileSystemDataset(fragments, schema, fmt, arrow_fs)


def folder_dataset(folder: str, version: int | None = None) -> pads.Dataset:
    """The Parquet files of ``folder`` as an Arrow dataset: through its Delta table when it
    has one (the files the log lists at ``version``), else every Parquet file in it (a folder
    written before tables, or with ``--table none``; no versions there)."""
    if has_table(folder):
        return table_dataset(folder, version)
    if version is not None:
        raise ValueError(f"{folder} holds no Delta table: it has no versions to read")
    fs, path = filesystem(folder)
    return pads.dataset(path, filesystem=fs, format="parquet")


class DeltaFolder:
    """The Delta table of one folder of Parquet files, for its only writer: which files the
    log holds, and commits that add (or remove) files exactly once."""

    def __init__(self, folder: str, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = pa.schema(list(schema))  # the fields only: metadata stays in the files
        self._table: DeltaTable | None = None
        self._names: set[str] | None = None
        self._version = -1  # the log's version ``_names`` reflects

    def ensure(self) -> None:
        """The table exists: created empty (its schema, no file) where there is none."""
        self._open()

    def _open(self) -> DeltaTable:
        if self._table is None:
            uri, options = _table_uri(self.folder), delta_options(self.folder)
            if has_table(self.folder):
                self._table = DeltaTable(uri, storage_options=options)
            else:
                self._table = DeltaTable.create(
                    uri, schema=self.schema, mode="ignore", storage_options=options
                )
                log.info("%s: created its Delta table", self.folder)
        return self._table

    def names(self) -> set[str]:
        """The file names the log holds now (read once, then kept by this writer's commits;
        read again when another commit than this writer's shows up)."""
        if self._names is None:
            if not has_table(self.folder):
                return set()
            table = self._open()
            table.update_incremental()
            self._read_names(table)
        assert self._names is not None
        return self._names

    def _read_names(self, table: DeltaTable) -> None:
        self._names = set(pa.table(table.get_add_actions(flatten=True))["path"].to_pylist())
        self._version = table.version()

    def register(self, files: Sequence[TableFile], remove: Iterable[str] = ()) -> int:
        """Add ``files`` not in the log yet and drop the ``remove`` names it holds, in one
        commit (none when there is nothing to do); the number of files added."""
        table = self._open()
        table.update_incremental()
        if self._names is None or table.version() != self._version:
            self._read_names(table)  # a commit not this writer's: what the log holds now
        held = self.names()
        new = [f for f in files if f.name not in held]
        new = list({f.name: f for f in new}.values())
        gone = sorted(set(remove) & held)
        if not new and not gone:
            return 0
        app_version = max(table.transaction_version(APP_ID) or 0, 0) + 1
        now_ms = int(datetime.now().timestamp() * 1000)
        actions: list[AddAction | RemoveAction] = [f.action() for f in new]
        actions += [RemoveAction(n, True, now_ms) for n in gone]
        try:
            table.create_write_transaction(
                actions,
                "append",
                self.schema,
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(APP_ID, app_version)], max_commit_retries=0
                ),
            )
        except CommitFailedError:
            self._names = None  # what the log holds is to be read again
            raise
        held.update(f.name for f in new)
        held.difference_update(gone)
        self._version += 1
        return len(new)


def file_sizes(folder: str, names: Sequence[str]) -> list[tuple[int, int]]:
    """(size, mtime in ms) of the files ``names`` in ``folder``, what the log records of each:
    a stat each locally, HEADs asked ``INFO_BATCH`` at a time on object stores."""
    fs, path = filesystem(folder)
    if is_local(fs):
        out: list[tuple[int, int]] = []
        for name in names:
            st = os.stat(os.path.join(path, name))
            out.append((st.st_size, st.st_mtime_ns // 1_000_000))
        return out
    paths = [join(path, n) for n in names]
    infos: list[dict[str, Any]] = []
    if hasattr(fs, "_info"):
        from fsspec.asyn import sync

        async def batch(part: list[str]) -> list[dict[str, Any]]:
            import asyncio

            return list(await asyncio.gather(*(fs._info(p) for p in part)))

        for i in range(0, len(paths), INFO_BATCH):
            infos += sync(fs.loop, batch, paths[i : i + INFO_BATCH])
    else:
        infos = [fs.info(p) for p in paths]
    return [(int(i["size"]), _modified_ms(i)) for i in infos]


def _epoch_ms(value: Any) -> int:
    """A log's modification time (ms since the epoch, or a timestamp) in ms."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value or 0)


def _modified_ms(info: dict[str, Any]) -> int:
    when = info.get("LastModified") or info.get("mtime") or 0
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    return int(float(when) * 1000)
