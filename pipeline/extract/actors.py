"""Ray actors around ``ShardWorker``: one per GPU (``num_gpus=1``), or CPU actors on a cluster
without GPUs, as ``pipeline.runtime.resources`` plans them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.extract.spec import ExtractionSpec
from pipeline.extract.stats import ShardStats
from pipeline.runtime import failpoints
from pipeline.runtime.resources import WorkerPlan

# CPU cores reserved per GPU actor for reading and decoding, at most.
MAX_CPUS_PER_GPU_ACTOR = 4


@dataclass(frozen=True)
class ActorInfo:
    """Where an actor runs and what it computes with (recorded in ``_job.json``)."""

    pid: int
    host: str
    device: str
    cuda_visible_devices: str | None
    gpu_ids: list[str]
    fingerprint: dict[str, Any]

    def record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "device": self.device,
            "cuda_visible_devices": self.cuda_visible_devices,
        }


class ShardActor:
    """The Ray actor: builds the model once in ``__init__``, then processes whole shards."""

    def __init__(self, spec: ExtractionSpec, index: int, num_threads: int) -> None:
        import torch

        from pipeline.extract.worker import ShardWorker

        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # CUDA_VISIBLE_DEVICES by Ray
        self.worker = ShardWorker(spec, device=device, name=f"actor-{index}")

    def info(self) -> ActorInfo:
        return ActorInfo(
            pid=os.getpid(),
            host=socket.gethostname(),
            device=str(self.worker.extractor.device),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            gpu_ids=[str(g) for g in ray.get_gpu_ids()],
            fingerprint=self.worker.fingerprint,
        )

    def process(self, shard_uri: str, output: str) -> ShardStats:
        return self.worker.process(shard_uri, output)


def create_actors(spec: ExtractionSpec, plan: WorkerPlan) -> list[Any]:
    remote_cls = ray.remote(ShardActor).options(
        num_gpus=1 if plan.use_gpu else 0,
        num_cpus=plan.num_cpus,
        max_restarts=-1,  # Ray restarts a dead actor; the driver re-queues its shard
        max_task_retries=0,
        runtime_env={"env_vars": failpoints.armed_env()} if failpoints.armed_env() else None,
    )
    threads = max(1, int(plan.num_cpus))
    return [remote_cls.remote(spec, i, threads) for i in range(plan.count)]
