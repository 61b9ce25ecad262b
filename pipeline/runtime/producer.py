"""A bounded producer thread: items made in the background, consumed in order.

Serves the extraction worker's shard reader (read + decode ahead of the model) and the training
loader (batch plans submitted ahead to the decode pool). The queue bounds memory; an error in
the producer reaches the consumer as the same exception; a consumer that stops early (break,
error, close) stops the producer and joins its thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()
# How often a producer blocked on a full queue looks whether the consumer has gone.
_POLL_S = 0.5


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Producer(Generic[T]):
    """Iterate ``source()`` on a thread named ``name``, at most ``depth`` items ahead."""

    def __init__(self, source: Callable[[], Iterable[T]], depth: int, name: str) -> None:
        if depth <= 0:
            raise ValueError(f"producer depth must be positive, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    @property
    def depth(self) -> int:
        """Items made and not yet consumed."""
        return self._queue.qsize()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        items = iter(self._source())
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failure(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's own clean-up runs on this thread, now
                close()

    def start(self) -> None:
        """Start producing now, before the first item is asked for (safe to call again)."""
        if self._thread.ident is None and not self._stop.is_set():
            self._thread.start()

    def __iter__(self) -> Iterator[T]:
        if self._started:
            raise RuntimeError("a Producer is iterated once")
        self._started = True
        self.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer and wait for its thread (safe to call more than once)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)

    def __enter__(self) -> Producer[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
