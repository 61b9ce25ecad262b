"""The mechanics the GPU paths use, run on the CPU: k-means assigning with a separate flat
index, and adding through a replaced coarse quantizer, give exactly the usual index (on a GPU
the replacement is a GPU copy; ``test_gpu.py`` compares the two there)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from pipeline.index import gpu
from tests.support.descriptors import unit


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(50, 32)))
    return unit(centres[rng.integers(0, 50, 6000)] + 0.4 * rng.normal(size=(6000, 32)) / 6)


@pytest.mark.parametrize(
    "factory",
    [
        "IVF32,Flat",
        "IVF32,SQ8",
        "IVF32,PQ8x4fs",
        "IVF32,PQ8x4fs,RFlat",
        "IVF32,PQ8x4fs,Refine(SQ8)",
    ],
)
def test_separate_assignment_index_trains_and_adds_the_same_index(x, factory: str) -> None:
    plain = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    plain.train(x)
    plain.add(x)
    routed = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    gpu.train_with(routed, x, lambda d, metric: faiss.IndexFlat(d, metric))
    quantizer = gpu.ivf_of(routed).quantizer
    with gpu.coarse_quantizer_replaced(routed, faiss.clone_index):
        assert gpu.ivf_of(routed).quantizer.this != quantizer.this  # the copy assigns
        routed.add(x)
    assert gpu.ivf_of(routed).quantizer.this == quantizer.this  # its own is back
    assert routed.ntotal == plain.ntotal == len(x)
    centroids = [gpu.ivf_of(i).quantizer.reconstruct_n(0, 32) for i in (plain, routed)]
    np.testing.assert_array_equal(*centroids)
    for index in (plain, routed):
        gpu.ivf_of(index).nprobe = 4
    q = x[:50]
    (d0, i0), (d1, i1) = plain.search(q, 10), routed.search(q, 10)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)
    faiss.write_index(routed, "/dev/null")  # still a whole, writable index


def test_without_a_gpu_nothing_is_replaced_and_gpu_requests_are_refused(x) -> None:
    index = faiss.index_factory(32, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    gpu.train(index, x, gpu=False)
    before = index.quantizer.this
    with gpu.coarse_quantizer_on_gpu(index, gpu=False):
        assert index.quantizer.this == before
    if gpu.gpu_count() == 0:
        with pytest.raises(ValueError, match="--gpu asked for"):
            gpu.resolve_gpu(True)
        assert gpu.resolve_gpu(None) is False
