"""FAISS on the GPU against the CPU: training, adding and searching give the CPU's answers up to
float rounding. Needs faiss with GPU support and a GPU (``-m cuda``); skipped elsewhere.

The build steps run in this process (a Ray task that asks for no GPU does not see one)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from pipeline.index import gpu
from pipeline.index.build import IndexBuildConfig, build_index, build_shard, train_index
from pipeline.index.search import ShardedIndex
from pipeline.io.descriptor_reader import list_descriptor_files
from tests.support.descriptors import queries_near, write_clustered_folder

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(gpu.gpu_count() == 0, reason="needs faiss with GPU support and a GPU"),
]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8x4fs,RFlat"])
def test_gpu_training_and_adding_match_the_cpu(tmp_path, factory: str) -> None:
    desc = str(tmp_path / "desc")
    _, x = write_clustered_folder(desc, 2, 2000)
    files = list_descriptor_files(desc)
    q = queries_near(x, 50)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recalls = {}
    for use_gpu in (False, True):
        cfg = IndexBuildConfig(factory=factory, train_size=4000, use_gpu=use_gpu)
        trained = train_index(files, x.shape[1], cfg)  # k-means on the GPU when use_gpu
        folder = str(tmp_path / f"gpu-{use_gpu}")
        count = build_shard(
            0, [(f.uri, 2000 * i) for i, f in enumerate(files)], 32, cfg, trained, folder
        )
        assert count == 4000
        index = faiss.read_index(f"{folder}/shard-00000.faiss")
        assert isinstance(faiss.downcast_index(gpu.ivf_of(index).quantizer), faiss.IndexFlat)
        gpu.ivf_of(index).nprobe = 8
        recalls[use_gpu] = overlap(index.search(q, 10)[1], exact)
    assert recalls[True] == pytest.approx(recalls[False], abs=0.05), recalls


def test_gpu_add_assigns_as_the_cpu_with_the_same_quantizer(tmp_path) -> None:
    desc = str(tmp_path / "desc")
    write_clustered_folder(desc, 1, 3000)
    files = list_descriptor_files(desc)
    cfg = IndexBuildConfig(factory="IVF32,SQ8", train_size=3000, use_gpu=False)
    trained = train_index(files, 32, cfg)
    lists = []
    for use_gpu in (False, True):
        folder = str(tmp_path / f"gpu-{use_gpu}")
        build_shard(
            0,
            [(files[0].uri, 0)],
            32,
            IndexBuildConfig(factory=cfg.factory, use_gpu=use_gpu),
            trained,
            folder,
        )
        ivf = gpu.ivf_of(faiss.read_index(f"{folder}/shard-00000.faiss"))
        lists.append(np.array([ivf.get_list_size(c) for c in range(32)]))
    assert np.abs(lists[0] - lists[1]).sum() <= 0.01 * 3000  # cell borders may round apart


@pytest.mark.parametrize(
    "factory", ["Flat", "IVF32,Flat", "IVF32,PQ8", "IVF32,PQ8x4fs,Refine(SQ8)"]
)
def test_gpu_search_matches_the_cpu(ray_local, tmp_path, factory: str) -> None:
    desc, out = str(tmp_path / "desc"), str(tmp_path / "idx")
    _, x = write_clustered_folder(desc, 2, 2000)
    build_index(
        desc, out, IndexBuildConfig(factory=factory, shards=2, train_size=4000, use_gpu=False)
    )
    q = queries_near(x, 50)
    cpu = ShardedIndex.load(out, use_gpu=False).search(q, 100)
    on_gpu = ShardedIndex.load(out, use_gpu=True)
    found = on_gpu.search(q, 100)
    assert overlap(found.ids, cpu.ids) > 0.99
    np.testing.assert_allclose(
        np.sort(found.scores, 1), np.sort(cpu.scores, 1), rtol=1e-3, atol=1e-3
    )
    # Beyond FAISS's GPU k limit the CPU copy answers: every cell visited, all k found.
    every_cell = on_gpu.params.with_overrides(nprobe=32)
    big = on_gpu.search(q[:3], gpu.GPU_MAX_K + 1, every_cell)
    assert (big.ids >= 0).all()
    cpu_big = ShardedIndex.load(out, use_gpu=False).search(q[:3], gpu.GPU_MAX_K + 1, every_cell)
    assert overlap(big.ids, cpu_big.ids) > 0.99
