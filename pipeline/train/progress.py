"""Training progress on the driver: rank 0 posts events (log points, resumptions,
checkpoints) to a small Ray actor; a driver thread drains it, logs each event through the
driver's own logging and, on a terminal, moves a progress bar over the steps."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.train.metrics import TrainMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogPoint:
    metrics: TrainMetrics


@dataclass(frozen=True)
class Resumed:
    step: int  # the checkpoint's step


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    seconds: float


TrainEvent = LogPoint | Resumed | CheckpointSaved


class ProgressBoard:
    """Events of a run, in order (a Ray actor with no resources)."""

    def __init__(self) -> None:
        self.events: list[TrainEvent] = []

    def post(self, event: TrainEvent) -> None:
        self.events.append(event)

    def pending(self) -> int:
        return len(self.events)

    def drain(self) -> list[TrainEvent]:
        out, self.events = self.events, []
        return out


def create_board(name: str) -> Any:
    return ray.remote(ProgressBoard).options(name=name, num_cpus=0).remote()


def post(name: str | None, event: TrainEvent) -> None:
    """Post from a worker; never blocks training, never fails it."""
    if name:
        with contextlib.suppress(ValueError):  # no board
            ray.get_actor(name).post.remote(event)


def describe(event: TrainEvent, total_steps: int) -> str:
    if isinstance(event, Resumed):
        return f"resumed from the checkpoint at step {event.step}"
    if isinstance(event, CheckpointSaved):
        return f"checkpoint at step {event.step} saved in {event.seconds:.1f}s"
    m = event.metrics
    rates = m.images_per_s_per_worker
    return (
        f"step {m.step}/{total_steps} epoch {m.epoch}: loss {m.loss:.4f}, "
        f"accuracy {m.accuracy:.3f}, {sum(rates) / len(rates):.2f} images/s per worker "
        f"(min {min(rates):.2f}), data wait {100 * m.data_wait_fraction:.1f}%"
    ) + (f"; skipped {', '.join(f'{k} {n}' for k, n in m.skipped.items())}" if m.skipped else "")


class ProgressMonitor:
    """Drains the board every ``interval_s``: a log line per event, and a tqdm bar on a tty."""

    def __init__(
        self, board: Any, total_steps: int, interval_s: float = 2.0, bar: bool | None = None
    ) -> None:
        self.board, self.total_steps, self.interval_s = board, total_steps, interval_s
        self.bar: Any = None
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="train-progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        try:
            events = ray.get(self.board.drain.remote(), timeout=30)
        except Exception as e:  # progress is best effort
            log.debug("progress board unavailable: %s", e)
            return
        for event in events:
            line = describe(event, self.total_steps)
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
                if isinstance(event, LogPoint):
                    self.bar.n = event.metrics.step
                    self.bar.refresh()
            else:
                log.info("%s", line)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join()
        self.poll()
        if self.bar is not None:
            self.bar.close()
