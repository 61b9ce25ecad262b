"""Reading descriptor Parquet: committed files of an extraction output, or every Parquet file of
a plain folder written by another tool; streaming in row-group batches; one model only."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipeline.io.layout import descriptors_folder, descriptors_uri, list_markers, markers_folder
from pipeline.io.storage import filesystem, is_local, join, read_json, unstrip

if TYPE_CHECKING:
    from pipeline.io.delta_log import TableFile

log = logging.getLogger(__name__)

# Metadata keys that identify the descriptor space: files that differ in any cannot be mixed.
MODEL_KEYS = (
    "model",
    "weights_sha256",
    "backbone",
    "glam_config",
    "scales",
    "image_size",
    "precision",
    "descriptor_dim",
    "max_pixels",
    "jpeg_draft",
    "resize",
)
# Identity keys added after files were first written, with what a file without one was made
# with: such a file still mixes with new files made the same way.
LATER_MODEL_KEYS = {"resize": "bilinear"}


@dataclass(frozen=True)
class DescriptorFile:
    uri: str
    size: int
    etag: str  # changes when the file changes (``_version_tag``)
    rows: int
    dim: int
    metadata: dict[str, str]

    def identity(self) -> dict[str, str]:
        metadata = {**LATER_MODEL_KEYS, **self.metadata}
        return {k: metadata[k] for k in MODEL_KEYS if k in metadata}


def _describe(uri: str) -> DescriptorFile:
    fs, path = filesystem(uri)
    info = fs.info(path)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        rows = pf.metadata.num_rows
    if "descriptor" not in schema.names or "key" not in schema.names:
        raise ValueError(f"{uri} has no 'key' and 'descriptor' columns: not a descriptor file")
    dtype = schema.field("descriptor").type
    if not pa.types.is_fixed_size_list(dtype) or not pa.types.is_floating(dtype.value_type):
        raise ValueError(f"{uri}: 'descriptor' must be fixed_size_list<float>, found {dtype}")
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    size = int(info.get("size") or 0)
    return DescriptorFile(uri, size, _version_tag(fs, path, info), rows, dtype.list_size, meta)


def _version_tag(fs: AbstractFileSystem, path: str, info: dict[str, Any]) -> str:
    """What changes when the file changes: the ETag on object stores; locally the inode and
    the change time besides the mtime. ``cp -p`` and ``rsync -a`` keep size and mtime, but
    no one can keep the ctime (the kernel sets it) or, for a new file, the inode."""
    if is_local(fs):
        st = os.stat(path)
        return f"mtime={st.st_mtime_ns} ctime={st.st_ctime_ns} inode={st.st_ino}"
    return str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or "")


@dataclass(frozen=True)
class DescriptorListing:
    """What ``read_descriptor_listing`` found: the files, and the version of the Delta table
    they were listed from (None: no table was read). One snapshot: a registration meanwhile
    cannot make the two differ."""

    files: list[DescriptorFile]
    table_version: int | None


def list_descriptor_files(folder: str, version: int | None = None) -> list[DescriptorFile]:
    """The descriptor files of ``folder``, sorted (``read_descriptor_listing``'s files)."""
    return read_descriptor_listing(folder, version).files


def read_descriptor_listing(folder: str, version: int | None = None) -> DescriptorListing:
    """The descriptor files of ``folder``, sorted, and the table version they come from:

    - an extraction output with a Delta table at ``descriptors/``: the files its log lists at
      ``version`` (None: the latest), with sizes and rows from the log. The log is read once,
      with no listing and no request per file: the first file's footer gives the schema and
      the model identity, which the output binds every file to, checked against the middle
      and last files' footers;
    - an extraction output without one (written before tables, or ``--table none``): the
      committed files, from its ``_shards/`` markers;
    - a folder that is a Delta table itself: the files its log lists (never a removed one);
    - else every ``*.parquet`` below it (hidden and ``_``-prefixed names skipped)."""
    # Imported here: delta-rs is needed only where a table is read, not by every reader.
    from pipeline.io.delta_log import has_table

    table = descriptors_folder(folder)
    if has_table(table):
        return _output_table_files(folder, version)
    if has_table(folder):
        return _table_listing(folder, version)
    if version is not None:
        raise ValueError(f"{folder} holds no Delta table: it has no versions to read")
    fs, path = filesystem(folder)
    markers = sorted(list_markers(folder), key=lambda m: m.name)
    if markers:
        uris = []
        for m in markers:
            record = read_json(join(markers_folder(folder), m.name))
            if record and record.get("status", "committed") == "committed":
                uris.append(descriptors_uri(folder, m.sid))
    else:
        found = sorted(fs.glob(join(path, "**", "*.parquet")))
        uris = [
            unstrip(fs, p, folder)
            for p in found
            if not any(part.startswith(("_", ".")) for part in p[len(path) :].split("/") if part)
        ]
    if not uris:
        raise ValueError(f"no descriptor Parquet files in {folder}")
    return DescriptorListing([_describe(u) for u in uris], None)


def _sample(listed: list[TableFile]) -> list[int]:
    return sorted({len(listed) // 2, len(listed) - 1} - {0})


def _table_listing(folder: str, version: int | None) -> DescriptorListing:
    from pipeline.io.delta_log import files_of, open_table

    opened = open_table(folder, version)
    uris = [join(folder, f.name) for f in files_of(opened)]
    if not uris:
        raise ValueError(f"the Delta table in {folder} lists no file (version {version})")
    return DescriptorListing([_describe(u) for u in uris], int(opened.version()))


def _output_table_files(output: str, version: int | None) -> DescriptorListing:
    """An extraction output's files from its descriptors table (see ``read_descriptor_listing``).
    Locally each file's version tag is still its ``stat`` (free: no request); on an object
    store it is the modification time the log recorded: a file changed behind the table's back
    (not through a run, which registers a new file) is not seen there."""
    from pipeline.io.delta_log import files_of, open_table

    folder = descriptors_folder(output)
    opened = open_table(folder, version)
    listed = files_of(opened)
    if not listed:
        raise ValueError(f"no descriptor Parquet files in {output} (its table lists none)")
    if version is None:  # the latest: shards committed since may not be registered yet
        committed = sum(1 for _ in list_markers(output))  # one paginated listing
        if committed > len(listed):
            log.warning(
                "%s: %d committed shards are not in its descriptors table yet (a run stopped "
                "between a commit and its registration); reading the table's %d files: the "
                "next extraction run on this output registers them",
                output,
                committed - len(listed),
                len(listed),
            )
    fs, path = filesystem(folder)
    local = is_local(fs)

    def tag(f: TableFile) -> str:
        return _version_tag(fs, join(path, f.name), {}) if local else f"delta-mtime={f.modified_ms}"

    head = _describe(join(folder, listed[0].name))
    # The output binds its files to one configuration; a sample of footers (the middle and the
    # last file: a constant cost) checks that nothing else was put in its folder.
    check_same_model([head, *(_describe(join(folder, listed[i].name)) for i in _sample(listed))])
    files = [replace(head, etag=tag(listed[0]))]
    for f in listed[1:]:
        uri = join(folder, f.name)
        if f.rows < 0:  # a log written without statistics: the footer has the count
            files.append(replace(_describe(uri), etag=tag(f)))
        else:
            files.append(DescriptorFile(uri, f.size, tag(f), f.rows, head.dim, head.metadata))
    return DescriptorListing(files, int(opened.version()))


def check_same_model(files: list[DescriptorFile]) -> dict[str, str]:
    """The shared model identity of ``files``; refuse files of different models/configs."""
    first = files[0]
    for f in files[1:]:
        if f.dim != first.dim or f.identity() != first.identity():
            a, b = first.identity(), f.identity()
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(
                f"{f.uri} and {first.uri} hold descriptors of different models or "
                f"configurations (differ in: {', '.join(diff) or 'dim'}); refusing to mix them"
            )
    return first.identity()


def to_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list<float> column -> (N, d) float32."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.list_size
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def iter_batches(
    uri: str, batch_rows: int = 65536
) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(keys, sources, descriptors (n, d)) per row-group batch, streamed from ``uri``; a batch
    holding a NaN or infinite descriptor is refused (ValueError naming the file and keys)."""
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        columns = ["key", "descriptor"] + (["source"] if "source" in pf.schema_arrow.names else [])
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            keys = batch.column("key").to_pylist()
            sources = (
                batch.column("source").to_pylist() if "source" in columns else [uri] * len(keys)
            )
            x = to_matrix(batch.column("descriptor"))
            finite = np.isfinite(x).all(axis=1)
            if not finite.all():
                bad = [keys[i] for i in np.flatnonzero(~finite)[:3]]
                raise ValueError(
                    f"{uri}: {int((~finite).sum())} descriptors hold NaN or infinite values "
                    f"(keys {', '.join(map(repr, bad))}, …); they would poison whitening and "
                    "every search: re-extract them"
                )
            yield keys, sources, x


def random_descriptors(files: list[DescriptorFile], n: int, seed: int) -> np.ndarray:
    """``n`` descriptors drawn uniformly without replacement across all ``files`` (all of them
    when fewer; not a prefix), in file order."""
    total = sum(f.rows for f in files)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    out, start = [], 0
    for f in files:
        local = chosen[(chosen >= start) & (chosen < start + f.rows)] - start
        if len(local):
            offset = 0
            for _, _, x in iter_batches(f.uri):
                sel = local[(local >= offset) & (local < offset + len(x))] - offset
                if len(sel):
                    out.append(x[sel])
                offset += len(x)
        start += f.rows
    return np.concatenate(out) if out else np.zeros((0, files[0].dim), np.float32)


def read_descriptors(folder: str) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """All (keys, descriptors (N, d), model identity) of ``folder``.

    Keys are unique within a shard (the extraction keeps the first sample of a key); across
    shards the first file in sorted order wins, and the others are dropped with a warning
    that names them."""
    files = list_descriptor_files(folder)
    identity = check_same_model(files)
    keys: list[str] = []
    blocks = []
    for f in files:
        for batch_keys, _, batch in iter_batches(f.uri):
            keys.extend(batch_keys)
            blocks.append(batch)
    x = np.concatenate(blocks) if blocks else np.zeros((0, files[0].dim), np.float32)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    if len(first) != len(keys):
        dropped = len(keys) - len(first)
        duplicated = sorted({k for i, k in enumerate(keys) if first[k] != i})
        log.warning(
            "%s holds %d rows whose key an earlier file already has (the first is kept): %s%s",
            folder,
            dropped,
            ", ".join(duplicated[:10]),
            ", ..." if len(duplicated) > 10 else "",
        )
        keep = np.fromiter(first.values(), dtype=np.int64)
        keys, x = [keys[i] for i in keep], x[keep]
    return keys, x, identity
