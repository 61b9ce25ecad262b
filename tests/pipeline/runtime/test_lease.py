"""Leases on outputs, on a local folder and on the S3 protocol: one holder at a time (also
when many try at once), the holder named to the others, stale leases taken over and the old
holder told, released leases free."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from pipeline.io.storage import join, read_bytes, write_bytes_atomic
from pipeline.runtime.lease import LEASE_FILE, Lease, LeaseHeldError, LeaseLostError, LeaseRecord


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out"


def lease(output: str, job: str = "extract") -> Lease:
    return Lease(output, job, ttl_s=600, heartbeat_s=300)  # the heartbeat thread stays idle


def test_one_holder_at_a_time_and_the_holder_is_named(output: str) -> None:
    first = lease(output, "build_index").acquire()
    try:
        with pytest.raises(LeaseHeldError) as e:
            lease(output).acquire()
        message = str(e.value)
        assert f"{output} is being written by another run: build_index (pid" in message
        assert first.record.host in message and "last heartbeat" in message
    finally:
        first.release()
    with lease(output):  # free again once released
        pass


def test_many_runs_starting_together_get_exactly_one_lease(output: str) -> None:
    results: list[str] = []
    start = threading.Barrier(6)

    def run() -> None:
        start.wait()
        try:
            held = lease(output).acquire()
            results.append("held")
            held.check()
        except LeaseHeldError:
            results.append("refused")

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] + ["refused"] * 5


def test_a_stale_lease_is_taken_over_and_the_old_holder_learns_it(output: str, caplog) -> None:
    old = lease(output).acquire()
    record = LeaseRecord.from_bytes(read_bytes(join(output, LEASE_FILE)))
    stale = json.loads(record.to_bytes())
    stale["heartbeat_at"] = time.time() - 3600  # its run stopped an hour ago
    write_bytes_atomic(join(output, LEASE_FILE), json.dumps(stale).encode())
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime.lease"):
        new = lease(output, "build_index").acquire()
    assert "took over the lease on" in caplog.text and "last heartbeat 3600s ago" in caplog.text
    assert "its heartbeat is older than 600s" in caplog.text
    with pytest.raises(LeaseLostError, match="taken over by build_index"):
        old.renew()  # the old holder's next heartbeat
    with pytest.raises(LeaseLostError):
        old.check()
    new.renew()  # the new holder's heartbeats go on
    assert LeaseRecord.from_bytes(read_bytes(join(output, LEASE_FILE))).token == new.record.token
    old.release()  # leaves the new holder's record alone
    new.check()
    new.release()


def test_heartbeats_advance_and_notes_are_written(output: str) -> None:
    held = lease(output).acquire()
    first = LeaseRecord.from_bytes(read_bytes(join(output, LEASE_FILE))).heartbeat_at
    held.note("building version v2")
    now = LeaseRecord.from_bytes(read_bytes(join(output, LEASE_FILE)))
    assert now.heartbeat_at >= first and now.detail == "building version v2"
    held.release()


def test_bad_settings_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="TTL"):
        Lease(str(tmp_path), "x", ttl_s=10, heartbeat_s=20)


def test_a_lease_whose_process_on_this_host_is_gone_is_taken_over_at_once(
    output: str, caplog
) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    held = lease(output).acquire()
    record = json.loads(read_bytes(join(output, LEASE_FILE)))
    record.update(pid=int(gone.stdout), started="1")  # fresh heartbeat, dead process
    write_bytes_atomic(join(output, LEASE_FILE), json.dumps(record).encode())
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime.lease"):
        lease(output).acquire().release()
    assert "its process on this host is gone" in caplog.text
    held._stop.set()


def test_a_live_process_of_this_host_keeps_its_lease(output: str) -> None:
    held = lease(output).acquire()  # this very process: alive, same start time
    with pytest.raises(LeaseHeldError):
        lease(output).acquire()
    held.release()


def test_a_holder_in_another_pid_namespace_of_this_host_keeps_its_lease(tmp_path) -> None:
    """Containers share a hostname but not a PID namespace: a pid that is gone here may run
    there (``unshare --pid``), so only the heartbeat can tell; a record that names no
    namespace (an older one) is judged the same way."""
    import subprocess
    import sys

    output = str(tmp_path / "out")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    held = lease(output).acquire()
    record = json.loads(read_bytes(join(output, LEASE_FILE)))
    for namespace in ("pid:[1]", ""):
        record.update(pid=int(gone.stdout), pid_namespace=namespace)
        write_bytes_atomic(join(output, LEASE_FILE), json.dumps(record).encode())
        with pytest.raises(LeaseHeldError):
            lease(output).acquire()
    held._stop.set()


class Clocks:
    """A wall and a monotonic clock the test moves (a freeze moves one, not the other)."""

    def __init__(self) -> None:
        self.wall, self.mono = time.time(), 1000.0

    def advance(self, wall: float, mono: float | None = None) -> None:
        self.wall += wall
        self.mono += wall if mono is None else mono


def test_a_fence_passes_while_its_run_holds_the_lease_and_reads_it_rarely(output: str) -> None:
    from pipeline.runtime.lease import FenceCheck

    clocks = Clocks()
    with lease(output) as held:
        fence = held.fence()
        assert fence.token == held.record.token and fence.margin_s == 200  # a third of 600
        check = FenceCheck(fence, lambda: clocks.wall, lambda: clocks.mono)
        check.check()
        # Trusted until heartbeat + TTL - margin: the record is not read again meanwhile.
        held_uri = join(output, LEASE_FILE)
        write_bytes_atomic(held_uri, b"{not json")  # a read now would fail the check
        clocks.advance(300)
        check.check()


@pytest.mark.parametrize("freeze", ["wall", "monotonic"])
def test_a_fence_fails_once_the_lease_was_taken_over_during_a_freeze(output, freeze) -> None:
    """A worker stalled past the TTL (a VM freeze: one clock may stand still through it) while
    another run took the lease over must not commit when it resumes."""
    from pipeline.runtime.lease import FenceCheck

    clocks = Clocks()
    stalled = Lease(output, "extract", ttl_s=600, heartbeat_s=300).acquire()
    check = FenceCheck(stalled.fence(), lambda: clocks.wall, lambda: clocks.mono)
    check.check()
    # The run's heartbeat stops; a second run finds the lease stale and takes it over.
    record = json.loads(read_bytes(join(output, LEASE_FILE)))
    record["heartbeat_at"] -= 700
    write_bytes_atomic(join(output, LEASE_FILE), json.dumps(record).encode())
    taker = lease(output, "build_index").acquire()
    try:
        clocks.advance(*((700, 0) if freeze == "wall" else (0, 700)))
        with pytest.raises(LeaseLostError, match=r"is no longer this run's \(held by build_index"):
            check.check()
    finally:
        taker.release()
        stalled.release()
    fresh = FenceCheck(stalled.fence())
    gone = r"no longer this run's \(its record is gone\): not committing"
    with pytest.raises(LeaseLostError, match=gone):
        fresh.check()


def test_a_fence_fails_on_a_lease_of_its_run_that_expired(output: str) -> None:
    from pipeline.runtime.lease import FenceCheck

    held = lease(output).acquire()
    try:
        record = json.loads(read_bytes(join(output, LEASE_FILE)))
        record["heartbeat_at"] -= 700  # no heartbeat for longer than the TTL: takeable now
        write_bytes_atomic(join(output, LEASE_FILE), json.dumps(record).encode())
        with pytest.raises(LeaseLostError, match=r"expired \(no heartbeat for 7\d\ds"):
            FenceCheck(held.fence()).check()
    finally:
        held.release()
