"""Which shard runs where, and when a shard has failed: the extraction driver's rules as a plain
state machine, without Ray and without I/O. The driver feeds it events (the actors serving, a
hand-out's result, a call lost with its actor, an actor's recovery settled) and carries out its
decisions (``Dispatch``, ``ShardFailed``); ``tests/pipeline/extract/test_scheduler.py`` drives
it with a million simulated shards and injected crashes.

The rules:

1. Every actor holds up to ``shards_per_actor`` shards; the least loaded serving actor is served
   first (ties: the lowest index), the queue in order, re-queued shards at its front.
2. A call lost with its actor keeps its shard on that actor until the actor's recovery settles
   (``Recovery``, from ``pipeline.extract.recovery``): deaths are counted by real restarts, not
   by failed calls.
3. Which of a dying actor's shards killed it is unknown, so a death counts only against a shard
   that ran alone; the others held by a dying actor run alone from then on (a shard that runs
   alone fills its actor): a bystander then commits, and a shard that kills every actor fails
   after ``max_shard_restarts`` deaths of its own.
4. With no actor serving, none in flight and none recovering, the shards left fail.

Bounded at any number of shards: the queue is the input list itself (read through a cursor,
never copied), and per-shard state (``_Attempts``) exists only for shards in flight, held by a
recovering actor or re-queued; it is dropped when a shard ends. A shard's hand-out numbers
(``Dispatch.number``: 1, 2, ... over its attempts in this run) are what the progress board and
the actors tell hand-outs apart by: a later hand-out's number is larger.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Dispatch:
    """Decision: hand ``shard`` to actor ``actor`` as the shard's hand-out ``number``."""

    shard: str  # shard URI
    actor: int  # index of the actor
    number: int  # 1 for its first hand-out in this run, then 2, 3, ...


@dataclass(frozen=True)
class ShardFailed:
    """Decision: ``shard`` has failed, with ``error`` for its cause (it is not handed out again)."""

    shard: str  # shard URI
    error: str


@dataclass(frozen=True)
class Recovery:
    """Event: actor ``actor``'s recovery settled (restarted, back from a lost call, or retired):
    its real ``restarts`` (0: it never died; a retired actor counts one), and why it failed."""

    actor: int
    restarts: int
    cause: str


@dataclass(slots=True)
class _Attempts:
    """A shard not ended yet that has been handed out."""

    dispatches: int = 0  # its hand-outs so far
    deaths: int = 0  # deaths counted against it (only while it ran alone)
    alone: bool = False  # it runs alone on an actor from now on
    actor: int | None = None  # where it runs now; None: re-queued or held by a failed actor


class ShardScheduler:
    """The dispatch, failure, restart and retirement rules over ``shards`` on ``actors``
    actors. ``shards`` (distinct URIs) is the queue, read in place: not copied, not changed."""

    def __init__(
        self, shards: Sequence[str], actors: int, shards_per_actor: int, max_shard_restarts: int
    ) -> None:
        if shards_per_actor <= 0:
            raise ValueError(f"shards per actor must be positive, got {shards_per_actor}")
        if max_shard_restarts < 0:
            raise ValueError(f"max shard restarts must be >= 0, got {max_shard_restarts}")
        self.shards_per_actor = shards_per_actor
        self.max_shard_restarts = max_shard_restarts
        self._shards = shards
        self._next = 0  # shards[_next:] have never been handed out
        self._requeued: deque[str] = deque()  # handed out before, to run again first
        self._attempts: dict[str, _Attempts] = {}
        self._load = [0] * actors  # per actor: 1 per shard it runs, shards_per_actor if alone
        self._held: dict[int, list[str]] = {}  # failed actor -> its shards, in failure order
        self._in_flight = 0

    @property
    def pending(self) -> int:
        """Shards waiting for an actor."""
        return len(self._requeued) + len(self._shards) - self._next

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def held(self) -> int:
        """Shards whose actor failed under them, waiting for its recovery to settle."""
        return sum(map(len, self._held.values()))

    @property
    def tracked(self) -> int:
        """Shards with state kept (in flight, held or re-queued): what memory grows with."""
        return len(self._attempts)

    @property
    def done(self) -> bool:
        """Every shard has ended (committed or failed)."""
        return not self.pending and not self._in_flight and not self._held

    def load(self, actor: int) -> int:
        return self._load[actor]

    def dispatch(self, serving: Sequence[int]) -> list[Dispatch]:
        """Hand out what the ``serving`` actors can take now (rule 1)."""
        out: list[Dispatch] = []
        if not serving or not self.pending:
            return out
        heap = [(self._load[i], i) for i in serving]  # least loaded first, then lowest index
        heapq.heapify(heap)
        while self.pending:
            load, actor = heap[0]
            shard = self._requeued[0] if self._requeued else self._shards[self._next]
            attempts = self._attempts.get(shard) if self._requeued else None
            weight = self.shards_per_actor if attempts is not None and attempts.alone else 1
            if load + weight > self.shards_per_actor:
                break
            if self._requeued:
                self._requeued.popleft()
            else:
                self._next += 1
            if attempts is None:
                attempts = self._attempts[shard] = _Attempts()
            attempts.dispatches += 1
            attempts.actor = actor
            self._load[actor] = load + weight
            self._in_flight += 1
            heapq.heapreplace(heap, (load + weight, actor))
            out.append(Dispatch(shard, actor, attempts.dispatches))
        return out

    def finished(self, d: Dispatch) -> None:
        """Hand-out ``d`` returned its shard's result (committed or failed): the shard ends."""
        self._returned(d)
        del self._attempts[d.shard]

    def lost(self, d: Dispatch) -> None:
        """Hand-out ``d``'s call failed with its actor: the shard waits for the actor's
        recovery to settle (rule 2)."""
        self._returned(d)
        self._held.setdefault(d.actor, []).append(d.shard)

    def settle(self, r: Recovery) -> list[ShardFailed]:
        """Actor ``r.actor``'s recovery settled: its death counts against the shards it held
        that ran alone, the others run alone from now on (rule 3); those past
        ``max_shard_restarts`` deaths fail, the rest go back to the front of the queue, in
        their order."""
        failed: list[ShardFailed] = []
        for shard in reversed(self._held.pop(r.actor, [])):
            attempts = self._attempts[shard]
            if attempts.alone:
                attempts.deaths += r.restarts
            elif r.restarts:
                attempts.alone = True  # it may be the culprit or a bystander: run it alone
            if attempts.deaths > self.max_shard_restarts:
                del self._attempts[shard]
                error = f"actor died {attempts.deaths} times (last: {r.cause})"
                failed.append(ShardFailed(shard, error))
            else:
                self._requeued.appendleft(shard)
        return failed

    def unserved(self, serving: Sequence[int], retired: Collection[str]) -> Iterator[ShardFailed]:
        """With no actor serving, none in flight and none recovering, every shard left fails
        (rule 4), naming why the actors were ``retired``; otherwise nothing. Lazily: a shard
        leaves the queue as its failure is taken (a million of them are never in a list)."""
        if serving or self._in_flight or self._held or not self.pending:
            return iter(())
        return self._fail_pending(f"no actor left ({'; '.join(sorted(set(retired)))})")

    def _fail_pending(self, error: str) -> Iterator[ShardFailed]:
        while self._requeued:
            shard = self._requeued.popleft()
            del self._attempts[shard]
            yield ShardFailed(shard, error)
        while self._next < len(self._shards):
            self._next += 1
            yield ShardFailed(self._shards[self._next - 1], error)

    def _returned(self, d: Dispatch) -> _Attempts:
        attempts = self._attempts.get(d.shard)
        if attempts is None or attempts.actor != d.actor or attempts.dispatches != d.number:
            raise ValueError(f"{d} is not in flight")
        attempts.actor = None
        self._load[d.actor] -= self.shards_per_actor if attempts.alone else 1
        self._in_flight -= 1
        return attempts
