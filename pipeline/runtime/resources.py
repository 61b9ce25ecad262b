"""Resource planning shared by the extraction actors and the Ray Train workers: how many
workers, GPU or CPU, and how many CPUs each. Decided before any worker exists: a GPU request on
a GPU-less cluster would wait forever."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Device = Literal["auto", "gpu", "cpu"]
DEVICES: tuple[Device, ...] = ("auto", "gpu", "cpu")
# Cores per CPU worker when the count is not given: a few intra-op threads each.
CPUS_PER_CPU_WORKER = 4


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    use_gpu: bool
    num_cpus: float  # CPUs each worker holds (decode threads, intra-op threads)


def plan_workers(
    resources: dict[str, float],
    count: int | None,
    device: str = "auto",
    max_cpus_per_gpu: int = 4,
    count_flag: str = "--actors",
) -> WorkerPlan:
    """The worker plan for a cluster showing ``resources`` (``ray.cluster_resources()``).

    ``auto``: one GPU worker per GPU the cluster shows, else CPU workers. ``gpu``: GPU workers
    even when none is up yet (an autoscaling cluster starting from zero GPU nodes; needs
    ``count``). ``cpu``: CPU workers. ``count`` overrides the number; ``count_flag`` is the
    command-line flag that sets it, named in errors.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be auto, gpu or cpu, got {device!r}")
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 0))
    if device == "gpu" or (device == "auto" and gpus > 0):
        n = count or gpus
        if n == 0:
            raise ValueError(
                f"--device gpu on a cluster with no GPU up yet needs {count_flag} N "
                "(the autoscaler starts the GPU workers)"
            )
        if device == "auto" and n > gpus:
            raise ValueError(
                f"{count_flag} {n} needs {n} GPUs; the cluster has {gpus} "
                "(use --device gpu on an autoscaling cluster)"
            )
        return WorkerPlan(n, True, max(1.0, _cpus_each(cpus, n, max_cpus_per_gpu)))
    n = count or max(1, int(cpus // CPUS_PER_CPU_WORKER))
    return WorkerPlan(n, False, _cpus_each(max(cpus, 1.0), n, None))


def _cpus_each(cpus: float, count: int, cap: int | None) -> float:
    each = cpus / count
    each = float(int(each)) if each >= 1 else round(each, 4)
    return min(each, cap) if cap else each


def shortfall(plan: WorkerPlan, resources: dict[str, float]) -> str:
    """What the cluster lacks today for ``plan`` (empty when it can start every worker): the
    workers then wait for an autoscaler to add nodes, or forever on a fixed cluster."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    if plan.use_gpu and gpus < plan.count:
        return (
            f"{plan.count} GPU workers are asked for and the cluster has {gpus} GPU(s) now: they "
            "start when an autoscaler adds GPU nodes (on a cluster without one they never do: "
            "use --device cpu, or fewer workers)"
        )
    if plan.count * plan.num_cpus > cpus:
        return (
            f"{plan.count} workers of {plan.num_cpus:g} CPUs are asked for and the cluster has "
            f"{cpus:g} CPUs now: some start only when others finish or nodes are added"
        )
    return ""
