"""A run's failed shards, bounded in memory and in ``_job.json``: the first ``KEEP`` in full,
a count of all, and every one in a Parquet file beside the record (``_failed_shards.parquet``,
columns ``shard`` and ``error``), spilled to a local temporary file as they come so that a run
where a million shards fail holds no million-entry list."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.extract.stats import FailedShard
from pipeline.io.layout import failed_shards_uri
from pipeline.io.storage import upload_file_atomic

log = logging.getLogger(__name__)

KEEP = 100  # failed shards named in full in _job.json, in the log and on stderr
SPILL_ROWS = 1024  # rows per Parquet row group of the spill file
SCHEMA = pa.schema([("shard", pa.string()), ("error", pa.string())])


@dataclass
class FailedShards:
    """The failed shards of one run: ``first`` (up to ``KEEP``), ``count``, and a spill file."""

    first: list[FailedShard] = field(default_factory=list)
    count: int = 0
    _buffer: list[FailedShard] = field(default_factory=list, repr=False)
    _path: str | None = field(default=None, repr=False)
    _writer: pq.ParquetWriter | None = field(default=None, repr=False)

    def add(self, failed: FailedShard) -> None:
        """Count one failed shard; log it while fewer than ``KEEP`` have been logged."""
        self.count += 1
        if len(self.first) < KEEP:
            self.first.append(failed)
            log.error("shard %s failed: %s", failed.shard, failed.error)
        elif self.count == KEEP + 1:
            log.error("more than %d shards failed: the rest are counted, not logged", KEEP)
        self._buffer.append(failed)
        if len(self._buffer) >= SPILL_ROWS:
            self._spill()

    @property
    def more(self) -> int:
        """Failed shards not in ``first``."""
        return self.count - len(self.first)

    def publish(self, output: str) -> str | None:
        """Every failed shard to ``output``'s ``_failed_shards.parquet`` (atomically); its URI,
        or None when none failed (nothing written)."""
        if not self.count:
            return None
        self._spill()
        assert self._writer is not None and self._path is not None
        self._writer.close()
        self._writer = None
        uri = failed_shards_uri(output)
        upload_file_atomic(self._path, uri)  # consumes the local file
        self._path = None
        return uri

    def discard(self) -> None:
        """Drop the spill file (a run that ends without publishing)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._path is not None and os.path.exists(self._path):
            os.remove(self._path)
        self._path = None

    def _spill(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            fd, self._path = tempfile.mkstemp(suffix="-failed-shards.parquet")
            os.close(fd)
            self._writer = pq.ParquetWriter(self._path, SCHEMA)
        table = pa.table(
            {"shard": [f.shard for f in self._buffer], "error": [f.error for f in self._buffer]},
            schema=SCHEMA,
        )
        self._writer.write_table(table)
        self._buffer = []
