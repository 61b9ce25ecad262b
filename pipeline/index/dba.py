"""Database-side augmentation of an index version while it is built (before its manifest and
LATEST are written), at any scale: the neighbours of every stored vector are found with the
version's own index (exact with Flat shards, approximate with IVF/PQ ones), in batches.

1. Load the version's shards as built (the original vectors) into memory.
2. For each shard, stream its input files again in position order (the same rows, the same
   whitening) and search the whole version with each batch for its k + 1 nearest vectors.
3. Replace each vector by v' = L2(v + Σ max(s_i, 0)^α x_i) over its k nearest other vectors
   (``pipeline.index.expansion``), and write the shard again from a fresh copy of the trained,
   empty index. The in-memory original stays untouched, so every vector is augmented from the
   original neighbours.

DBA makes every build a full one (``pipeline.index.plan``): new vectors change the neighbours of
old ones, so the shards of an earlier version cannot be reused.

Memory: the version's index (all shards) plus one shard being rewritten plus a batch of
neighbours (``batch_rows`` x k x d floats). Time: one search of every stored vector, i.e. N
queries against N vectors (O(N² d) with Flat shards, far less with IVF).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import faiss

from pipeline.index.expansion import DbaConfig, alpha_expand, drop_self
from pipeline.index.search import ShardedIndex
from pipeline.index.shard_files import file_batches, save_index
from pipeline.index.versions import DbaRecord, IndexManifest, shard_file
from pipeline.index.whitening import Whitening
from pipeline.runtime.memory import peak_rss_bytes

log = logging.getLogger(__name__)


def augment_version(
    output: str,
    manifest: IndexManifest,
    shard_files: list[list[tuple[str, int]]],
    cfg: DbaConfig,
    new_index: Callable[[], faiss.Index],
    whitening: Whitening | None = None,
    use_gpu: bool | None = None,
) -> DbaRecord:
    """Rewrite every shard of the unpublished version ``manifest`` describes (a full build in
    ``output``, its manifest not written yet) with augmented vectors. ``shard_files[s]``: shard
    s's input files and their first ids, in position order; ``new_index()``: an empty, trained
    index like the shards; ``use_gpu``: where the neighbours are searched (None: the GPU when
    faiss sees one)."""
    t0 = time.monotonic()
    if manifest.shard_versions:
        raise ValueError("DBA rewrites a full build's own shards, not an incremental version")
    index = ShardedIndex.from_manifest(output, manifest, use_gpu=use_gpu)
    if not index.exact:
        index.set_nprobe(cfg.nprobe)
    stored = index.stored_vectors()
    if cfg.k >= index.ntotal:
        raise ValueError(f"DBA with k = {cfg.k} needs more than {index.ntotal} vectors")
    for s, files in enumerate(shard_files):
        out = new_index()
        for own, _, _, x in file_batches(files, cfg.batch_rows, whitening):
            found = index.search(x, cfg.k + 1, prepared=True)
            ids, sims = drop_self(found.ids, found.scores, own, cfg.k)
            out.add(alpha_expand(x, stored.vectors(ids), sims, cfg.alpha))
        count = save_index(out, shard_file(output, manifest, s))
        if count != manifest.shard_counts[s]:
            expected = manifest.shard_counts[s]
            raise RuntimeError(f"DBA wrote {count} vectors to shard {s}, not {expected}")
        log.info("DBA: shard %d of %d augmented (%d vectors)", s + 1, len(shard_files), count)
    record = DbaRecord(
        k=cfg.k,
        alpha=cfg.alpha,
        exact=index.exact,
        seconds=round(time.monotonic() - t0, 3),
        peak_rss_bytes=peak_rss_bytes(),
    )
    log.info(
        "DBA k=%d alpha=%g over %d vectors (%s neighbours): %.1fs, peak RSS %.2f GiB",
        cfg.k,
        cfg.alpha,
        index.ntotal,
        "exact" if index.exact else "approximate",
        record.seconds,
        record.peak_rss_bytes / 2**30,
    )
    return record
