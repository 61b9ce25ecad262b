"""The Ray Train worker: DDP training of GLAM + ArcFace on this worker's shard split.

Every worker runs ``train_worker``. It restores the last checkpoint if the run has one, then
steps through the epochs; metrics are combined over the workers every ``log_every`` steps and
reported to Ray Train, and rank 0 checkpoints every ``checkpoint_every`` steps and at each
epoch end. Steps, data order and augmentation are functions of (seed, epoch, rank, step), so a
resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from glam.arcface import ArcFaceHead, arcface_loss
from glam.augment import photometric
from glam.builder import build_glam
from glam.classifier import GlamClassifier
from glam.extract import autocast
from glam.groups import AspectGroups
from glam.recipe import autocast_dtype, build_optimizer, learning_rate, set_learning_rate
from pipeline.datasets.train_manifest import TrainDataset
from pipeline.io.storage import WEIGHTS_STORE
from pipeline.runtime import failpoints
from pipeline.train import progress as train_progress
from pipeline.train.data import Batch, LoaderConfig, SkipCounts, TrainLoader
from pipeline.train.metrics import TrainMetrics, publish
from pipeline.train.spec import TrainJob
from pipeline.train.state import TrainProgress, load_state, restore, save_state

log = logging.getLogger(__name__)


def build_classifier(job: TrainJob, num_classes: int) -> GlamClassifier:
    """GLAM from the job's starting weights plus a seeded ArcFace head, in train mode."""
    glam = build_glam(job.weights, job.glam, seed=job.seed, store=WEIGHTS_STORE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed + 1)
        head = ArcFaceHead(
            glam.config.dim, num_classes, job.train.arcface_margin, job.train.arcface_scale
        )
    return GlamClassifier(glam, head).train()


class Meter:
    """Loss, accuracy and throughput since the last log point, combined over the workers.

    Loss and accuracy accumulate on the device: no host sync per step (a GPU keeps its queue).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss·n, correct
        self.samples = 0
        self.data_wait_s = 0.0
        self.replaced = 0
        self.start = time.perf_counter()

    def update(
        self,
        loss: torch.Tensor,
        cos: torch.Tensor,
        labels: torch.Tensor,
        batch: Batch,
        wait_s: float,
    ) -> None:
        n = labels.shape[0]
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += (cos.argmax(dim=1) == labels).sum()
        self.samples += n
        self.data_wait_s += wait_s
        self.replaced += batch.replaced

    def combine(self, step: int, epoch: int, lr: float, skipped: Mapping[str, int]) -> TrainMetrics:
        """All workers' numbers: sums for loss/accuracy, per-worker images/s, samples skipped
        by reason since the run (re)started (collectives: every worker calls it)."""
        loss_sum, correct = self.sums.tolist()  # waits for this worker's queued steps
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        mine = torch.tensor(
            [
                loss_sum,
                correct,
                self.samples,
                self.replaced,
                self.samples / elapsed,
                self.data_wait_s / elapsed,
            ],
            dtype=torch.float64,
            device=self.device,
        )
        world = dist.get_world_size() if dist.is_initialized() else 1
        gathered = [torch.zeros_like(mine) for _ in range(world)]
        skips: list[Any] = [dict(skipped)]
        if world > 1:
            dist.all_gather(gathered, mine)
            skips = [None] * world
            dist.all_gather_object(skips, dict(skipped))
        else:
            gathered = [mine]
        skipped_total: Counter[str] = Counter()
        for counts in skips:
            skipped_total.update(counts or {})
        rows = torch.stack(gathered).cpu()  # (world, 6)
        total = rows.sum(dim=0)
        samples = max(float(total[2]), 1.0)
        return TrainMetrics(
            step=step,
            epoch=epoch,
            lr=lr,
            loss=float(total[0]) / samples,
            accuracy=float(total[1]) / samples,
            samples=int(total[2]),
            replaced_samples=int(total[3]),
            images_per_s_per_worker=[round(float(r), 3) for r in rows[:, 4]],
            data_wait_fraction=round(float(rows[:, 5].max()), 4),
            skipped=dict(sorted(skipped_total.items())),
        )


def train_worker(payload: dict[str, Any]) -> None:
    """The per-worker training function given to ``TorchTrainer``."""
    job = TrainJob.from_dict(payload["job"])
    dataset = TrainDataset(**payload["dataset"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    threads = int(payload["threads"])
    if device.type == "cpu":
        torch.set_num_threads(threads)
    cfg = job.train
    steps_per_epoch = int(payload["steps_per_epoch"])  # checked by the driver
    total_steps = steps_per_epoch * cfg.epochs

    net = build_classifier(job, dataset.num_classes).to(device)
    net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(net.parameters(), cfg)
    dtype = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    board: str | None = payload.get("progress_board")
    progress = TrainProgress()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress = restore(load_state(folder), net, optimizer, scaler)
        log.debug("rank %d resumed from step %d", rank, progress.step)
        if rank == 0:
            train_progress.post(board, train_progress.Resumed(progress.step))
    model: nn.Module = ray.train.torch.prepare_model(net, move_to_device=False)

    loader = TrainLoader(
        list(dataset.shards),
        rank,
        world,
        job.seed,
        LoaderConfig(
            batch_size=cfg.batch_size // world,
            groups=AspectGroups(cfg.image_size, cfg.aspect_ratios),
            augment=cfg.augment,
            num_classes=dataset.num_classes,
            max_pixels=job.max_pixels,
            shuffle_buffer=job.shuffle_buffer,
            decode_threads=job.decode_threads or threads,
            pin_memory=device.type == "cuda",
        ),
    )
    meta = {"job": payload["job"], "dataset": payload["dataset"], "world": world}
    reporter = Reporter(job, net, optimizer, scaler, device, meta, total_steps, board)
    reporter.skipped = loader.skipped
    while progress.step < total_steps:
        epoch, start = divmod(progress.step, steps_per_epoch)
        t_wait = time.perf_counter()
        for batch in loader.batches(epoch, start, steps_per_epoch):
            wait_s = time.perf_counter() - t_wait
            set_learning_rate(optimizer, learning_rate(cfg, progress.step, total_steps))
            x = photometric(batch.images.to(device, non_blocking=True), batch.factors)
            x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
            y = batch.labels.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits, cos = model(x, y)
            loss = arcface_loss(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            progress.step += 1
            reporter.meter.update(loss, cos, y, batch, wait_s)
            reporter.after_step(progress, epoch, epoch_end=batch.step + 1 == steps_per_epoch)
            if rank == 0 and failpoints.trigger("train_worker_exit_at_step", str(progress.step)):
                log.error("failpoint: rank 0 exits at step %d", progress.step)
                os._exit(1)
            t_wait = time.perf_counter()


class Reporter:
    """Logs and reports metrics every ``log_every`` steps; checkpoints every
    ``checkpoint_every`` steps and at each epoch end. Every worker takes the same decisions
    (reports and metric gathers are collective)."""

    def __init__(
        self,
        job: TrainJob,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        meta: dict[str, Any],
        total_steps: int,
        board: str | None,
    ) -> None:
        self.job, self.net, self.optimizer, self.scaler = job, net, optimizer, scaler
        self.device, self.meta, self.total_steps = device, meta, total_steps
        self.rank = ray.train.get_context().get_world_rank()
        self.board = board  # the driver's progress actor (not saved: it lives for one run)
        self.meter = Meter(device)
        self.skipped = SkipCounts()  # the loader's, set once it exists

    def after_step(self, progress: TrainProgress, epoch: int, epoch_end: bool) -> None:
        step = progress.step
        save = epoch_end or step % self.job.checkpoint_every == 0
        if not (save or step % self.job.log_every == 0):
            return
        lr = self.optimizer.param_groups[0]["lr"]
        point = self.meter.combine(step, epoch, lr, self.skipped.counts)
        progress.history.append(point)
        publish(point, self.rank)
        if self.rank == 0:
            train_progress.post(self.board, train_progress.LogPoint(point))
        reported = point.reported()
        if not save:
            ray.train.report(reported)
            self.meter.reset()  # throughput counts training, not the reports between
            return
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="glam-ckpt-") as folder:
            checkpoint = None
            if self.rank == 0:
                save_state(folder, self.net, self.optimizer, self.scaler, progress, self.meta)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(
                reported, checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:08d}"
            )
        if self.rank == 0:
            seconds = time.perf_counter() - t0
            log.debug("checkpoint at step %d saved in %.1fs", step, seconds)
            train_progress.post(self.board, train_progress.CheckpointSaved(step, seconds))
        self.meter.reset()
