"""The driver's view of training: rank 0 posts events to a Ray actor; the driver logs each
one through its own logging (and moves a bar on a terminal)."""

from __future__ import annotations

import logging
import uuid

import ray

from pipeline.train.metrics import TrainMetrics
from pipeline.train.progress import (
    CheckpointSaved,
    LogPoint,
    ProgressMonitor,
    Resumed,
    create_board,
    post,
)
from tests.support.waiting import wait_until

POINT = LogPoint(
    TrainMetrics(
        step=24, epoch=0, lr=0.001, loss=3.5, accuracy=0.25, samples=96, replaced_samples=0,
        images_per_s_per_worker=[4.0, 6.0], data_wait_fraction=0.01,
    )
)  # fmt: skip


def test_posted_events_become_driver_log_lines_and_bar_steps(ray_local: str, caplog) -> None:
    name = f"board-{uuid.uuid4().hex[:8]}"
    board = create_board(name)
    post("no-such-board", POINT)  # a missing board is not an error
    post(None, POINT)
    for event in (Resumed(16), POINT, CheckpointSaved(24, 1.25)):
        post(name, event)
    wait_until(lambda: ray.get(board.pending.remote()) == 3, 30, "three events")
    with caplog.at_level(logging.INFO, logger="pipeline.train.progress"):
        ProgressMonitor(board, total_steps=40, interval_s=3600, bar=False).close()
    assert [r.getMessage() for r in caplog.records] == [
        "resumed from the checkpoint at step 16",
        "step 24/40 epoch 0: loss 3.5000, accuracy 0.250, 5.00 images/s per worker (min 4.00), "
        "data wait 1.0%",
        "checkpoint at step 24 saved in 1.2s",
    ]
    post(name, POINT)
    wait_until(lambda: ray.get(board.pending.remote()) == 1, 30, "one event")
    monitor = ProgressMonitor(board, total_steps=40, interval_s=3600, bar=True)
    monitor.close()
    assert monitor.bar.n == 24
    ray.kill(board)
