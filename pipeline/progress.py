"""Progress: a bar on a terminal, periodic log lines otherwise, and a final summary."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


class Progress:
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

    def update(self, stats: dict[str, Any]) -> None:
        self.done += 1
        self.images += int(stats.get("samples", 0))
        self.errors += int(stats.get("errors", 0))
        self.failed += stats.get("status") == "failed"
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
