"""Progress of a job over units of work (shards): a bar on a terminal, periodic log lines
otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


class ProgressReporter:
    """Counts finished units (shards) and the images in them; reports as it goes."""

    def __init__(self, total_shards: int, interval_s: float = 30.0) -> None:
        self.total = total_shards
        self.done = 0
        self.images = 0
        self.errors = 0
        self.failed = 0
        self.start = time.monotonic()
        self.interval_s = interval_s
        self._last_log = self.start
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_shards, unit="shard", dynamic_ncols=True)

    def rate(self) -> float:
        return self.images / max(time.monotonic() - self.start, 1e-9)

    def update(self, images: int, errors: int, failed: bool = False) -> None:
        """One more unit done, with ``images`` samples of which ``errors`` gave error rows."""
        self.done += 1
        self.images += images
        self.errors += errors
        self.failed += failed
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(images=self.images, img_s=f"{self.rate():.2f}")
        elif time.monotonic() - self._last_log >= self.interval_s or self.done == self.total:
            self._last_log = time.monotonic()
            log.info(
                "shards %d/%d, images %d (%.2f images/s), error rows %d, failed shards %d",
                self.done,
                self.total,
                self.images,
                self.rate(),
                self.errors,
                self.failed,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
