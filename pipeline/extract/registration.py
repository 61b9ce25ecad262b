"""An extraction output's tables: ``OUTPUT/descriptors/`` and ``OUTPUT/errors/`` as Delta
tables whose logs list exactly the files of committed shards.

The driver is the only writer, and only while it holds the output's lease. It registers the
files of shards as they commit, in batches (every ``every_shards`` shards or ``every_s``
seconds, and at the end), so a reader of the table sees committed shards only. A shard whose
commit the driver never registered (a crash in between, an actor that died after its marker)
is found by ``reconcile``: at start-up when the logs and the markers disagree in number,
against one listing of the markers; a file already in a log is never added again, one whose
marker is gone is removed."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipeline.io.delta_log import DeltaFolder, TableFile, file_sizes
from pipeline.io.descriptor_writer import ERROR_SCHEMA, descriptor_schema
from pipeline.io.layout import (
    descriptors_folder,
    errors_folder,
    list_markers,
    markers_folder,
    part_name,
    part_shard,
)
from pipeline.io.redact import redact_text
from pipeline.io.storage import filesystem, join
from pipeline.runtime import failpoints

if TYPE_CHECKING:
    from pipeline.io.iceberg_table import IcebergFolder

log = logging.getLogger(__name__)

TableKind = Literal["delta", "iceberg", "none"]
TABLE_KINDS = ("delta", "iceberg", "none")
MARKER_BATCH = 1000  # markers read per request batch by a reconcile


@dataclass(frozen=True)
class OutputTables:
    """Which tables an output keeps and how often the driver registers committed shards."""

    kind: TableKind = "delta"
    every_shards: int = 100  # register once this many shards committed unregistered ...
    every_s: float = 30.0  # ... or the first of them committed this long ago
    catalog: str | None = None  # iceberg: the catalog's URI (pipeline.io.iceberg_table)
    # iceberg: the descriptor table's namespace.name (errors: name + "_errors")
    iceberg_table: str = "glam.descriptors"

    def __post_init__(self) -> None:
        if self.kind not in TABLE_KINDS:
            raise ValueError(f"table must be one of {', '.join(TABLE_KINDS)}, got {self.kind!r}")
        if (self.kind == "iceberg") != (self.catalog is not None):
            raise ValueError("--table iceberg needs --catalog URI, and --catalog needs it")
        if self.every_shards <= 0 or self.every_s < 0:
            raise ValueError("registration batches need a positive shard count and seconds >= 0")


@dataclass(frozen=True, slots=True)
class CommittedShard:
    """What the registration needs of a committed shard: its id, source, rows per file."""

    sid: str
    source: str  # as its files hold it (credentials masked)
    ok: int
    errors: int


@dataclass
class ShardRegistrar:
    """Registers committed shards in the output's two Delta tables, a batch at a time."""

    output: str
    dim: int
    tables: OutputTables = field(default_factory=OutputTables)
    clock: Callable[[], float] = time.monotonic
    registered: int = 0  # shards this run registered
    _pending: list[CommittedShard] = field(default_factory=list)
    _since: float | None = None
    _batches: int = 0

    def __post_init__(self) -> None:
        folders = (descriptors_folder(self.output), errors_folder(self.output))
        schemas = (descriptor_schema(self.dim), ERROR_SCHEMA)
        self._descriptors: DeltaFolder | IcebergFolder
        self._errors: DeltaFolder | IcebergFolder
        if self.tables.kind == "iceberg":
            from pipeline.io.iceberg_table import IcebergFolder  # seconds to import: only here

            assert self.tables.catalog is not None
            name = self.tables.iceberg_table
            names = (name, f"{name}_errors")
            self._descriptors, self._errors = (
                IcebergFolder(
                    self.tables.catalog, n, f, join(self.output, "_iceberg", n.split(".")[1]), s
                )
                for n, f, s in zip(names, folders, schemas, strict=True)
            )
        else:
            self._descriptors = DeltaFolder(folders[0], schemas[0])
            self._errors = DeltaFolder(folders[1], schemas[1])

    @property
    def enabled(self) -> bool:
        return self.tables.kind != "none"

    def add(self, sid: str, source: str, ok: int, errors: int) -> None:
        """A shard that committed, to register with the next batch."""
        if not self.enabled:
            return
        self._pending.append(CommittedShard(sid, redact_text(source), ok, errors))
        if self._since is None:
            self._since = self.clock()

    def due(self) -> bool:
        """Whether the pending shards make a batch (by count or by age)."""
        if not self._pending or self._since is None:
            return False
        old = self.clock() - self._since >= self.tables.every_s
        return len(self._pending) >= self.tables.every_shards or old

    def flush(self) -> int:
        """Register the pending shards (one commit per table); the shards registered."""
        if not self._pending:
            return 0
        batch, self._pending, self._since = self._pending, [], None
        self._batches += 1
        if failpoints.trigger("driver_exit_before_registering", str(self._batches)):
            os._exit(1)  # a hard crash between shards' commits and their registration
        self._register(batch)
        self.registered += len(batch)
        log.info("registered %d committed shards in the output's tables", len(batch))
        return len(batch)

    def complete(self, markers: int) -> bool:
        """Whether both tables hold one file per commit marker (``markers``: their count).
        Their files are all committed ones (only those are registered, and a reconcile
        removes any whose marker is gone), so equal counts mean equal sets. Reads only."""
        if not self.enabled:
            return True
        held = [len(self._descriptors.names()), len(self._errors.names())]
        if markers == 0:
            return held == [0, 0]
        return held == [markers, markers]

    def create(self) -> None:
        """Both tables exist (created empty where missing), so every output is a table."""
        if not self.enabled:
            return
        for table in (self._descriptors, self._errors):
            table.ensure()

    def reconcile(self) -> int:
        """Bring both tables to the output's commit markers, from one listing of them: add the
        files of committed shards the logs miss (their markers read for rows and source),
        remove files whose marker is gone. The shards added."""
        if not self.enabled:
            return 0
        committed = {m.sid: m.name for m in list_markers(self.output)}
        held = self._descriptors.names() & self._errors.names()
        missing = [sid for sid in sorted(committed) if part_name(sid) not in held]
        stale = {
            n
            for n in self._descriptors.names() | self._errors.names()
            if part_shard(n) not in committed
        }
        if stale:
            log.warning(
                "%s: %d files in the tables have no commit marker (removed by hand?): "
                "removing them from the tables",
                self.output,
                len(stale),
            )
        if not missing and not stale:
            return 0
        log.info(
            "%s: registering %d committed shards the tables miss (a run that stopped before "
            "registering them, or an output written before its tables)",
            self.output,
            len(missing),
        )
        shards = self._read_markers([committed[s] for s in missing])
        self._register(shards, frozenset(stale))
        return len(missing)

    def _read_markers(self, names: list[str]) -> list[CommittedShard]:
        fs, folder = filesystem(markers_folder(self.output))
        out: list[CommittedShard] = []
        for i in range(0, len(names), MARKER_BATCH):
            paths = [join(folder, n) for n in names[i : i + MARKER_BATCH]]
            for body in fs.cat(paths, on_error="raise").values():
                marker: dict[str, Any] = json.loads(body)
                ok, errors = int(marker.get("ok", 0)), int(marker.get("errors", 0))
                source = str(marker.get("source", ""))
                out.append(CommittedShard(str(marker["shard"]), source, ok, errors))
        return out

    def _register(self, shards: list[CommittedShard], remove: frozenset[str] = frozenset()) -> None:
        for table, rows in ((self._descriptors, "ok"), (self._errors, "errors")):
            todo = [s for s in shards if part_name(s.sid) not in table.names()]
            names = [part_name(s.sid) for s in todo]
            sizes = file_sizes(table.folder, names)
            files = [
                TableFile(n, size, mtime, getattr(s, rows), s.source)
                for n, s, (size, mtime) in zip(names, todo, sizes, strict=True)
            ]
            table.register(files, remove)
