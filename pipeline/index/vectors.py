"""The stored vectors of an index version by global id (for αQE, DBA and re-ranking): exact
for flat shards and for IVF shards with uncompressed lists (IVF…,Flat), FAISS's
reconstruction (lossy) for compressed ones (PQ, SQ)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import faiss
import numpy as np


class StoredVectors:
    """``vectors(ids)`` of a loaded version (or of the shards an actor holds: ``gather``); -1
    ids give zero vectors. Built by ``ShardedIndex.stored_vectors`` from its shards, their id
    tables and its reader of flat shards' stored rows."""

    def __init__(
        self,
        shards: Sequence[faiss.Index | None],
        ids: Sequence[np.ndarray],
        dim: int,
        flat_rows: Callable[[int], np.ndarray],
    ) -> None:
        """``shards``: the FAISS shards (None: not loaded); ``ids``: each shard's global ids
        (n_s,); ``flat_rows(s)``: the (n_s, d) stored vectors of flat shard ``s``."""
        self._indexes = [s for s in shards if s is not None]
        if len(self._indexes) != len(shards):
            raise ValueError("stored vectors need the shards in memory (not a lazy index)")
        self._flat_rows = flat_rows
        empty = np.zeros(0, np.int64)
        all_ids = np.concatenate([empty, *ids])
        shard = np.concatenate([empty, *(np.full(len(i), s) for s, i in enumerate(ids))])
        pos = np.concatenate([empty, *(np.arange(len(i)) for i in ids)])
        order = np.argsort(all_ids, kind="stable")
        self._sorted_ids = all_ids[order]
        self._shard = shard[order].astype(np.int64)
        self._pos = pos[order].astype(np.int64)
        self.dim = dim
        self.exact = all(_stores_exactly(s) for s in self._indexes)
        for s in self._indexes:
            if not isinstance(faiss.downcast_index(s), faiss.IndexFlat):
                # Not an IVF index: reconstruct works without a direct map.
                with contextlib.suppress(RuntimeError):
                    faiss.extract_index_ivf(s).make_direct_map()

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(..., d) float32 for ids of any shape."""
        out, found = self.gather(ids)
        if (~found & (np.asarray(ids) >= 0)).any():
            raise ValueError("ids not in this index version")
        return out

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (..., d) float32, found (...) bool) for ids of any shape: the vectors of
        the ids held here, zeros for the others (an actor holds some shards only)."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((len(flat), self.dim), np.float32)
        where = np.searchsorted(self._sorted_ids, flat)
        where = np.minimum(where, max(len(self._sorted_ids) - 1, 0))
        found = flat >= 0
        if len(self._sorted_ids):
            found &= self._sorted_ids[where] == flat
        else:
            found[:] = False
        shards, positions = self._shard[where[found]], self._pos[where[found]]
        rows = np.flatnonzero(found)
        for s in np.unique(shards):
            sel = shards == s
            out[rows[sel]] = self._shard_rows(int(s), positions[sel])
        return out.reshape(*np.shape(ids), self.dim), found.reshape(np.shape(ids))

    def _shard_rows(self, s: int, positions: np.ndarray) -> np.ndarray:
        index = faiss.downcast_index(self._indexes[s])
        if isinstance(index, faiss.IndexFlat):
            return self._flat_rows(s)[positions]
        return self._indexes[s].reconstruct_batch(positions.astype(np.int64))


def _stores_exactly(index: faiss.Index) -> bool:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return True
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return isinstance(ivf, faiss.IndexIVFFlat)
