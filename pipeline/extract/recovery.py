"""Actors that failed a call: held out of service until Ray has restarted them (or given up),
and the shards they held kept back until then, so that deaths are counted by real restarts.

A call fails with ``ActorDiedError`` when the actor's process dies under it, and with
``ActorUnavailableError`` while the actor restarts (loading the model can take minutes on a
GPU node reading weights from S3). Counting failed calls as deaths fails a shard within
seconds of one crash; so the driver instead:

1. holds the failed actor out of service (the shards it held wait on it in the
   ``ShardScheduler``, ``pipeline.extract.scheduler``);
2. pings it (``info()``) until it answers, a second apart at most while Ray refuses;
3. when it answers, compares its process id (and Ray's restart count) with those it had: a new
   process is a death, and the scheduler counts it on the shards the actor held, which then go
   back to the queue (or fail, past ``max_shard_restarts``); the same process (a call lost in
   transit) counts nothing;
4. an actor that Ray reports ``DEAD`` (it will not restart it), or that is not back within
   ``restart_timeout_s``, is retired; its shards count a death and go to the others.

Each settled recovery is a ``Recovery`` (the scheduler's event).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.extract.scheduler import Recovery
from pipeline.runtime.actor_state import DEAD, actor_status, death_cause, exit_detail

log = logging.getLogger(__name__)

# Seconds between pings of an actor that refuses calls while it restarts (pacing, not a
# deadline: an actor that takes longer is waited for, up to restart_timeout_s).
PING_INTERVAL_S = 1.0


@dataclass
class _Recovering:
    since: float  # when its call failed (monotonic)
    cause: str  # why, in one line
    ping: Any = None  # the info() call in flight
    next_ping_at: float = 0.0


class ActorRecovery:
    """Tracks the actors in service, those recovering, and those retired."""

    def __init__(
        self,
        actors: list[Any],
        pids: list[int],
        restart_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.actors = actors
        self.pids = list(pids)
        self.restarts_seen = [max(0, actor_status(a).restarts) for a in actors]
        self.restart_timeout_s = restart_timeout_s
        self.clock = clock
        self.recovering: dict[int, _Recovering] = {}
        self.retired: dict[int, str] = {}  # actor -> why
        self.total_restarts = 0

    def serving(self) -> list[int]:
        """Actors that may be given shards."""
        return [
            i for i in range(len(self.actors)) if i not in self.recovering and i not in self.retired
        ]

    def failed(self, index: int, shard: str, error: BaseException) -> Recovery | None:
        """A call to actor ``index`` holding ``shard`` failed with a ``RayActorError``: the
        actor's recovery starts (None: the shard waits for it), or, when the actor is already
        retired, settles at once."""
        cause = death_cause(error)
        if index in self.retired:
            return Recovery(index, 1, self.retired[index])
        self.recovering.setdefault(index, _Recovering(self.clock(), cause))
        log.warning("actor %d failed on %s (%s); waiting for it to come back", index, shard, cause)
        return None

    def pings(self) -> dict[Any, int]:
        """The pings in flight (ref -> actor), sending those that are due."""
        now = self.clock()
        out = {}
        for index, entry in self.recovering.items():
            if entry.ping is None and now >= entry.next_ping_at:
                entry.ping = self.actors[index].info.remote()
            if entry.ping is not None:
                out[entry.ping] = index
        return out

    def answered(self, ref: Any, index: int) -> Recovery | None:
        """Actor ``index`` answered ping ``ref`` (or the call failed): its recovery, when it
        is settled; None while it is still restarting."""
        entry = self.recovering[index]
        entry.ping = None
        try:
            info = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            status = actor_status(self.actors[index])
            if status.state == DEAD:
                why = status.death_cause or exit_detail(self.pids[index]) or death_cause(e)
                return self._retire(index, why)
            entry.next_ping_at = self.clock() + PING_INTERVAL_S  # restarting: ask again
            return None
        status = actor_status(self.actors[index])
        new_process = int(info.pid != self.pids[index])
        restarts = max(status.restarts - self.restarts_seen[index], new_process)
        if restarts:
            entry.cause = exit_detail(self.pids[index]) or entry.cause
            log.warning(
                "actor %d was restarted (pid %d -> %d) after %.0f s: %s",
                index,
                self.pids[index],
                info.pid,
                self.clock() - entry.since,
                entry.cause,
            )
        else:
            log.info("actor %d answers again from the same process: no restart", index)
        self.pids[index] = info.pid
        self.restarts_seen[index] = max(self.restarts_seen[index], status.restarts)
        self.total_restarts += restarts
        del self.recovering[index]
        return Recovery(index, restarts, entry.cause)

    def expired(self) -> list[Recovery]:
        """Actors not back within ``restart_timeout_s``: retired."""
        now = self.clock()
        late = [i for i, r in self.recovering.items() if now - r.since > self.restart_timeout_s]
        return [
            self._retire(i, f"not back within {self.restart_timeout_s:g} s of its failure")
            for i in late
        ]

    def _retire(self, index: int, why: str) -> Recovery:
        del self.recovering[index]
        self.retired[index] = why
        log.error("actor %d is retired: %s", index, why)
        return Recovery(index, 1, why)
