"""The extraction driver's scheduling rules without Ray (``pipeline.extract.scheduler``): one
test per rule, then a million simulated shards on 64 simulated actors, with crashes injected
at chosen hand-outs, checked against what the rules say should happen to every shard."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from pipeline.extract.scheduler import Dispatch, Recovery, ShardFailed, ShardScheduler
from tests.test_architecture import loads


def shards(n: int) -> list[str]:
    return [f"s3://in/{i:06d}.tar" for i in range(n)]


def where(ds: list[Dispatch]) -> list[tuple[str, int, int]]:
    """(shard id, actor, hand-out number) per decision."""
    return [(d.shard[-10:-4], d.actor, d.number) for d in ds]


def test_the_scheduler_loads_no_ray_and_does_no_io() -> None:
    assert loads("pipeline.extract.scheduler") <= {
        "__future__",
        "heapq",
        "collections",
        "dataclasses",
    }


def test_the_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="shards per actor must be positive"):
        ShardScheduler([], 1, 0, 3)
    with pytest.raises(ValueError, match="max shard restarts must be >= 0"):
        ShardScheduler([], 1, 2, -1)


def test_idle_actors_first_then_the_least_loaded_ties_to_the_lowest_index() -> None:
    s = ShardScheduler(shards(8), 3, 2, 3)
    first = s.dispatch([0, 1, 2])
    assert where(first) == [
        ("000000", 0, 1),
        ("000001", 1, 1),
        ("000002", 2, 1),
        ("000003", 0, 1),
        ("000004", 1, 1),
        ("000005", 2, 1),
    ]
    assert s.dispatch([0, 1, 2]) == []  # every actor holds shards_per_actor
    s.finished(first[4])  # actor 1 has room
    s.finished(first[5])  # so has actor 2
    assert where(s.dispatch([2, 1, 0])) == [("000006", 1, 1), ("000007", 2, 1)]
    assert s.pending == 0 and s.in_flight == 6 and not s.done


def test_only_serving_actors_get_shards() -> None:
    s = ShardScheduler(shards(3), 2, 2, 3)
    assert s.dispatch([]) == []
    assert [d.actor for d in s.dispatch([1])] == [1, 1]
    assert s.load(0) == 0 and s.load(1) == 2 and s.pending == 1


def test_each_result_ends_its_shard_and_its_state() -> None:
    todo = shards(5)
    s = ShardScheduler(todo, 2, 2, 3)
    while not s.done:
        for d in s.dispatch([0, 1]):
            s.finished(d)
    assert s.tracked == 0 and s.in_flight == 0 and s.pending == 0
    assert todo == shards(5)  # the queue is the input, read in place


def test_a_result_not_in_flight_is_refused() -> None:
    s = ShardScheduler(shards(2), 1, 2, 3)
    a, _ = s.dispatch([0])
    s.finished(a)
    with pytest.raises(ValueError, match="is not in flight"):
        s.finished(a)  # twice
    with pytest.raises(ValueError, match="is not in flight"):
        s.lost(Dispatch(a.shard, 0, 2))  # a hand-out never made


def test_a_call_lost_without_a_restart_counts_nothing_and_requeues_at_the_front() -> None:
    s = ShardScheduler(shards(4), 1, 2, 0)
    a, b = s.dispatch([0])
    s.lost(a)
    s.lost(b)
    assert s.held == 2 and s.load(0) == 0 and s.dispatch([]) == []
    assert s.settle(Recovery(0, 0, "lost in transit")) == []  # max_shard_restarts 0: no death
    # Back at the front in their order; not alone (no death); hand-out 2 of each.
    assert where(s.dispatch([0])) == [("000000", 0, 2), ("000001", 0, 2)]
    assert s.tracked == 2 and s.pending == 2


def test_a_death_makes_the_shards_it_held_run_alone_each_filling_its_actor() -> None:
    s = ShardScheduler(shards(4), 2, 2, 3)
    held = [d for d in s.dispatch([0, 1]) if d.actor == 0]
    for d in held:
        s.lost(d)
    assert s.settle(Recovery(0, 1, "killed")) == []  # a shared death counts against neither
    again = s.dispatch([0, 1])
    assert where(again) == [("000000", 0, 2)]  # alone: fills actor 0; actor 1 is busy
    assert s.load(0) == 2
    s.finished(again[0])
    assert where(s.dispatch([0, 1])) == [("000002", 0, 2)]  # the other one, alone too
    assert s.load(0) == 2 and s.pending == 0


def test_a_death_counts_only_against_a_shard_that_ran_alone_and_fails_it_past_the_limit() -> None:
    """As in test_extract's poison shard: one restart allowed (max_shard_restarts 1)."""
    s = ShardScheduler(shards(3), 1, 2, 1)
    poison, bystander = s.dispatch([0])
    s.lost(poison)
    s.lost(bystander)
    assert s.settle(Recovery(0, 1, "first")) == []  # shared: both run alone from now on
    for n, cause in ((2, "second"), (3, "third")):
        (d,) = s.dispatch([0])
        assert (d.shard, d.number) == (poison.shard, n)
        s.lost(d)
        failed = s.settle(Recovery(0, 1, cause))
    assert failed == [ShardFailed(poison.shard, "actor died 2 times (last: third)")]
    (d,) = s.dispatch([0])
    assert (d.shard, d.number) == (bystander.shard, 2)
    s.finished(d)
    (d,) = s.dispatch([0])
    assert (d.shard, d.number) == (shards(3)[2], 1)  # never shares an actor with the others
    s.finished(d)
    assert s.done and s.tracked == 0


def test_every_restart_seen_counts() -> None:
    s = ShardScheduler(shards(1), 1, 1, 2)
    (d,) = s.dispatch([0])
    s.lost(d)
    assert s.settle(Recovery(0, 1, "once")) == []  # it ran alone on a 1-shard actor, but
    (d,) = s.dispatch([0])  # it was not known to: that death makes it alone
    s.lost(d)
    assert s.settle(Recovery(0, 3, "thrice")) == [
        ShardFailed(d.shard, "actor died 3 times (last: thrice)")
    ]


def test_a_call_failed_on_a_retired_actor_settles_alone() -> None:
    s = ShardScheduler(shards(3), 2, 2, 3)
    ds = s.dispatch([0, 1])
    s.lost(ds[0])
    assert s.settle(Recovery(0, 1, "retired")) == []
    s.lost(ds[2])  # the retired actor's other call failed after its retirement
    assert s.settle(Recovery(0, 1, "retired")) == []
    assert where(s.dispatch([1])) == []  # actor 1 still runs one: no room for an alone shard
    s.finished(ds[1])
    assert where(s.dispatch([1])) == [("000002", 1, 2)]


def test_no_actor_left_fails_the_rest_in_queue_order_naming_the_causes() -> None:
    s = ShardScheduler(shards(5), 2, 1, 3)
    a, b = s.dispatch([0, 1])
    s.lost(a)
    assert list(s.unserved([1], ["x"])) == []  # actor 1 serves
    assert list(s.unserved([], ["x"])) == []  # b is in flight
    s.lost(b)
    assert list(s.unserved([], ["x"])) == []  # both actors are recovering
    assert s.settle(Recovery(0, 1, "gone: b")) == []
    assert s.settle(Recovery(1, 1, "gone: a")) == []
    failed = list(s.unserved([], ["gone: b", "gone: a", "gone: b"]))
    # Each settled actor's shards went back to the front of the queue: the last settled first.
    assert [f.shard[-10:-4] for f in failed] == ["000001", "000000", "000002", "000003", "000004"]
    assert {f.error for f in failed} == {"no actor left (gone: a; gone: b)"}
    assert s.done and s.tracked == 0 and s.pending == 0


# The simulation: a million shards, crashes at chosen hand-outs.


@dataclass
class World:
    """What the simulated cluster does: which hand-outs (counted over the whole run, from 1)
    end in their actor's death (the whole actor: every shard it holds, mid-batch), which lose
    their call without a restart, which shards kill every actor that runs them, and from which
    hand-out on every actor dies and is retired."""

    n_shards: int = 1_000_000
    actors: int = 64
    shards_per_actor: int = 2
    max_shard_restarts: int = 3
    seed: int = 0
    crash_at: frozenset[int] = frozenset()
    lose_at: frozenset[int] = frozenset()
    poison: frozenset[int] = frozenset()  # shard indices
    retire_all_from: int | None = None


@dataclass(slots=True)
class Call:
    """A call sent to an actor: its hand-out, counted over the run."""

    d: Dispatch
    count: int
    live: bool = True  # False: it failed with its actor


@dataclass
class Outcome:
    committed: bytearray  # per shard: how many times it committed
    failed: dict[int, str] = field(default_factory=dict)  # shard index -> error
    deaths: int = 0
    max_tracked: int = 0


def simulate(w: World) -> Outcome:
    """Runs ``w`` through a ``ShardScheduler`` as the driver would, checking every decision
    against the rules and what the simulation itself saw happen to each shard."""
    rng = random.Random(w.seed)
    uris = [str(i) for i in range(w.n_shards)]  # cheap shards: their index for their URI
    s = ShardScheduler(uris, w.actors, w.shards_per_actor, w.max_shard_restarts)
    out = Outcome(bytearray(w.n_shards))
    serving = list(range(w.actors))
    running: list[Call] = []  # every call sent and not returned, in no order
    on_actor: list[dict[str, Call]] = [{} for _ in range(w.actors)]
    alone_on = [False] * w.actors  # it runs a shard that must run alone
    held: dict[int, list[str]] = {}  # failed actor -> the shards of its failed calls
    recovering: dict[int, list[int]] = {}  # actor -> [steps until it settles, restarts]
    retired: dict[int, str] = {}
    # Per shard handed out and not ended: [its last hand-out number, whether it saw a death,
    # the deaths it saw after its first one (those the rules count)].
    seen: dict[str, list[int]] = {}
    handed = 0

    def fail(f: ShardFailed) -> None:
        i = int(f.shard)
        assert not out.committed[i] and i not in out.failed, f"{f.shard} ended twice"
        out.failed[i] = f.error
        if f.error.startswith("actor died"):  # by its own deaths, past the limit
            deaths = seen[f.shard][2]
            assert deaths > w.max_shard_restarts and f"died {deaths} times (last: " in f.error
        else:
            assert f.error.startswith("no actor left (") and not serving and not recovering
        seen.pop(f.shard, None)

    def settle(r: Recovery) -> None:
        for shard in held.pop(r.actor, []):
            state = seen[shard]
            if r.restarts:
                state[2] += r.restarts if state[1] else 0
                state[1] = 1
        for f in s.settle(r):
            fail(f)

    def lose(c: Call) -> None:
        """``c``'s call fails with its actor, which is taken out of service until it settles."""
        c.live = False
        del on_actor[c.d.actor][c.d.shard]
        alone_on[c.d.actor] = False
        s.lost(c.d)
        held.setdefault(c.d.actor, []).append(c.d.shard)
        if c.d.actor in retired:  # a retired actor's call: settled at once
            settle(Recovery(c.d.actor, 1, retired[c.d.actor]))
        elif c.d.actor in serving:
            serving.remove(c.d.actor)
            recovering[c.d.actor] = [rng.randint(0, 4), 0]

    def die(actor: int) -> None:
        """The actor's process dies (Ray restarts it once or twice before it answers)."""
        for c in list(on_actor[actor].values()):
            lose(c)
        if actor in serving:  # it held nothing
            serving.remove(actor)
            recovering[actor] = [rng.randint(0, 4), 0]
        if actor in recovering:
            recovering[actor][1] = max(recovering[actor][1], rng.choice((1, 1, 1, 2)))
        out.deaths += 1

    while not s.done:
        for actor, state in list(recovering.items()):
            state[0] -= 1
            if state[0] >= 0:
                continue
            del recovering[actor]
            if w.retire_all_from is not None and handed >= w.retire_all_from:
                retired[actor] = f"actor {actor % 3} is gone"
                settle(Recovery(actor, 1, retired[actor]))
            else:
                serving.append(actor)
                serving.sort()
                settle(Recovery(actor, state[1], f"actor {actor} crashed"))
        for d in s.dispatch(serving):
            handed += 1
            state = seen.setdefault(d.shard, [0, 0, 0])
            assert d.number == state[0] + 1, (d, state)  # a later hand-out, a larger number
            state[0] = d.number
            assert d.actor in serving and not alone_on[d.actor], d
            load = [w.shards_per_actor if alone_on[a] else len(on_actor[a]) for a in serving]
            if handed % 8 == 0:  # the least loaded actor, ties to the lowest index
                assert d.actor == serving[load.index(min(load))], (d, load)
            if state[1]:  # it saw a death: it runs alone
                assert not on_actor[d.actor], d
                alone_on[d.actor] = True
            assert len(on_actor[d.actor]) < w.shards_per_actor, d
            c = Call(d, handed)
            on_actor[d.actor][d.shard] = c
            running.append(c)
        for f in s.unserved(serving, list(retired.values())):
            fail(f)
        assert s.tracked == len(seen)  # state only for shards in flight, held or re-queued
        out.max_tracked = max(out.max_tracked, s.tracked)
        if w.retire_all_from is not None and handed >= w.retire_all_from and serving:
            die(serving[0])
        for _ in range(min(len(running), rng.randint(1, 24))):
            k = rng.randrange(len(running))
            running[k], running[-1] = running[-1], running[k]
            c = running.pop()
            if not c.live:
                continue  # its actor died under it
            if int(c.d.shard) in w.poison or c.count in w.crash_at:
                die(c.d.actor)
            elif c.count in w.lose_at:
                lose(c)  # lost in transit: the same process answers again
            else:
                del on_actor[c.d.actor][c.d.shard]
                alone_on[c.d.actor] = False
                s.finished(c.d)
                i = int(c.d.shard)
                assert not out.committed[i] and i not in out.failed, f"{c.d.shard} ended twice"
                out.committed[i] = 1
                del seen[c.d.shard]
    assert s.tracked == 0 and not seen and not held and s.pending == 0 and s.in_flight == 0
    return out


def picks(rng: random.Random, n: int, k: int) -> frozenset[int]:
    return frozenset(rng.sample(range(1, n + 1), k))


def test_a_million_shards_with_crashes_lost_calls_and_poison_each_end_exactly_once() -> None:
    """64 actors die at 500 chosen hand-outs (every shard they hold, mid-batch), 300 calls are
    lost without a restart, and 10 shards kill every actor that runs them: every other shard
    commits exactly once, each poison shard fails with its own deaths, and no state is left."""
    rng = random.Random(1)
    n = 1_000_000
    poison = frozenset(rng.sample(range(n), 10))
    w = World(n, crash_at=picks(rng, n, 500), lose_at=picks(rng, n, 300), poison=poison)
    out = simulate(w)
    assert set(out.failed) == poison
    assert all(e.startswith("actor died") for e in out.failed.values())
    assert sum(out.committed) == n - len(poison)
    assert out.deaths >= 500 + len(poison) * (w.max_shard_restarts + 1)
    assert out.max_tracked <= w.actors * w.shards_per_actor + 100  # bounded, not per shard


def test_a_million_shards_when_every_actor_retires_each_end_exactly_once() -> None:
    """From hand-out 500,000 on, every actor dies and is retired: what was committed stays
    committed once, every other shard fails once, naming why the actors left."""
    rng = random.Random(2)
    n = 1_000_000
    poison = frozenset(rng.sample(range(n // 4), 5))
    w = World(n, crash_at=picks(rng, n // 2, 100), poison=poison, retire_all_from=n // 2)
    out = simulate(w)
    assert sum(out.committed) + len(out.failed) == n
    assert n // 2 - 1000 <= sum(out.committed) < n // 2 + 1000
    left = {e for i, e in out.failed.items() if i not in poison}
    assert left == {"no actor left (actor 0 is gone; actor 1 is gone; actor 2 is gone)"}
    assert all(out.failed[i].startswith("actor died") for i in poison)


@pytest.mark.parametrize("seed", range(5))
def test_many_crashes_on_few_actors_keep_the_rules(seed: int) -> None:
    """Crashes at one hand-out in 20 on 5 actors of 3 shards: some bystanders die often enough
    to fail by their own deaths; every shard still ends exactly once, as the rules say."""
    rng = random.Random(seed)
    n = 20_000
    w = World(
        n,
        actors=5,
        shards_per_actor=3,
        max_shard_restarts=2,
        seed=seed,
        crash_at=picks(rng, n, n // 20),
        lose_at=picks(rng, n, n // 30),
        poison=frozenset(rng.sample(range(n), 20)),
        retire_all_from=n if seed % 2 else None,
    )
    out = simulate(w)
    assert sum(out.committed) + len(out.failed) == n
    assert w.poison <= set(out.failed)
