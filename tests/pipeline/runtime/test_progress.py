"""Progress in images: the board keeps the latest hand-out of each unit; the reporter's log
lines move during a unit and show images, images/s and an ETA (a fake clock, no sleeps)."""

from __future__ import annotations

import logging

import pytest

from pipeline.runtime.progress import ProgressBoard, ProgressReporter, UnitProgress, format_eta


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_board_keeps_the_latest_hand_out_of_each_unit() -> None:
    board = ProgressBoard()
    board.report(UnitProgress("a", 1, 10, 0.1))
    board.report(UnitProgress("a", 1, 30, 0.3))
    board.report(UnitProgress("b", 1, 5, None))
    assert sorted((p.unit, p.images) for p in board.snapshot()) == [("a", 30), ("b", 5)]
    board.drop("a", 1)  # its worker died: hand-out 1 is over
    board.report(UnitProgress("a", 1, 40, 0.4))  # a late report of the dead hand-out
    assert [p.unit for p in board.snapshot()] == ["b"]
    board.report(UnitProgress("a", 2, 3, 0.05))  # the shard handed out again
    board.report(UnitProgress("a", 1, 50, 0.5))
    assert {p.unit: p.images for p in board.snapshot()} == {"a": 3, "b": 5}


def test_log_lines_move_during_a_shard_with_images_rate_and_eta(caplog) -> None:
    clock = Clock()
    reporter = ProgressReporter(4, interval_s=30.0, bar=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.runtime.progress"):
        clock.now += 10
        reporter.in_flight([UnitProgress("000000", 1, 100, 0.25)])
        assert not caplog.records  # less than 30 s since the start
        clock.now += 30  # 40 s in: a quarter of one shard of four, 200 images
        reporter.in_flight([UnitProgress("000000", 1, 200, 0.5)])
        (record,) = caplog.records
    line = record.getMessage()
    assert "shards 0/4 (0.5 with work in progress)" in line
    assert "images 200 (5.00 images/s)" in line
    assert "ETA 0:04:40" in line  # 3.5 shards left at 0.5 shard per 40 s
    assert reporter.eta_s() == pytest.approx(280.0)


def test_finished_shards_count_once_and_the_last_one_always_logs(caplog) -> None:
    clock = Clock()
    reporter = ProgressReporter(2, interval_s=30.0, bar=False, clock=clock)
    reporter.in_flight([UnitProgress("000000", 1, 50, None), UnitProgress("000001", 1, 20, None)])
    clock.now += 5
    reporter.update(60, 2, unit="000000")  # committed: its in-flight count goes
    assert reporter.images_done() == 80
    # Size unknown: the shard in flight counts by its images against the finished mean.
    assert reporter.work_done() == pytest.approx(1 + 20 / 60)
    with caplog.at_level(logging.INFO, logger="pipeline.runtime.progress"):
        reporter.update(70, 1, unit="000001")
    (record,) = caplog.records
    assert "shards 2/2" in record.getMessage() and "images 130" in record.getMessage()
    assert "ETA 0:00:00" in record.getMessage() and "error rows 3" in record.getMessage()


def test_eta_is_unknown_before_any_work() -> None:
    reporter = ProgressReporter(3, bar=False, clock=Clock())
    assert reporter.eta_s() is None and format_eta(None) == "?"
    assert format_eta(3725.4) == "1:02:05"


def test_the_board_stays_bounded_over_a_million_units() -> None:
    """A million shards handed out 1,000 at a time: the board holds the units in flight and
    the hand-outs dropped within ``forget_after_s``, never one entry per shard of the job."""
    clock = Clock()
    board = ProgressBoard(forget_after_s=600.0, clock=clock)
    most = (0, 0)
    for start in range(0, 1_000_000, 1000):
        units = [f"{i:07d}" for i in range(start, start + 1000)]
        for unit in units:
            board.report(UnitProgress(unit, 1, 5, 0.5))
        clock.now += 60  # a minute per shard on 1,000 workers
        for unit in units:
            board.drop(unit, 1)
        held = board.held()
        most = (max(most[0], held[0]), max(most[1], held[1]))
    assert most[0] <= 1000 and most[1] <= 11_000, most
    board.report(UnitProgress("0999999", 1, 9, 0.9))  # a late report, within the window
    assert board.snapshot() == []


def test_a_unit_silent_for_the_window_leaves_the_board() -> None:
    clock = Clock()
    board = ProgressBoard(forget_after_s=600.0, clock=clock)
    board.report(UnitProgress("a", 1, 5, 0.5))
    clock.now += 599
    board.report(UnitProgress("b", 1, 5, 0.5))
    assert {p.unit for p in board.snapshot()} == {"a", "b"}
    clock.now += 1  # "a" has not reported for 600 s
    assert {p.unit for p in board.snapshot()} == {"b"}
