"""Progress of a job over units of work (shards), counted in images as the work goes: workers
post what they have done to a ``ProgressBoard`` (a Ray actor without resources); the driver
reads it and a ``ProgressReporter`` shows a bar on a terminal, or a log line every 30 s
otherwise, with shards, images, images/s and an ETA."""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitProgress:
    """A worker's progress on one unit it is working on."""

    unit: str  # e.g. the shard id
    dispatch: int  # the driver's hand-out number of the unit; a later hand-out wins
    images: int  # images done so far in this hand-out (descriptors and error rows)
    fraction: float | None  # share of the unit's bytes read so far; None: unknown


class ProgressBoard:
    """The latest progress of every unit in flight (the driver drops a unit when its result
    arrives or its worker dies; reports from older hand-outs are ignored).

    Bounded whatever the number of units a job has (a million shards): it holds the units in
    flight, and remembers a dropped hand-out only for ``forget_after_s``, the time a late
    report of it could still arrive (reports are sent every second while a unit runs). A unit
    that has not reported for that long (a stale report of a long-dropped hand-out, or a
    worker that hangs) leaves the board too; the driver still knows what is in flight."""

    def __init__(
        self, forget_after_s: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.forget_after_s, self._clock = forget_after_s, clock
        self._units: dict[str, tuple[UnitProgress, float]] = {}  # with when it last reported
        # The oldest hand-out still accepted per recently dropped unit, oldest drop first.
        self._next_dispatch: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def report(self, progress: UnitProgress) -> None:
        accepted = self._next_dispatch.get(progress.unit, (0, 0.0))[0]
        if progress.dispatch < accepted:
            return
        current = self._units.get(progress.unit)
        if current is None or progress.dispatch >= current[0].dispatch:
            self._units[progress.unit] = (progress, self._clock())

    def drop(self, unit: str, dispatch: int) -> None:
        """Hand-out ``dispatch`` of ``unit`` is over (done, failed or its worker died)."""
        self._units.pop(unit, None)
        accepted = self._next_dispatch.pop(unit, (0, 0.0))[0]
        now = self._clock()
        self._next_dispatch[unit] = (max(accepted, dispatch + 1), now)
        while self._next_dispatch:
            oldest, (_, dropped_at) = next(iter(self._next_dispatch.items()))
            if now - dropped_at < self.forget_after_s:
                break
            del self._next_dispatch[oldest]

    def snapshot(self) -> list[UnitProgress]:
        now = self._clock()
        silent = [u for u, (_, at) in self._units.items() if now - at >= self.forget_after_s]
        for unit in silent:
            del self._units[unit]
        return [progress for progress, _ in self._units.values()]

    def held(self) -> tuple[int, int]:
        """(units shown, dropped hand-outs remembered): what the board's memory grows with."""
        return len(self._units), len(self._next_dispatch)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressReporter:
    """Counts finished units (shards) and the images in them, plus the images of the units in
    flight; reports as it goes: a tqdm bar on a terminal, otherwise a log line at most every
    ``interval_s`` (and when the last unit finishes)."""

    def __init__(
        self,
        total_shards: int,
        interval_s: float = 30.0,
        bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total_shards
        self.done = 0
        self.images = 0  # in finished units
        self.errors = 0
        self.failed = 0
        self.interval_s = interval_s
        self._clock = clock
        self.start = clock()
        self._last_log = self.start
        self._in_flight: Sequence[UnitProgress] = ()
        self._bar: Any = None
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_shards,
                unit="shard",
                dynamic_ncols=True,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.1f}/{total} shards [{elapsed}<{remaining}{postfix}]",
            )

    def images_done(self) -> int:
        """Images of finished units plus those done so far in units in flight."""
        return self.images + sum(p.images for p in self._in_flight)

    def rate(self) -> float:
        return self.images_done() / max(self._clock() - self.start, 1e-9)

    def work_done(self) -> float:
        """Units done, counting a unit in flight by the share of it read (or, when its size is
        unknown, by its images against the finished units' mean)."""
        per_unit = self.images / self.done if self.done else None
        work = float(self.done)
        for p in self._in_flight:
            if p.fraction is not None:
                work += p.fraction
            elif per_unit:
                work += min(1.0, p.images / per_unit)
        return min(work, float(self.total))

    def eta_s(self) -> float | None:
        work = self.work_done()
        elapsed = self._clock() - self.start
        if work <= 0 or elapsed <= 0:
            return None
        return (self.total - work) * elapsed / work

    def update(self, images: int, errors: int, failed: bool = False, unit: str = "") -> None:
        """One more unit done, with ``images`` samples of which ``errors`` gave error rows;
        ``unit`` leaves the units in flight."""
        self._in_flight = tuple(p for p in self._in_flight if p.unit != unit)
        self.done += 1
        self.images += images
        self.errors += errors
        self.failed += failed
        self._show(final=self.done == self.total)

    def in_flight(self, units: Sequence[UnitProgress]) -> None:
        """The progress of the units in flight now (replaces the previous snapshot)."""
        self._in_flight = tuple(units)
        self._show()

    def line(self) -> str:
        return (
            f"shards {self.done}/{self.total} ({self.work_done():.1f} with work in progress), "
            f"images {self.images_done()} ({self.rate():.2f} images/s), "
            f"ETA {format_eta(self.eta_s())}, error rows {self.errors}, "
            f"failed shards {self.failed}"
        )

    def _show(self, final: bool = False) -> None:
        if self._bar is not None:
            self._bar.n = self.work_done()
            self._bar.set_postfix(images=self.images_done(), img_s=f"{self.rate():.2f}")
            return
        now = self._clock()
        if final or now - self._last_log >= self.interval_s:
            self._last_log = now
            log.info("%s", self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
