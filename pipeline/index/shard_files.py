"""An index shard's files: the descriptor rows streamed into it (whitened as the version's
vectors are), its FAISS file and its id table, each written atomically. Shared by full and
incremental builds (``pipeline.index.build``) and by DBA (``pipeline.index.dba``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator

import faiss
import numpy as np
import pyarrow as pa

from pipeline.index import gpu
from pipeline.index.whitening import Whitening
from pipeline.io.descriptor_reader import iter_batches
from pipeline.io.descriptor_writer import parquet_bytes
from pipeline.io.storage import join, upload_file_atomic, write_bytes_atomic

# One streamed batch of a shard: global ids (n,), keys, sources, descriptors (n, d) float32.
Batch = tuple[np.ndarray, list[str], list[str], np.ndarray]


def new_index(dim: int, factory: str, trained: bytes | None) -> faiss.Index:
    """An empty shard: a copy of the trained index, or a fresh one that needs no training."""
    if trained is not None:
        return faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def file_batches(
    files: list[tuple[str, int]], batch_rows: int, whitening: Whitening | None = None
) -> Iterator[Batch]:
    """The rows of ``files`` ((uri, first id)) in streamed batches, whitened by ``whitening``
    (writable float32 arrays either way)."""
    for uri, first_id in files:
        offset = first_id
        for keys, sources, x in iter_batches(uri, batch_rows):
            x = np.array(x) if whitening is None else whitening.apply(x)
            yield np.arange(offset, offset + len(keys), dtype=np.int64), keys, sources, x
            offset += len(keys)


def write_shard(
    number: int, batches: Iterable[Batch], index: faiss.Index, version_dir: str, on_gpu: bool
) -> int:
    """Add ``batches`` to ``index`` (the coarse assignment on the GPU when ``on_gpu``), then
    write ``shard-<number>.faiss`` and its id table into ``version_dir``; returns the count."""
    ids, keys, sources = [], [], []
    with gpu.coarse_quantizer_on_gpu(index, on_gpu):
        for batch_ids, batch_keys, batch_sources, x in batches:
            index.add(x)
            ids.append(batch_ids)
            keys.append(pa.array(batch_keys, pa.string()))
            sources.append(pa.array(batch_sources, pa.string()).dictionary_encode())
    table = pa.table(
        {
            "id": pa.array(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
            "key": pa.chunked_array(keys, pa.string()),
            "source": pa.chunked_array(sources, pa.dictionary(pa.int32(), pa.string())).cast(
                pa.string()
            ),
        }
    )
    write_bytes_atomic(join(version_dir, f"ids-{number:05d}.parquet"), parquet_bytes(table))
    return save_index(index, join(version_dir, f"shard-{number:05d}.faiss"))


def save_index(index: faiss.Index, uri: str) -> int:
    """Write ``index`` to ``uri`` atomically; return its vector count. Written to a local file
    by FAISS, then moved/uploaded: no in-memory serialised copy."""
    fd, local = tempfile.mkstemp(suffix=".faiss")
    os.close(fd)
    faiss.write_index(index, local)
    count = int(index.ntotal)
    del index
    upload_file_atomic(local, uri)
    return count
