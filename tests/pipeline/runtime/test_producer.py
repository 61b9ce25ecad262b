"""The bounded producer thread: order, bound, errors reach the consumer, early stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pipeline.runtime.producer import Producer


def test_items_arrive_in_order() -> None:
    assert list(Producer(lambda: iter(range(100)), depth=3, name="t")) == list(range(100))


def test_the_producer_runs_at_most_depth_items_ahead() -> None:
    made: list[int] = []
    consumed = threading.Event()

    def source() -> Iterator[int]:
        for i in range(50):
            made.append(i)
            yield i

    producer = Producer(source, depth=4, name="t")
    items = iter(producer)
    assert next(items) == 0
    # Wait (event-driven, not timed) until the producer is blocked on the full queue.
    while producer.depth < 4:
        consumed.wait(0.01)
    # At most: 1 consumed + 4 queued + 1 made and waiting to be queued.
    assert len(made) <= 6
    producer.close()


def test_an_error_in_the_producer_is_raised_in_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise OSError("storage went away")

    items = iter(Producer(source, depth=2, name="t"))
    assert next(items) == 1
    with pytest.raises(OSError, match="storage went away"):
        next(items)


def test_a_consumer_that_stops_early_stops_the_producer_and_runs_its_cleanup() -> None:
    cleaned = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(10**9)
        finally:
            cleaned.set()

    producer = Producer(source, depth=2, name="t")
    for i in producer:
        if i == 3:
            break
    producer.close()
    assert cleaned.is_set()  # the generator was closed on its own thread before close returned
    assert not producer._thread.is_alive()


def test_a_producer_is_iterated_once() -> None:
    producer = Producer(lambda: iter([1]), depth=1, name="t")
    assert list(producer) == [1]
    with pytest.raises(RuntimeError, match="once"):
        list(producer)
