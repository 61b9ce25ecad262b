"""Training throughput: images/s per worker of the whole Ray Train job against the bare
training step, in one run.

Generates a GLDv2-style dataset, prepares shards with pipeline.datasets.gldv2, measures the bare
training step (forward + ArcFace + backward + SGD) on pre-decoded batches with the threads one
worker gets, then runs the real job (TorchTrainer, DDP over gloo, streaming reader, group-size
batches, augmentation on decode threads, checkpoints) and prints per-worker images/s, the
ratio, and the bare step's MFU against the machine's matmul peak.

    .venv/bin/python bench/bench_train.py [--backbone resnet18 --image-size 128 --precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
import torch

from bench.common import count_gflop, matmul_peak_gflops
from glam.arcface import arcface_loss
from glam.config import GlamConfig
from glam.extract import autocast
from glam.recipe import AugmentConfig, TrainConfig, autocast_dtype, build_optimizer
from pipeline.datasets.gldv2 import PrepareSpec, prepare
from pipeline.datasets.synthetic import write_gldv2_miniature
from pipeline.train.driver import run_training
from pipeline.train.spec import TrainJob
from pipeline.train.worker import build_classifier


def bare_step_ips(
    job: TrainJob, classes: int, batch: int, threads: int, device: torch.device
) -> tuple[float, float]:
    """(images/s, GFLOP per image) of the bare training step at the job's square size."""
    torch.set_num_threads(threads)
    net = build_classifier(job, classes).to(device).to(memory_format=torch.channels_last)
    opt = build_optimizer(net.parameters(), job.train)
    dtype = autocast_dtype(job.train, device)
    s = job.train.image_size
    x = torch.randn(batch, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with autocast(device, dtype):
            logits, _ = net(x, y)
        loss = arcface_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    gflop = count_gflop(step) / batch
    for _ in range(2):
        step()
    times = []
    for _ in range(5):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times), gflop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="global (split over 2 workers)")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--workers", type=int, default=None, help="default: GPUs, else 2 (CPU)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    gpus = torch.cuda.device_count()
    device = torch.device("cuda" if gpus else "cpu")
    workers, cpus = args.workers or gpus or 2, os.cpu_count() or 2
    threads = max(1, cpus // workers)

    root = tempfile.mkdtemp(prefix="glam-bench-train-")
    write_gldv2_miniature(f"{root}/raw", classes=args.classes, per_class=args.per_class)
    spec = PrepareSpec(f"{root}/raw/train_clean.csv", f"{root}/raw/train", f"{root}/shards", 32)
    manifest = prepare(spec)
    n_shards = len(manifest["shards"])  # type: ignore[arg-type]
    small = args.backbone in ("resnet18", "resnet34")
    glam = GlamConfig(
        backbone=args.backbone, dim=64 if small else 512, reduced_channels=64 if small else 256
    )
    recipe = TrainConfig(
        batch_size=args.batch_size,
        epochs=args.epochs,
        image_size=args.image_size,
        precision=args.precision,
        lr=0.002,
        augment=AugmentConfig(),
    )
    job = TrainJob(
        input=f"{root}/shards/train-{{000000..{n_shards - 1:06d}}}.tar",
        output=f"{root}/run",
        train=recipe,
        glam=glam,
        weights="random",
        workers=workers,
        log_every=4,
        checkpoint_every=10_000,
        shuffle_buffer=64,
    )
    local_batch = args.batch_size // workers
    bare, gflop = bare_step_ips(job, args.classes, local_batch, threads, device)
    torch.set_num_threads(cpus)
    peak_share = None
    if device.type == "cpu":  # MFU against one worker's share of the machine's matmul peak
        peak = matmul_peak_gflops(torch.bfloat16 if args.precision == "bf16" else torch.float32)
        peak_share = peak * threads / cpus

    ray.init(
        address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False
    )
    t0 = time.perf_counter()
    run_training(job)
    wall = time.perf_counter() - t0
    ray.shutdown()
    record = json.loads(Path(f"{root}/run/_train.json").read_text())
    shutil.rmtree(root)
    history = record["history"]
    # Log windows after the first (cold start: oneDNN kernels, shuffle buffer fill).
    warm = history[1:] or history
    rates = [r for h in warm for r in h["images_per_s_per_worker"]]
    per_worker = statistics.median(rates)
    waits = [h["data_wait_fraction"] for h in warm]
    images = record["steps"] * args.batch_size
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "image_size": args.image_size,
                "precision": args.precision,
                "global_batch": args.batch_size,
                "workers": workers,
                "threads_per_worker": threads,
                "train_gflop_per_image": round(gflop, 2),
                "bare_step_images_per_s": round(bare, 2),
                "device": torch.cuda.get_device_name() if gpus else "cpu",
                "bare_step_mfu": round(bare * gflop / peak_share, 3) if peak_share else None,
                "job_images_per_s_per_worker": round(per_worker, 2),
                "job_vs_bare": round(per_worker / bare, 3),
                "data_wait_fraction_max": max(waits) if waits else None,
                "steps": record["steps"],
                "whole_job_images_per_s": round(images / wall, 2),
                "whole_job_wall_s": round(wall, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
