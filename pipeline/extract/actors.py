"""Ray actors around ``ShardWorker``: one per GPU (``num_gpus=1``), or CPU actors on a cluster
without GPUs, as ``pipeline.runtime.resources`` plans them. An actor is threaded: it holds
``shards_per_actor`` shards at once (one computing, the next reading and decoding, a finished
one being written), and posts its progress to a ``ProgressBoard``."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.extract.spec import ExtractionSpec
from pipeline.extract.stats import ShardStats
from pipeline.runtime import failpoints
from pipeline.runtime.lease import LeaseFence
from pipeline.runtime.progress import ProgressBoard, UnitProgress
from pipeline.runtime.resources import WorkerPlan

# CPU cores a GPU actor takes when no GPU node is up yet to say how many it has per GPU.
MAX_CPUS_PER_GPU_ACTOR = 4


@dataclass(frozen=True)
class ActorInfo:
    """Where an actor runs and what it computes with (recorded in ``_job.json``)."""

    pid: int
    host: str
    device: str
    cuda_visible_devices: str | None
    gpu_ids: list[str]
    fingerprint: dict[str, Any]  # with the precision this actor resolved
    decode: str  # cpu | gpu, as resolved on this actor
    decode_workers: int
    num_cpus: float

    def record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "device": self.device,
            "cuda_visible_devices": self.cuda_visible_devices,
            "precision": self.fingerprint["precision"],
            "decode": self.decode,
            "decode_workers": self.decode_workers,
            "num_cpus": self.num_cpus,
        }


class ShardActor:
    """The Ray actor: builds the model once in ``__init__``, then processes whole shards."""

    def __init__(
        self, spec: ExtractionSpec, index: int, num_cpus: float, board: str | None = None
    ) -> None:
        """``board``: the name of the job's progress board (a name, not a handle: a handle
        among an actor's constructor arguments sits in the object store, where Ray cannot
        always find it again to restart the actor, ray-project/ray#53727)."""
        import torch

        from pipeline.extract.worker import ShardWorker

        delay = failpoints.armed("actor_restart_delay_s")
        if delay and ray.get_runtime_context().was_current_actor_reconstructed:
            time.sleep(float(delay))  # fault injection: a restart slower than any retry

        cpus = max(1, int(num_cpus))
        torch.set_num_threads(cpus)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # CUDA_VISIBLE_DEVICES by Ray
        self.num_cpus = num_cpus

        report: Callable[[UnitProgress], None] | None = None
        if board is not None:
            handle = ray.get_actor(board)

            def report(progress: UnitProgress) -> None:
                handle.report.remote(progress)  # fire and forget: never waits or fails a shard

        self.worker = ShardWorker(
            spec,
            device=device,
            name=f"actor-{index}",
            cpus=cpus,
            progress=report,
        )

    def info(self) -> ActorInfo:
        return ActorInfo(
            pid=os.getpid(),
            host=socket.gethostname(),
            device=str(self.worker.extractor.device),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            gpu_ids=[str(g) for g in ray.get_gpu_ids()],
            fingerprint=self.worker.fingerprint,
            decode=self.worker.decode,
            decode_workers=self.worker.pool.workers,
            num_cpus=self.num_cpus,
        )

    def process(
        self, shard_uri: str, output: str, dispatch: int = 0, fence: LeaseFence | None = None
    ) -> ShardStats:
        return self.worker.process(shard_uri, output, dispatch, fence)


def cpus_per_gpu(nodes: list[dict[str, Any]]) -> int | None:
    """The fewest CPUs per GPU on any alive GPU node (``ray.nodes()``); None: no GPU node."""
    shares = [
        int(n["Resources"].get("CPU", 0) // n["Resources"]["GPU"])
        for n in nodes
        if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0
    ]
    return max(1, min(shares)) if shares else None


def create_board() -> tuple[Any, str]:
    """The job's progress board and its name (unique to this run), which actors look up."""
    name = f"glam-extract-progress-{uuid.uuid4().hex[:12]}"
    return ray.remote(ProgressBoard).options(num_cpus=0, name=name).remote(), name


def create_actors(
    spec: ExtractionSpec, plan: WorkerPlan, board: str | None, shards_per_actor: int
) -> list[Any]:
    remote_cls = ray.remote(ShardActor).options(
        num_gpus=1 if plan.use_gpu else 0,
        num_cpus=plan.num_cpus,
        max_restarts=-1,  # Ray restarts a dead actor; the driver re-queues its shards
        max_task_retries=0,
        max_concurrency=shards_per_actor + 1,  # the shards in flight, and info()
        runtime_env={"env_vars": failpoints.armed_env()} if failpoints.armed_env() else None,
    )
    return [remote_cls.remote(spec, i, plan.num_cpus, board) for i in range(plan.count)]
