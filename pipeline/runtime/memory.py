"""Resident memory of processes, from /proc (Linux): one process, this process's peak, a process
tree (a driver and its Ray workers), and the peak of a tree sampled in a background thread."""

from __future__ import annotations

import os
import resource
import threading


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process) in bytes; 0 where /proc is absent."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * _page_size()
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of ``root`` and its descendants."""
    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * _page_size()
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(c for c, pp in parent.items() if pp == pid)
    return total


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants (e.g. Ray workers),
    sampled every ``interval_s`` while inside the ``with`` block."""

    def __init__(self, interval_s: float = 0.1, root: int | None = None) -> None:
        self.peak = 0
        self.interval_s = interval_s
        self.root = root or os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.root))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.root))
