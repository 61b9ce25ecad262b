"""Ray actors around ``ShardWorker``: one per GPU (``num_gpus=1``), or CPU actors on a cluster
without GPUs. The choice is made before any actor exists: a GPU request on a GPU-less cluster
would wait forever."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray

from pipeline import failpoints
from pipeline.spec import ExtractionSpec

log = logging.getLogger(__name__)

# CPU cores reserved per GPU actor for reading and decoding, at most.
MAX_CPUS_PER_GPU_ACTOR = 4
# Cores per CPU actor when the count is not given: a few intra-op threads each.
CPUS_PER_CPU_ACTOR = 4


@dataclass(frozen=True)
class ActorPlan:
    count: int
    use_gpu: bool
    num_cpus: float


def plan_actors(
    resources: dict[str, float],
    actors: int | None,
    device: str = "auto",
    max_cpus_per_gpu: int = MAX_CPUS_PER_GPU_ACTOR,
) -> ActorPlan:
    """The actor plan, decided before any actor exists.

    ``auto``: one GPU actor per GPU the cluster shows, else CPU actors. ``gpu``: GPU actors even
    when none is up yet (an autoscaling cluster starting from zero GPU workers; needs
    ``actors``). ``cpu``: CPU actors. ``actors`` overrides the count.
    """
    if device not in ("auto", "gpu", "cpu"):
        raise ValueError(f"device must be auto, gpu or cpu, got {device!r}")
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 0))
    if device == "gpu" or (device == "auto" and gpus > 0):
        count = actors or gpus
        if count == 0:
            raise ValueError(
                "--device gpu on a cluster with no GPU up yet needs --actors N "
                "(the autoscaler starts the GPU workers)"
            )
        if device == "auto" and count > gpus:
            raise ValueError(
                f"--actors {count} needs {count} GPUs; the cluster has {gpus} "
                "(use --device gpu on an autoscaling cluster)"
            )
        return ActorPlan(count, True, max(1.0, _cpus_each(cpus, count, max_cpus_per_gpu)))
    count = actors or max(1, int(cpus // CPUS_PER_CPU_ACTOR))
    return ActorPlan(count, False, _cpus_each(max(cpus, 1.0), count, None))


def _cpus_each(cpus: float, count: int, cap: int | None) -> float:
    each = cpus / count
    each = float(int(each)) if each >= 1 else round(each, 4)
    return min(each, cap) if cap else each


class ShardActor:
    """The Ray actor: builds the model once in ``__init__``, then processes whole shards."""

    def __init__(self, spec: ExtractionSpec, index: int, num_threads: int) -> None:
        import torch

        from pipeline.worker import ShardWorker

        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # CUDA_VISIBLE_DEVICES by Ray
        self.worker = ShardWorker(spec, device=device, name=f"actor-{index}")

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            **self.worker.describe(),
        }

    def process(self, shard_uri: str, output: str) -> dict[str, Any]:
        return self.worker.process(shard_uri, output)


def create_actors(spec: ExtractionSpec, plan: ActorPlan) -> list[Any]:
    remote_cls = ray.remote(ShardActor).options(
        num_gpus=1 if plan.use_gpu else 0,
        num_cpus=plan.num_cpus,
        max_restarts=-1,  # Ray restarts a dead actor; the driver re-queues its shard
        max_task_retries=0,
        runtime_env={"env_vars": failpoints.armed_env()} if failpoints.armed_env() else None,
    )
    threads = max(1, int(plan.num_cpus))
    return [remote_cls.remote(spec, i, threads) for i in range(plan.count)]
