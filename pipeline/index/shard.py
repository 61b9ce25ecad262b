"""One index shard in memory: its FAISS index, its id table, and its candidates for a batch of
queries; on the GPU where there is one (``pipeline.index.gpu``).

A shard answers with ``Candidates``: the positions it found, their global ids, the scores by its
codes (``coarse``) and, for a refined index, the scores re-computed from its stored vectors
(``scores``). ``pipeline.index.merge`` turns the candidates of all shards into the top-k, the
same whether the shards live in one process or in many actors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.index import gpu
from pipeline.index.search_config import SearchParams
from pipeline.index.versions import IndexManifest, shard_file
from pipeline.io.storage import filesystem, local_copy

log = logging.getLogger(__name__)

# Queries re-scored together from a refined index's stored vectors (bounds the gathered copy).
RESCORE_QUERIES = 16


def flat_topk(
    queries: np.ndarray, xb: np.ndarray | torch.Tensor, k: int, block_rows: int = 131072
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: one matmul per block of the database and torch.topk, merged
    across blocks, on ``xb``'s device. FAISS's IndexFlat keeps a k-heap per query, which at
    k = 1000 costs ~5x the matmul on a 2-core CPU; this stays within ~1.5x of it."""
    device = xb.device if isinstance(xb, torch.Tensor) else torch.device("cpu")
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    scores, indices = [], []
    for start in range(0, len(xb), block_rows):
        block = xb[start : start + block_rows]
        block = torch.from_numpy(block) if isinstance(block, np.ndarray) else block
        s, i = torch.topk(q @ block.T, min(k, len(block)), dim=1)  # (nq, k_block)
        scores.append(s)
        indices.append(i + start)
    all_s, all_i = torch.cat(scores, 1), torch.cat(indices, 1)
    best_s, pick = torch.topk(all_s, min(k, all_s.shape[1]), dim=1)
    return best_s.cpu().numpy(), torch.gather(all_i, 1, pick).cpu().numpy().astype(np.int64)


@dataclass
class Candidates:
    """One shard's answer to ``nq`` queries: ``m`` candidates per query, best first; missing
    entries have position -1 and score -inf. For a refined index the scores are its codes'
    (``IndexShard.rescore`` re-computes those that make the global cut)."""

    shard: int
    positions: np.ndarray  # (nq, m) int64 rows of the shard
    ids: np.ndarray  # (nq, m) int64 global ids
    scores: np.ndarray  # (nq, m) float32 inner products

    @classmethod
    def empty(cls, shard: int, nq: int) -> Candidates:
        none = np.zeros((nq, 0), np.int64)
        return cls(shard, none, none, np.zeros((nq, 0), np.float32))


def _vectors_of(index: faiss.Index) -> np.ndarray:
    """The stored vectors of a flat index (n, d), without a copy."""
    flat: Any = faiss.downcast_index(index)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def _codes_of(index: faiss.Index) -> np.ndarray:
    """The codes of a flat-codes index (SQ8: n x d bytes) as a (n, code_size) view."""
    codes: Any = faiss.downcast_index(index)
    flat = faiss.rev_swig_ptr(codes.codes.data(), codes.ntotal * codes.code_size)
    return flat.reshape(codes.ntotal, codes.code_size)


def _sq8_affine(refine: faiss.Index) -> tuple[np.ndarray, np.ndarray] | None:
    """(vmin, vdiff / 255) of an 8-bit scalar quantizer, whose decoding is
    x̂ = vmin + (c + 0.5) · vdiff / 255 per dimension (FAISS's 8-bit codec); None otherwise."""
    sq: Any = faiss.downcast_index(refine)
    kinds = (faiss.ScalarQuantizer.QT_8bit, faiss.ScalarQuantizer.QT_8bit_uniform)
    if not isinstance(sq, faiss.IndexScalarQuantizer) or sq.sq.qtype not in kinds:
        return None
    trained = faiss.vector_to_array(sq.sq.trained).astype(np.float32)
    half = len(trained) // 2  # d values each (per dimension), or 1 (uniform)
    return trained[:half], trained[half:] / 255.0


def _rescore(refine: faiss.Index, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """⟨q, x̂_i⟩ for each candidate i from the refinement codes: the stored vectors (RFlat),
    or the decoded codes (SQ8: ⟨q, vmin⟩ + ⟨q ⊙ vdiff/255, c + 0.5⟩, read off the bytes without
    decoding them). Each score is one dot product of its own (not a matrix product whose
    blocking depends on the batch), so shards and actors agree bit for bit."""
    out = np.full(positions.shape, -np.inf, dtype=np.float32)
    exact = isinstance(faiss.downcast_index(refine), faiss.IndexFlat)
    stored = _vectors_of(refine) if exact else _codes_of(refine)
    affine = None if exact else _sq8_affine(refine)
    if affine is not None:
        vmin, step = affine
        scaled = queries * step  # (nq, d): q ⊙ vdiff / 255
        offset = queries @ np.broadcast_to(vmin, queries.shape[1:]) + 0.5 * scaled.sum(1)
    for q0 in range(0, len(queries), RESCORE_QUERIES):
        pos = positions[q0 : q0 + RESCORE_QUERIES]
        valid = pos >= 0
        rows = pos[valid]
        if not len(rows):
            continue
        which = q0 + np.nonzero(valid)[0]  # the query of each candidate
        chunk = out[q0 : q0 + RESCORE_QUERIES]
        if exact:
            chunk[valid] = np.einsum("nd,nd->n", stored[rows], queries[which])
        elif affine is not None:
            codes = stored[rows].astype(np.float32)  # (n_valid, d)
            chunk[valid] = np.einsum("nd,nd->n", codes, scaled[which]) + offset[which]
        else:
            decoded = refine.sa_decode(stored[rows])  # (n_valid, d)
            chunk[valid] = np.einsum("nd,nd->n", decoded, queries[which])
    return out


def _set_nprobe(index: faiss.Index, nprobe: int, on_gpu: bool) -> None:
    if on_gpu:
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", min(nprobe, gpu.GPU_MAX_K))
        return
    ivf = gpu.ivf_of(index)
    if ivf is not None:
        ivf.nprobe = nprobe


class IndexShard:
    """Shard ``number`` of a version: its FAISS index (None once released) and its id table
    (position -> global id, key, source), kept as Arrow columns (compact: no Python strings)."""

    def __init__(
        self,
        number: int,
        index: faiss.Index | None,
        table: pa.Table,
        nbytes: int,
        use_gpu: bool = False,
    ) -> None:
        self.number = number
        self.table = table
        self.ids = table["id"].to_numpy()
        self.nbytes = nbytes  # size of the FAISS file: what the shard costs in memory
        self.use_gpu = use_gpu
        self.index: faiss.Index | None = None
        self._gpu_index: faiss.Index | None = None
        self._gpu_vectors: torch.Tensor | None = None
        if index is not None:
            self.attach(index)

    @classmethod
    def load(
        cls, output: str, manifest: IndexManifest, number: int, use_gpu: bool = False
    ) -> IndexShard:
        index, nbytes = read_shard_index(output, manifest, number)
        return cls(number, index, read_id_table(output, manifest, number), nbytes, use_gpu)

    # -- the FAISS index --------------------------------------------------------------------

    def attach(self, index: faiss.Index) -> None:
        """Hold ``index`` (and its GPU copy when the shard searches on the GPU)."""
        self.index = index
        if not self.use_gpu:
            return
        if not gpu.fits(self.nbytes):
            log.warning(
                "shard %d (%d bytes) does not fit in GPU memory: searched on the CPU",
                self.number,
                self.nbytes,
            )
            return
        if self.exact:
            if torch.cuda.is_available():
                self._gpu_vectors = torch.from_numpy(_vectors_of(index)).cuda()
            else:
                log.warning(
                    "torch sees no CUDA device: Flat shard %d searched on the CPU", self.number
                )
        else:
            self._gpu_index = gpu.clone_for_search(self.base)

    def release(self) -> None:
        """Drop the FAISS index (and its GPU copy); the id table stays."""
        self.index = self._gpu_index = self._gpu_vectors = None

    def _loaded(self) -> Any:
        if self.index is None:
            raise ValueError(f"shard {self.number} is not loaded")
        return self.index

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def exact(self) -> bool:
        """A flat (exhaustive) index: scores and ranks are exact."""
        return isinstance(faiss.downcast_index(self._loaded()), faiss.IndexFlat)

    @property
    def refined(self) -> bool:
        return isinstance(self._loaded(), faiss.IndexRefine)

    @property
    def base(self) -> Any:
        """The index searched first: the whole index, or a refined index's base."""
        index = self._loaded()
        return faiss.downcast_index(index.base_index) if self.refined else index

    def vectors(self) -> np.ndarray:
        """The stored vectors of a flat shard (n, d)."""
        if not self.exact:
            raise ValueError("only flat shards store their vectors exactly")
        return _vectors_of(self._loaded())

    # -- search -----------------------------------------------------------------------------

    def candidates(self, queries: np.ndarray, k: int, params: SearchParams) -> Candidates:
        """The shard's best ``k`` for ``queries`` (nq, d) float32: exact for a flat shard, by
        its codes otherwise (``k × k_factor`` of them for a refined shard)."""
        m = min(k * params.k_factor if self.refined else k, self.ntotal)
        if m == 0:
            return Candidates.empty(self.number, len(queries))
        if self.exact:
            xb = self._gpu_vectors if self._gpu_vectors is not None else self.vectors()
            scores, positions = flat_topk(queries, xb, m)
        else:
            on_gpu = self._gpu_index is not None and m <= gpu.GPU_MAX_K
            base = self._gpu_index if self._gpu_index is not None and on_gpu else self.base
            _set_nprobe(base, params.nprobe, on_gpu)
            scores, positions = base.search(queries, m)
        positions = positions.astype(np.int64)
        scores = np.where(positions >= 0, scores, -np.inf).astype(np.float32)
        ids = np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)
        return Candidates(self.number, positions, ids, scores)

    def rescore(self, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(nq, m) float32: the refinement codes' scores of ``positions`` (-1: none, -inf)."""
        return _rescore(self._loaded().refine_index, queries, positions)

    def count_above(
        self, queries: np.ndarray, thresholds: np.ndarray, block_rows: int = 131072
    ) -> np.ndarray:
        """(nq, m) int64: for query q, how many of the shard's vectors score strictly above each
        ``thresholds[q, j]`` (exact: flat shards only)."""
        xb = self.vectors()
        counts = np.zeros(thresholds.shape, dtype=np.int64)
        for start in range(0, len(xb), block_rows):
            scores = np.sort(queries @ xb[start : start + block_rows].T, axis=1)  # (nq, n_b)
            for q in range(len(queries)):
                counts[q] += scores.shape[1] - np.searchsorted(scores[q], thresholds[q], "right")
        return counts

    def keys_at(self, positions: np.ndarray) -> list[str]:
        return self.table["key"].take(pa.array(positions, pa.int64())).to_pylist()


def read_id_table(output: str, manifest: IndexManifest, number: int) -> pa.Table:
    """Shard ``number``'s position -> (id, key, source) table; sources stay dictionary-encoded
    (one string per input file, not per row)."""
    fs, path = filesystem(shard_file(output, manifest, number, "ids"))
    with fs.open(path, "rb") as f:
        return pq.read_table(f, read_dictionary=["source"])


def read_shard_index(output: str, manifest: IndexManifest, number: int) -> tuple[faiss.Index, int]:
    """Shard ``number``'s FAISS index, read from a local file (one copy in memory, not two),
    and the file's size in bytes."""
    uri = shard_file(output, manifest, number)
    try:
        path, temporary = local_copy(uri)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{uri} is missing: shard {number} of version {manifest.version} "
            f"(stored in version {manifest.shard_version(number)})"
        ) from None
    try:
        return faiss.read_index(path), os.path.getsize(path)
    finally:
        if temporary:
            os.remove(path)
