"""The training driver: plan the workers, run ``TorchTrainer`` with checkpoints in the run
folder, export the final GLAM checkpoint and record the run in ``_train.json``.

Run folder (``--output``)::

    checkpoints/step-00001000/state.pt   Ray Train checkpoints (+ its manager snapshot)
    glam.safetensors                     the trained GLAM, for jobs/extract.py --weights
    _train.json                          config, fingerprint, status, metric history
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer

from glam import IMAGENET, RANDOM
from pipeline.datasets.train_manifest import TrainDataset, load_dataset
from pipeline.io.redact import redact_text
from pipeline.io.storage import exists, filesystem, is_local, join, read_json, write_json_atomic
from pipeline.runtime import failpoints
from pipeline.runtime.cluster import connect
from pipeline.runtime.preflight import preflight
from pipeline.runtime.records import check_fingerprint, now, versions
from pipeline.runtime.resources import plan_workers, shortfall
from pipeline.train import progress as train_progress
from pipeline.train.metrics import TrainMetrics
from pipeline.train.spec import TrainJob, fingerprint
from pipeline.train.state import export_glam, load_state
from pipeline.train.worker import train_worker

log = logging.getLogger(__name__)

SUMMARY_FILE = "_train.json"
MODEL_FILE = "glam.safetensors"
CHECKPOINTS = "checkpoints"
# Training decodes and augments every image of every epoch at up to hundreds of images/s per
# GPU (~12 ms of CPU each at 512 px, BENCHMARKS.md): more cores per GPU than extraction.
MAX_CPUS_PER_GPU_WORKER = 16


class TrainingError(RuntimeError):
    """The run failed; its checkpoints stay, and the same command resumes it."""


@dataclass(frozen=True)
class TrainResult:
    model_uri: str
    model_sha256: str
    steps: int
    skipped: bool  # the output held a finished run of this configuration
    resumed_from: list[int]
    final: TrainMetrics | None  # the last log point


# Ray's wrappers around the error a worker raised: not the cause a user can act on.
_WRAPPERS = ("WorkerGroupError", "TrainingFailedError", "RayTaskError", "ControllerError")
_ERROR_LINE = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def root_cause(error: BaseException) -> str:
    """The innermost ``SomeError: message`` line of a (Ray-wrapped) worker failure, e.g.
    ``WeightsUnavailableError: ImageNet weights … are not cached``; else the first line."""
    text = str(error).strip()
    causes = [
        f"{m.group(1)}: {m.group(2).strip()}"
        for line in text.splitlines()
        if (m := _ERROR_LINE.match(line.strip())) and not m.group(1).startswith(_WRAPPERS)
    ]
    if causes:
        return causes[-1]
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else repr(error)


def check_steps(job: TrainJob, dataset: TrainDataset, world: int) -> int:
    """Steps per epoch; refuses splits that cannot work."""
    if job.train.batch_size % world:
        raise ValueError(
            f"batch size {job.train.batch_size} does not split over {world} workers evenly"
        )
    if len(dataset.shards) < world:
        raise ValueError(f"{len(dataset.shards)} shards cannot feed {world} workers")
    steps = dataset.num_samples // job.train.batch_size
    if steps == 0:
        raise ValueError(
            f"{dataset.num_samples} samples are fewer than one batch of {job.train.batch_size}"
        )
    return steps


def storage(output: str) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's storage for the run folder: a local path, or our fsspec filesystem (same
    endpoint and options as every other read and write) behind pyarrow."""
    fs, path = filesystem(output)
    if is_local(fs):
        return path, None
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def run_training(job: TrainJob) -> TrainResult:
    """Train on the connected (or a new local) Ray cluster; resumes a run folder of the same
    configuration from its last checkpoint."""
    t0 = time.monotonic()
    if not ray.train.is_v2_enabled():
        raise RuntimeError("training needs Ray Train V2: unset RAY_TRAIN_V2_ENABLED=0")
    dataset = load_dataset(job.input, job.num_classes, job.samples_per_epoch)
    connect(job.ray_address)
    weights = [] if job.weights in (RANDOM, IMAGENET) else [job.weights]
    preflight(read=[dataset.shards[0], *weights], write=[job.output])
    plan = plan_workers(
        ray.cluster_resources(), job.workers, job.device, MAX_CPUS_PER_GPU_WORKER, "--workers"
    )
    if job.cpus_per_worker is not None:
        plan = replace(plan, num_cpus=job.cpus_per_worker)
    missing = shortfall(plan, ray.cluster_resources())
    if missing:
        log.warning("%s", missing)
    steps_per_epoch = check_steps(job, dataset, plan.count)
    fp = fingerprint(job, dataset, plan.count)
    summary_uri = join(job.output, SUMMARY_FILE)
    model_uri = join(job.output, MODEL_FILE)
    previous = read_json(summary_uri)
    if previous is not None:
        check_fingerprint(job.output, previous.get("fingerprint", {}), fp)
    if previous is not None and previous.get("status") == "succeeded" and exists(model_uri):
        log.info("%s holds a finished run of this configuration: nothing to do", job.output)
        return TrainResult(
            model_uri,
            previous["model_sha256"],
            previous["steps"],
            True,
            previous.get("resumed_from", []),
            TrainMetrics.from_dict(previous["final"]) if previous.get("final") else None,
        )
    record: dict[str, Any] = {
        "input": job.input,
        "output": job.output,
        "job": job.to_dict(),
        "fingerprint": fp,
        "workers": plan.count,
        "use_gpu": plan.use_gpu,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps_per_epoch * job.train.epochs,
        "versions": versions(),
        "started": (previous or {}).get("started", now()),
        "status": "running",
    }
    write_json_atomic(summary_uri, record)
    log.info(
        "training on %d %s workers: %d samples of %d classes, %d steps/epoch x %d epochs",
        plan.count,
        "GPU" if plan.use_gpu else "CPU",
        dataset.num_samples,
        dataset.num_classes,
        steps_per_epoch,
        job.train.epochs,
    )
    path, fs = storage(job.output)
    board_name = f"glam-train-progress-{uuid.uuid4().hex[:8]}"
    board = train_progress.create_board(board_name)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "job": job.to_dict(),
            "dataset": {
                "shards": list(dataset.shards),
                "num_classes": dataset.num_classes,
                "num_samples": dataset.num_samples,
            },
            "steps_per_epoch": steps_per_epoch,
            "threads": max(1, int(plan.num_cpus)),
            "progress_board": board_name,
        },
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=plan.count,
            use_gpu=plan.use_gpu,
            resources_per_worker={"CPU": plan.num_cpus},
        ),
        # mypy sees Ray's V1 RunConfig; Ray Train V2 (checked above) is what runs.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=CHECKPOINTS,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.keep_checkpoints),
            # Ray Train's per-report INFO lines repeat what the progress monitor logs.
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": failpoints.armed_env()},
        ),
    )
    monitor = train_progress.ProgressMonitor(board, record["total_steps"])
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors in its own types
        message = redact_text(root_cause(e))
        write_json_atomic(summary_uri, {**record, "status": "failed", "error": message[:1000]})
        raise TrainingError(
            f"training failed: {message[:400]}; checkpoints so far are in "
            f"{job.output}/{CHECKPOINTS}: re-running the same command resumes from them"
        ) from e
    finally:
        monitor.close()
        ray.kill(board)
    if result.checkpoint is None:
        raise TrainingError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_state(folder)
    sha = export_glam(state, job.glam, model_uri)
    final = TrainMetrics.from_dict(state["history"][-1]) if state["history"] else None
    record.update(
        status="succeeded",
        finished=now(),
        steps=int(state["step"]),
        resumed_from=state["resumed_from"],
        history=state["history"],
        final=final.to_dict() if final else {},
        model=model_uri,
        model_sha256=sha,
        wall_s=round(time.monotonic() - t0, 1),
    )
    write_json_atomic(summary_uri, record)
    log.info("trained %d steps; GLAM checkpoint %s (sha256 %s)", state["step"], model_uri, sha)
    return TrainResult(model_uri, sha, int(state["step"]), False, state["resumed_from"], final)
