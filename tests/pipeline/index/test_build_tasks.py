"""Shard-building tasks that hold several CPUs (FAISS threads = CPUs) build the same shards as
one-CPU tasks; a task size no node can hold is refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.index.build import IndexBuildConfig, build_index
from pipeline.index.search import ShardedIndex
from pipeline.index.versions import list_versions
from tests.support.descriptors import queries_near, write_clustered_folder


def test_tasks_of_two_cpus_build_what_tasks_of_one_build(ray_local, tmp_path) -> None:
    desc = str(tmp_path / "desc")
    _, x = write_clustered_folder(desc, 3, 200)
    q = queries_near(x, 10)
    found = []
    for cpus in (1, 2):
        out = str(tmp_path / f"idx-{cpus}")
        cfg = IndexBuildConfig(factory="IVF8,Flat", shards=2, train_size=600, cpus_per_task=cpus)
        build_index(desc, out, cfg)
        found.append(ShardedIndex.load(out).search(q, 10))
    # Across processes with other thread counts: ids exactly, scores to rounding.
    np.testing.assert_array_equal(found[0].ids, found[1].ids)
    np.testing.assert_allclose(found[0].scores, found[1].scores, rtol=1e-5, atol=1e-6)


def test_a_task_no_node_can_hold_is_refused_before_any_work(ray_local, tmp_path) -> None:
    desc, out = str(tmp_path / "desc"), str(tmp_path / "idx")
    write_clustered_folder(desc, 1, 50)
    with pytest.raises(ValueError, match=r"--cpus-per-task 3: no node .*the largest has 2\)"):
        build_index(desc, out, IndexBuildConfig(cpus_per_task=3))
    assert list_versions(out) == []
    with pytest.raises(ValueError, match="cpus_per_task must be at least 1"):
        IndexBuildConfig(cpus_per_task=0)
