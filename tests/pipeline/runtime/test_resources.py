"""The actor plan is decided before any actor exists (a GPU request that no node can meet
waits forever)."""

from __future__ import annotations

import pytest

from pipeline.runtime.resources import WorkerPlan, plan_workers


def test_one_gpu_actor_per_gpu() -> None:
    assert plan_workers({"GPU": 4, "CPU": 32}, None) == WorkerPlan(4, True, 4.0)
    assert plan_workers({"GPU": 2, "CPU": 2}, None) == WorkerPlan(2, True, 1.0)


def test_cpu_actors_without_gpus() -> None:
    assert plan_workers({"CPU": 2}, None) == WorkerPlan(1, False, 2.0)
    assert plan_workers({"CPU": 16}, None) == WorkerPlan(4, False, 4.0)
    assert plan_workers({"CPU": 16}, 2) == WorkerPlan(2, False, 8.0)
    assert plan_workers({"GPU": 2, "CPU": 16}, 2, "cpu") == WorkerPlan(2, False, 8.0)


def test_gpu_actors_on_an_autoscaling_cluster_need_a_count() -> None:
    assert plan_workers({"CPU": 0}, 8, "gpu") == WorkerPlan(8, True, 1.0)
    with pytest.raises(ValueError, match="needs --actors"):
        plan_workers({"CPU": 4}, None, "gpu")


def test_more_gpu_actors_than_gpus_is_refused_in_auto_mode() -> None:
    with pytest.raises(ValueError, match="needs 3 GPUs"):
        plan_workers({"GPU": 2, "CPU": 8}, 3)
    with pytest.raises(ValueError, match="device"):
        plan_workers({"CPU": 8}, None, "tpu")


def test_errors_name_the_flag_of_the_job_that_asked() -> None:
    with pytest.raises(ValueError, match="needs --workers N"):
        plan_workers({"CPU": 4}, None, "gpu", count_flag="--workers")
    with pytest.raises(ValueError, match="--workers 3 needs 3 GPUs"):
        plan_workers({"GPU": 2, "CPU": 8}, 3, count_flag="--workers")


def test_a_shortfall_is_said_before_workers_wait_for_it() -> None:
    from pipeline.runtime.resources import shortfall

    gpu_plan = plan_workers({"CPU": 4}, 2, "gpu")
    assert "2 GPU workers are asked for and the cluster has 0 GPU(s) now" in shortfall(
        gpu_plan, {"CPU": 4}
    )
    assert shortfall(gpu_plan, {"CPU": 4, "GPU": 2}) == ""
    cpu_plan = WorkerPlan(3, False, 2.0)
    assert "3 workers of 2 CPUs" in shortfall(cpu_plan, {"CPU": 4})
    assert shortfall(plan_workers({"CPU": 8}, None), {"CPU": 8}) == ""
