"""The actor plan is decided before any actor exists (a GPU request that no node can meet
waits forever)."""

from __future__ import annotations

import pytest

from pipeline.actors import ActorPlan, plan_actors


def test_one_gpu_actor_per_gpu() -> None:
    assert plan_actors({"GPU": 4, "CPU": 32}, None) == ActorPlan(4, True, 4.0)
    assert plan_actors({"GPU": 2, "CPU": 2}, None) == ActorPlan(2, True, 1.0)


def test_cpu_actors_without_gpus() -> None:
    assert plan_actors({"CPU": 2}, None) == ActorPlan(1, False, 2.0)
    assert plan_actors({"CPU": 16}, None) == ActorPlan(4, False, 4.0)
    assert plan_actors({"CPU": 16}, 2) == ActorPlan(2, False, 8.0)
    assert plan_actors({"GPU": 2, "CPU": 16}, 2, "cpu") == ActorPlan(2, False, 8.0)


def test_gpu_actors_on_an_autoscaling_cluster_need_a_count() -> None:
    assert plan_actors({"CPU": 0}, 8, "gpu") == ActorPlan(8, True, 1.0)
    with pytest.raises(ValueError, match="needs --actors"):
        plan_actors({"CPU": 4}, None, "gpu")


def test_more_gpu_actors_than_gpus_is_refused_in_auto_mode() -> None:
    with pytest.raises(ValueError, match="needs 3 GPUs"):
        plan_actors({"GPU": 2, "CPU": 8}, 3)
    with pytest.raises(ValueError, match="device"):
        plan_actors({"CPU": 8}, None, "tpu")
