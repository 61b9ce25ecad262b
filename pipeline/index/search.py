"""Loading an index version and searching it: top-k (ids, keys, scores) merged across shards."""

from __future__ import annotations

import os
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.index.versions import IndexManifest, read_latest, read_manifest
from pipeline.index.whitening import Whitening
from pipeline.io.storage import filesystem, join, local_copy, read_bytes
from pipeline.runtime.records import check_fingerprint


def flat_topk(
    queries: np.ndarray, xb: np.ndarray, k: int, block_rows: int = 131072
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: one BLAS matmul per block of the database and torch.topk,
    merged across blocks. FAISS's IndexFlat keeps a k-heap per query, which at k = 1000 costs
    ~5x the matmul on a 2-core CPU; this stays within ~1.5x of it."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    scores, indices = [], []
    for start in range(0, len(xb), block_rows):
        block = torch.from_numpy(xb[start : start + block_rows])
        s, i = torch.topk(q @ block.T, min(k, len(block)), dim=1)  # (nq, k_block)
        scores.append(s)
        indices.append(i + start)
    all_s, all_i = torch.cat(scores, 1), torch.cat(indices, 1)
    best_s, pick = torch.topk(all_s, min(k, all_s.shape[1]), dim=1)
    return best_s.numpy(), torch.gather(all_i, 1, pick).numpy().astype(np.int64)


@dataclass
class SearchResult:
    ids: np.ndarray  # (nq, k) int64, -1 where fewer than k vectors exist
    scores: np.ndarray  # (nq, k) float32, inner products, best first
    keys: list[list[str]]


@dataclass
class ShardedIndex:
    version: str
    manifest: IndexManifest
    shards: list[faiss.Index]
    ids: list[np.ndarray]  # per shard: position -> global id
    keys: list[list[str]]
    sources: list[list[str]]
    # issue 12: the version's query-side post-processing (its whitening), applied by search().
    whitening: Whitening | None = None

    @classmethod
    def load(cls, output: str, version: str | None = None) -> ShardedIndex:
        if version is None:
            latest = read_latest(output)
            if latest is None:
                raise ValueError(f"no index at {output} (no LATEST)")
            version, manifest = latest
        else:
            manifest = read_manifest(output, version)
        return cls.open(join(output, version), version, manifest)

    @classmethod
    def open(cls, folder: str, version: str, manifest: IndexManifest) -> ShardedIndex:
        """The version in ``folder`` (also one still being built: DBA searches it)."""
        shards, ids, keys, sources = [], [], [], []
        for s in range(manifest.shards):
            path, temporary = local_copy(join(folder, f"shard-{s:05d}.faiss"))
            try:
                shards.append(faiss.read_index(path))  # one copy in memory, not two
            finally:
                if temporary:
                    os.remove(path)
            fs, path = filesystem(join(folder, f"ids-{s:05d}.parquet"))
            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
            ids.append(table["id"].to_numpy())
            keys.append(table["key"].to_pylist())
            sources.append(table["source"].to_pylist())
        whitening = None
        if manifest.whitening is not None:
            data = read_bytes(join(folder, manifest.whitening.file))
            whitening = Whitening.from_bytes(data, join(folder, manifest.whitening.file))
        return cls(version, manifest, shards, ids, keys, sources, whitening)

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        """Descriptors as extracted -> vectors in this version's space (its whitening)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return queries if self.whitening is None else self.whitening.apply(queries)

    def check_queries(self, identity: dict[str, str], source: str) -> None:
        """Refuse query descriptors of another model or configuration than the index's (their
        Parquet metadata, ``source``): scores across two descriptor spaces mean nothing."""
        check_fingerprint(
            f"the index version {self.version}",
            self.manifest.descriptor_model,
            identity,
            f"the queries in {source} come from another descriptor space",
        )

    @property
    def ntotal(self) -> int:
        return sum(int(s.ntotal) for s in self.shards)

    @property
    def exact(self) -> bool:
        """True when every shard is a flat (exhaustive) index: scores and ranks are exact."""
        return all(isinstance(faiss.downcast_index(s), faiss.IndexFlat) for s in self.shards)

    def set_nprobe(self, nprobe: int) -> None:
        """IVF cells visited per query in every shard (FAISS's default is 1)."""
        for index in self.shards:
            faiss.extract_index_ivf(index).nprobe = nprobe

    def shard_vectors(self, s: int) -> np.ndarray:
        """The stored vectors of a flat shard (n, d)."""
        index = faiss.downcast_index(self.shards[s])
        if not isinstance(index, faiss.IndexFlat):
            raise ValueError("only flat shards store their vectors exactly")
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(
            index.ntotal, index.d
        )

    def search(self, queries: np.ndarray, k: int, prepared: bool = False) -> SearchResult:
        """Top-k of descriptors as extracted; ``prepared``: vectors already in the version's
        space (``prepare_queries``), e.g. expanded queries or stored vectors."""
        queries = (
            np.ascontiguousarray(queries, dtype=np.float32)
            if prepared
            else self.prepare_queries(queries)
        )
        nq = len(queries)
        all_scores, all_ids, all_where = [], [], []
        for s, index in enumerate(self.shards):
            kk = min(k, int(index.ntotal))
            if kk == 0:
                continue
            if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
                d, i = flat_topk(queries, self.shard_vectors(s), kk)
            else:
                d, i = index.search(queries, kk)
            valid = i >= 0
            all_scores.append(np.where(valid, d, -np.inf))
            all_ids.append(np.where(valid, self.ids[s][np.maximum(i, 0)], -1))
            all_where.append(np.stack([np.full_like(i, s), i], -1))
        if not all_scores:
            return SearchResult(
                np.full((nq, k), -1), np.full((nq, k), -np.inf, np.float32), [[] for _ in range(nq)]
            )
        scores = np.concatenate(all_scores, 1)
        ids = np.concatenate(all_ids, 1)
        where = np.concatenate(all_where, 1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, 1)
        top_ids = np.take_along_axis(ids, order, 1)
        top_where = np.take_along_axis(where, order[..., None], 1)
        keys = [
            [
                self.keys[s][i]
                for (s, i), sc in zip(top_where[q], top_scores[q], strict=True)
                if np.isfinite(sc)
            ]
            for q in range(nq)
        ]
        pad = k - top_ids.shape[1]
        if pad > 0:
            top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return SearchResult(top_ids, top_scores.astype(np.float32), keys)
