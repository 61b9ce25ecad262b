"""A folder of Parquet files registered in an Iceberg table of a catalog (pyiceberg): for
users whose engines find tables through a catalog (SQL, REST, Glue). The files stay where
they are (``Table.add_files``: no rewrite); the table's metadata lives beside the output,
under ``OUTPUT/_iceberg/<table>/`` (hidden from globs and dataset discovery).

``IcebergFolder`` has ``DeltaFolder``'s interface: the names the table holds, and commits that
add each file once (the table's own list filtered first, and pyiceberg refuses a file the
table already references; a racing commit fails on the catalog's snapshot check).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.table import Table

from pipeline.io.delta_log import TableFile
from pipeline.io.storage import canonical_uri, join

log = logging.getLogger(__name__)


def catalog_properties(uri: str) -> dict[str, str]:
    """pyiceberg catalog properties for ``--catalog URI``: a SQLAlchemy URI (``sqlite:///…``,
    ``postgresql://…``) is a SQL catalog, ``http(s)://…`` a REST catalog, ``glue`` AWS Glue.
    S3 access from the standard AWS variables (the endpoint from ``AWS_ENDPOINT_URL``)."""
    if uri.startswith(("http://", "https://")):
        props = {"type": "rest", "uri": uri}
    elif uri in ("glue", "glue://"):
        props = {"type": "glue"}
    elif "://" in uri:
        props = {"type": "sql", "uri": uri, "init_catalog_tables": "true"}
    else:
        raise ValueError(
            f"--catalog {uri}: give a SQLAlchemy URI (sqlite:///catalog.db), a REST catalog's "
            "http(s):// URI, or glue"
        )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        props["s3.endpoint"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        props["s3.region"] = region
    return props


def open_catalog(uri: str) -> Catalog:
    return load_catalog("glam", **catalog_properties(uri))


class IcebergFolder:
    """The Iceberg table ``identifier`` (``namespace.name``) of the catalog at ``catalog``,
    listing files of ``folder``; for its only writer."""

    def __init__(
        self, catalog: str, identifier: str, folder: str, location: str, schema: pa.Schema
    ) -> None:
        if identifier.count(".") != 1:
            raise ValueError(f"an Iceberg table is named namespace.name, got {identifier!r}")
        self.catalog_uri, self.identifier = catalog, identifier
        self.folder, self.location = folder, location
        self.schema = pa.schema(list(schema))
        self._catalog: Catalog | None = None
        self._names: set[str] | None = None

    def _open(self, create: bool) -> Table | None:
        if self._catalog is None:
            self._catalog = open_catalog(self.catalog_uri)
        if self._catalog.table_exists(self.identifier):
            return self._catalog.load_table(self.identifier)
        if not create:
            return None
        self._catalog.create_namespace_if_not_exists(self.identifier.split(".")[0])
        table = self._catalog.create_table_if_not_exists(
            self.identifier, schema=self.schema, location=_uri(self.location)
        )
        log.info("created Iceberg table %s at %s", self.identifier, self.location)
        return table

    def ensure(self) -> None:
        self._open(create=True)

    def names(self) -> set[str]:
        """The file names (in ``folder``) the table references now."""
        if self._names is None:
            table = self._open(create=False)
            self._names = set() if table is None else _names(table, self.folder)
        return self._names

    def register(self, files: Sequence[TableFile], remove: Iterable[str] = ()) -> int:
        """Add ``files`` the table does not reference yet, in one snapshot; the number added.
        Files to ``remove`` are left (removing from an Iceberg table here is not supported):
        a warning names them."""
        gone = sorted(set(remove))
        if gone:
            log.warning(
                "%s: %d files whose markers are gone are left in the Iceberg table (remove "
                "them with your engine): %s",
                self.identifier,
                len(gone),
                ", ".join(gone[:3]),
            )
        table = self._open(create=True)
        assert table is not None
        held = _names(table, self.folder)  # the table as it is now, not as last read
        new = [f for f in {f.name: f for f in files}.values() if f.name not in held]
        if new:
            paths = [_uri(join(self.folder, f.name)) for f in new]
            properties = {"glam.added-files": str(len(new))}
            table.add_files(paths, snapshot_properties=properties)
        self._names = held | {f.name for f in new}
        return len(new)


def _names(table: Table, folder: str) -> set[str]:
    prefix = _uri(folder).rstrip("/") + "/"
    paths: list[Any] = table.inspect.files().column("file_path").to_pylist()
    return {str(p)[len(prefix) :] for p in paths if str(p).startswith(prefix)}


def _uri(path: str) -> str:
    """What pyiceberg is given and gives back: URIs as they are, local paths absolute."""
    return path if "://" in path else canonical_uri(path)
