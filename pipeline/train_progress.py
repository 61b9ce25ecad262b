"""Training progress on the driver's terminal: rank 0 posts each log point to a small Ray
actor, and a driver thread shows it as a progress bar (log lines come from the workers)."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

import ray


class ProgressBoard:
    """The latest log point of a run (a Ray actor with no resources)."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def post(self, summary: dict[str, Any]) -> None:
        self.latest = summary

    def read(self) -> dict[str, Any]:
        return self.latest


def create_board(name: str) -> Any:
    return ray.remote(ProgressBoard).options(name=name, num_cpus=0).remote()


def post(name: str, summary: dict[str, Any]) -> None:
    """Post from a worker; never blocks training, never fails it."""
    with contextlib.suppress(ValueError):  # no board: the driver has no terminal
        ray.get_actor(name).post.remote(summary)


class ProgressBar:
    """A tqdm bar over optimiser steps, fed from the board every ``interval_s``."""

    def __init__(self, board: Any, total_steps: int, interval_s: float = 2.0) -> None:
        from tqdm import tqdm

        self.board, self.interval_s = board, interval_s
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="train-progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                latest = ray.get(self.board.read.remote(), timeout=self.interval_s)
            except Exception:  # the board is best effort
                continue
            if latest:
                self.bar.n = int(latest["step"])
                rates = latest["images_per_s_per_worker"]
                self.bar.set_postfix(
                    loss=f"{latest['loss']:.3f}",
                    acc=f"{latest['accuracy']:.3f}",
                    img_s_worker=f"{sum(rates) / len(rates):.1f}",
                )

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join()
        self.bar.close()
