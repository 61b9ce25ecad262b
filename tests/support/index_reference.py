"""What one FAISS index holding every vector answers: the reference a sharded, incremental or
distributed version must match."""

from __future__ import annotations

import faiss
import numpy as np

from pipeline.index.build import TRAINED
from pipeline.index.search import ShardedIndex
from pipeline.index.search_config import SearchParams
from pipeline.index.shard_files import new_index
from pipeline.index.versions import read_latest
from pipeline.io.storage import exists, join, read_bytes


def one_index(output: str, x: np.ndarray) -> faiss.Index:
    """One FAISS index holding every vector, from the version's own trained parameters."""
    manifest = read_latest(output)[1]
    trained_uri = join(output, manifest.trained_version, TRAINED)
    trained = read_bytes(trained_uri) if exists(trained_uri) else None
    index = new_index(manifest.dim, manifest.factory, trained)
    index.add(x)
    return index


def faiss_search(
    index: faiss.Index, q: np.ndarray, k: int, params: SearchParams
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's own answer, with its own refinement when the index is refined."""
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        scores = q @ index.reconstruct_n(0, index.ntotal).T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, 1), ids
    ivf = faiss.SearchParametersIVF(nprobe=params.nprobe)
    if isinstance(index, faiss.IndexRefine):
        refine = faiss.IndexRefineSearchParameters(k_factor=params.k_factor, base_index_params=ivf)
        return index.search(q, k, params=refine)
    return index.search(q, k, params=ivf)


def held_keys(index: ShardedIndex) -> list[str]:
    """Every key the index holds, shard by shard (Python strings: for small test indexes)."""
    return [k for shard in index.held for k in shard.table["key"].to_pylist()]
