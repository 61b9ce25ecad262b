"""FAISS on GPUs, where faiss has GPU support and sees a GPU; the CPU otherwise.

What runs where:

- training: the IVF k-means assigns on a GPU flat index (``clustering_index``); the rest of the
  training (PQ/SQ codebooks) is small and stays on the CPU;
- adding: the coarse assignment of each vector to its IVF cell (``nlist × d`` flops per vector,
  the cost that grows with the index) runs on a GPU copy of the coarse quantizer; encoding runs
  on the CPU, so every IVF variant (fast-scan PQ, refined indexes) takes the same path;
- search: Flat shards score on the GPU through torch (``pipeline.index.shard``); IVF shards
  whose type FAISS clones to the GPU (IVF-Flat, IVF-PQ, IVF-SQ) search there, the rest (fast-scan
  PQ, refinement codes) on the CPU.

Results match the CPU's up to float rounding (the ``cuda`` tests compare them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from typing import Any

import faiss

log = logging.getLogger(__name__)

# FAISS's GPU indexes return at most this many results per query (k and nprobe).
GPU_MAX_K = 2048


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def resolve_gpu(use_gpu: bool | None) -> bool:
    """``use_gpu`` None: the GPU when there is one; True: the GPU or a clear error."""
    has = gpu_count() > 0
    if use_gpu and not has:
        raise ValueError("--gpu asked for, but faiss has no GPU support or sees no GPU")
    return has if use_gpu is None else bool(use_gpu)


@cache
def resources() -> Any:
    """One set of GPU resources (scratch memory, streams) per process."""
    return faiss.StandardGpuResources()


def ivf_of(index: faiss.Index) -> Any | None:
    """The IVF inside ``index`` (through refinement and pre-transforms), or None."""
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _ivf_with_flat_quantizer(index: faiss.Index) -> tuple[Any, Any] | None:
    """(the IVF, its flat coarse quantizer) when ``index`` has them, else None."""
    ivf = ivf_of(index)
    if ivf is None:
        return None
    quantizer = faiss.downcast_index(ivf.quantizer)
    return (ivf, quantizer) if isinstance(quantizer, faiss.IndexFlat) else None


def train_with(index: faiss.Index, x: Any, clustering: Callable[[int, int], Any] | None) -> None:
    """Train ``index`` on ``x`` (n, d); the IVF k-means assigns with ``clustering(d, metric)``
    (a flat index with the quantizer's metric) instead of the quantizer itself, when given."""
    found = _ivf_with_flat_quantizer(index) if clustering is not None else None
    if found is None or clustering is None:
        index.train(x)
        return
    ivf, quantizer = found
    assigner = clustering(quantizer.d, quantizer.metric_type)  # kept alive while training
    ivf.clustering_index = assigner
    try:
        index.train(x)
    finally:
        ivf.clustering_index = None
        del assigner


def _gpu_flat(d: int, metric: int) -> Any:
    return faiss.index_cpu_to_gpu(resources(), 0, faiss.IndexFlat(d, metric))


def train(index: faiss.Index, x: Any, gpu: bool) -> None:
    """Train ``index`` on ``x`` (n, d); the IVF k-means assigns on the GPU when ``gpu``."""
    train_with(index, x, _gpu_flat if gpu else None)


@contextmanager
def coarse_quantizer_replaced(index: faiss.Index, copy: Callable[[Any], Any]) -> Iterator[None]:
    """While inside, ``index``'s IVF assigns vectors to cells with ``copy(quantizer)`` (same
    centroids, same metric: e.g. a GPU copy); its own quantizer is put back on exit."""
    found = _ivf_with_flat_quantizer(index)
    if found is None:
        yield
        return
    ivf, quantizer = found
    own = ivf.quantizer
    replacement = copy(quantizer)
    ivf.quantizer = replacement
    try:
        yield
    finally:
        ivf.quantizer = own  # the IVF owns (and frees) its own quantizer only
        del replacement


def coarse_quantizer_on_gpu(index: faiss.Index, gpu: bool) -> AbstractContextManager[None]:
    """While inside, ``index``'s IVF assigns vectors to cells on a GPU copy of its coarse
    quantizer when ``gpu``."""
    if not gpu:
        return nullcontext()
    return coarse_quantizer_replaced(index, lambda q: faiss.index_cpu_to_gpu(resources(), 0, q))


def fits(nbytes: int, headroom: float = 0.8) -> bool:
    """Whether ``nbytes`` fit in the free memory of GPU 0 (with room for search buffers)."""
    import torch

    if not torch.cuda.is_available():
        return True  # FAISS allocates through its own resources and reports its own errors
    free, _ = torch.cuda.mem_get_info(0)
    return nbytes <= headroom * free


def clone_for_search(index: faiss.Index) -> faiss.Index | None:
    """A GPU copy of ``index`` for search, or None where FAISS has no GPU version of its type
    (fast-scan PQ, refinement wrappers, HNSW): those are searched on the CPU."""
    options = faiss.GpuClonerOptions()
    # IVF-PQ with more than 48 sub-quantizers needs float16 lookup tables on the GPU; IVF-Flat
    # keeps float32 storage (useFloat16 would store its vectors in half precision).
    options.useFloat16 = isinstance(faiss.downcast_index(index), faiss.IndexIVFPQ)
    try:
        return faiss.index_cpu_to_gpu(resources(), 0, index, options)
    except RuntimeError as e:
        log.info("searching %s on the CPU: %s", type(index).__name__, str(e).splitlines()[0])
        return None
