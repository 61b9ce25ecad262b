"""The driver's training progress bar, fed by rank 0 through a Ray actor."""

from __future__ import annotations

import uuid

import ray

from pipeline.train_progress import ProgressBar, create_board, post

from .conftest import wait_until


def test_posted_log_points_drive_the_bar(ray_local: str) -> None:
    name = f"board-{uuid.uuid4().hex[:8]}"
    board = create_board(name)
    post("no-such-board", {"step": 1})  # a missing board is not an error
    bar = ProgressBar(board, total_steps=40, interval_s=0.05)
    try:
        summary = {"step": 24, "loss": 3.5, "accuracy": 0.25, "images_per_s_per_worker": [4, 6]}
        post(name, summary)
        wait_until(lambda: bar.bar.n == 24, 30, "the bar to show step 24")
        assert ray.get(board.read.remote()) == summary
        assert bar.bar.postfix is not None and "img_s_worker=5.0" in bar.bar.postfix
    finally:
        bar.close()
        ray.kill(board)
