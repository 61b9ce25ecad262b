"""Leases on outputs: one run at a time writes an extraction output or an index.

A lease is a small JSON record, ``OUTPUT/_lease.json``: who holds it (host, pid, job, a random
token), since when, and the time of its last heartbeat. It is created only where none exists
(a conditional write: S3's ``If-None-Match``, an exclusive link locally) and renewed, taken
over or released only if it is still the version last seen (``If-Match``), so two runs that
start together cannot both hold it.

A second run finds the lease live and stops with a message naming the holder. A lease whose
heartbeat is older than ``ttl_s`` belongs to a run that died: the next run takes it over and
says so. So does a lease whose holder ran on this very host and is gone (its pid no longer
runs, or runs another process): a driver killed and re-run on one machine resumes at once.
Heartbeat times are wall-clock (UTC), so hosts must keep their clocks in sync (NTP); the
default TTL of 90 s with a heartbeat every 15 s leaves room for drift and for pauses.

The writes themselves are fenced: a run hands its workers a ``LeaseFence`` (its token), and a
worker checks it (``FenceCheck``) before each write of a commit, so that a worker that stalled
past the TTL while its run was taken over commits nothing when it resumes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from types import TracebackType

from pipeline.io.storage import (
    ConditionFailedError,
    create_exclusive,
    delete_if,
    join,
    read_tagged,
    replace_if,
)

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
DEFAULT_TTL_S = 90.0
DEFAULT_HEARTBEAT_S = 15.0
# Conditional writes that lose a race are retried from a fresh read this many times.
_ATTEMPTS = 5


class LeaseHeldError(RuntimeError):
    """Another live run holds the output's lease."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over (its heartbeat stopped for longer than the TTL)."""


@dataclass(frozen=True)
class LeaseRecord:
    token: str  # random, unique to one holder
    job: str  # what holds it, e.g. "extract" or "build_index"
    host: str
    pid: int
    acquired_at: float  # unix time
    heartbeat_at: float  # unix time of the last renewal
    ttl_s: float
    detail: str = ""  # e.g. the index version being built
    started: str = ""  # the holder process's start time on its host (tells a reused pid)
    # The holder's PID namespace (Linux: /proc/self/ns/pid): containers that share a hostname
    # each have their own, in which the other's pid means nothing.
    pid_namespace: str = ""

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat_at
        since = datetime.fromtimestamp(self.acquired_at, UTC).isoformat(timespec="seconds")
        what = f"{self.job} (pid {self.pid} on {self.host}, since {since}"
        return f"{what}, last heartbeat {age:.0f}s ago{'; ' + self.detail if self.detail else ''})"

    def stale(self, now: float) -> bool:
        return now - self.heartbeat_at > self.ttl_s

    def holder_gone(self) -> bool:
        """True when the holder ran on this host and that process no longer runs."""
        if self.host != socket.gethostname():
            return False  # another host: only the heartbeat tells
        if not self.pid_namespace or self.pid_namespace != pid_namespace():
            return False  # another container on this host (or unknown): only the heartbeat
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's live process
            return False
        return bool(self.started) and process_start(self.pid) != self.started

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        return cls(**json.loads(data))


def pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or "" where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """A process's start time on this host (Linux: /proc/<pid>/stat field 22), or ""."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


# NOTE: not in paper: the part of the TTL a fence does not trust a confirmation for, so that
# clock drift between hosts and one commit's writes fit before a takeover becomes possible.
FENCE_MARGIN_FRACTION = 1 / 3


@dataclass(frozen=True)
class LeaseFence:
    """A run's claim on an output, handed to the workers that commit into it: a worker commits
    only while the output's lease record still names this run (``token``) and is live."""

    uri: str  # the lease record, OUTPUT/_lease.json
    token: str
    margin_s: float  # of the record's TTL (which the check reads from the record itself)


class FenceCheck:
    """``check()`` before each write of a commit: ``LeaseLostError`` once the lease is not
    the fence's run's (taken over, released, expired), so that a worker stalled past the TTL
    (a VM freeze, SIGSTOP) never commits beside the run that took over.

    A confirmation costs one read of the lease record, and is trusted while no takeover can
    have happened since: the record's heartbeat + TTL − margin, measured on both the wall and
    the monotonic clock (one of them may stand still through a freeze). A worker committing a
    shard every few seconds reads the record about once a minute, not once a shard. What no
    fence on an object store closes: a stall between the last check and the write itself.
    """

    def __init__(
        self,
        fence: LeaseFence,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fence = fence
        self._wall, self._monotonic = wall, monotonic
        self._trusted: tuple[float, float, float] | None = None  # (wall, monotonic, for s)

    def check(self) -> None:
        wall, mono = self._wall(), self._monotonic()
        if self._trusted is not None:
            w0, m0, trusted_s = self._trusted
            if max(wall - w0, mono - m0) < trusted_s:
                return
        self._trusted = None
        current = read_tagged(self.fence.uri)
        holder = Lease._parse(current[0]) if current else None
        output = self.fence.uri.rsplit("/", 1)[0]
        if holder is None or holder.token != self.fence.token:
            who = f"held by {holder.describe(wall)}" if holder else "its record is gone"
            raise LeaseLostError(
                f"the lease on {output} is no longer this run's ({who}): not committing"
            )
        if holder.stale(wall):
            raise LeaseLostError(
                f"the lease on {output} expired (no heartbeat for "
                f"{wall - holder.heartbeat_at:.0f}s, TTL {holder.ttl_s:.0f}s): not committing"
            )
        trusted_s = holder.heartbeat_at + holder.ttl_s - self.fence.margin_s - wall
        if trusted_s > 0:
            self._trusted = (wall, mono, trusted_s)


class Lease:
    """``with Lease(output, "extract"):`` holds ``output``'s lease while the block runs,
    heartbeating on a daemon thread; ``check()`` raises ``LeaseLostError`` once it is lost."""

    def __init__(
        self,
        output: str,
        job: str,
        ttl_s: float = DEFAULT_TTL_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        detail: str = "",
    ) -> None:
        if ttl_s <= 0 or not 0 < heartbeat_s < ttl_s:
            raise ValueError("lease TTL must be positive and longer than the heartbeat interval")
        self.uri = join(output, LEASE_FILE)
        self.output = output
        self.heartbeat_s = heartbeat_s
        now = time.time()
        self.record = LeaseRecord(
            uuid.uuid4().hex,
            job,
            socket.gethostname(),
            os.getpid(),
            now,
            now,
            ttl_s,
            detail,
            process_start(os.getpid()),
            pid_namespace(),
        )
        self._tag: str | None = None
        self._lost: str = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------------
    def acquire(self) -> Lease:
        """Take the lease, or raise ``LeaseHeldError`` naming the live holder."""
        for _ in range(_ATTEMPTS):
            now = time.time()
            mine = replace(self.record, acquired_at=now, heartbeat_at=now)
            current = read_tagged(self.uri)
            try:
                if current is None:
                    self._tag = create_exclusive(self.uri, mine.to_bytes())
                else:
                    holder = self._parse(current[0])
                    if holder is not None and not holder.stale(now) and not holder.holder_gone():
                        raise LeaseHeldError(
                            f"{self.output} is being written by another run: "
                            f"{holder.describe(now)}; wait for it, or stop it (a lease without "
                            f"a heartbeat for {holder.ttl_s:.0f}s is taken over)"
                        )
                    self._tag = replace_if(self.uri, mine.to_bytes(), current[1])
                    if holder is None:
                        log.warning("replaced an unreadable lease record at %s", self.uri)
                    else:
                        why = (
                            f"its heartbeat is older than {holder.ttl_s:.0f}s"
                            if holder.stale(now)
                            else "its process on this host is gone"
                        )
                        log.warning(
                            "took over the lease on %s from %s: %s, so that run is dead",
                            self.output,
                            holder.describe(now),
                            why,
                        )
            except ConditionFailedError:
                continue  # someone else wrote first: look again
            self.record = mine
            self._start_heartbeat()
            log.debug("holding the lease on %s", self.output)
            return self
        raise LeaseHeldError(f"{self.output}: could not take the lease (it kept changing)")

    @staticmethod
    def _parse(data: bytes) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_bytes(data)
        except (ValueError, TypeError):
            return None

    # -- holding -----------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except LeaseLostError:
                return
            except Exception as e:  # storage hiccup: try again at the next beat
                log.warning("lease heartbeat on %s failed: %s", self.output, e)

    def renew(self) -> None:
        """Write a fresh heartbeat; ``LeaseLostError`` if another run took the lease over."""
        with self._lock:
            if self._lost:
                raise LeaseLostError(self._lost)
            if self._tag is None:
                raise LeaseLostError(f"the lease on {self.output} is not held")
            beat = replace(self.record, heartbeat_at=time.time())
            try:
                self._tag = replace_if(self.uri, beat.to_bytes(), self._tag)
                self.record = beat
            except ConditionFailedError:
                current = read_tagged(self.uri)
                holder = self._parse(current[0]) if current else None
                if holder is not None and holder.token == self.record.token and current:
                    self._tag = current[1]  # our own record after all: a lost reply
                    return
                self._lost = (
                    f"the lease on {self.output} was taken over by {holder.describe()}"
                    if holder
                    else f"the lease on {self.output} was lost: its record is gone (another "
                    "run took it over while this one stalled, and has released it)"
                )
                log.error("%s", self._lost)
                raise LeaseLostError(self._lost) from None

    def fence(self) -> LeaseFence:
        """What a worker needs to commit into the output only while this run holds it."""
        ttl = self.record.ttl_s
        return LeaseFence(self.uri, self.record.token, ttl * FENCE_MARGIN_FRACTION)

    def note(self, detail: str) -> None:
        """Say what the holder is doing (e.g. the version it builds); written at once."""
        self.record = replace(self.record, detail=detail)
        self.renew()

    def check(self) -> None:
        """Raise ``LeaseLostError`` when the lease was lost (call before committing)."""
        if self._lost:
            raise LeaseLostError(self._lost)

    # -- releasing ---------------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._tag is None or self._lost:
                return
            try:
                delete_if(self.uri, self._tag)
            except ConditionFailedError:
                log.warning("the lease on %s changed hands before it was released", self.output)
            except Exception as e:  # the lease expires by itself
                log.warning("could not release the lease on %s: %s", self.output, e)
            self._tag = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
