"""What Ray's control store (GCS) knows of an actor: alive, restarting or dead, how many times
it was restarted, and why it died. The driver asks it after a call to an actor failed, to tell
an actor that restarts (wait for it) from one that is gone, and to count real restarts rather
than failed calls (each call in flight or sent while an actor restarts fails on its own).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The GCS's state of an actor Ray will not restart; UNKNOWN: the state could not be read (the
# driver then relies on whether the actor answers).
DEAD, UNKNOWN = "DEAD", "UNKNOWN"


@dataclass(frozen=True)
class ActorStatus:
    state: str  # ALIVE, RESTARTING, DEAD, PENDING_CREATION, DEPENDENCIES_UNREADY or UNKNOWN
    restarts: int  # restarts so far (Ray's num_restarts)
    death_cause: str  # one line, empty while it never died


def actor_status(actor: Any) -> ActorStatus:
    """The GCS's record of ``actor`` (a handle). Never raises: ``UNKNOWN`` when unreadable."""
    try:
        from ray._private import state  # the record behind `ray list actors`

        record = state.actors(actor_id=actor._actor_id.hex())
    except Exception as e:  # an internal API: a Ray upgrade may move it
        log.debug("actor state unavailable: %s", e)
        return ActorStatus(UNKNOWN, 0, "")
    if not record:
        return ActorStatus(UNKNOWN, 0, "")
    return ActorStatus(
        state=str(record.get("State", UNKNOWN)),
        restarts=int(record.get("NumRestarts", 0)),
        death_cause=_one_line(str(record.get("DeathCause", ""))),
    )


def exit_detail(pid: int) -> str:
    """Why the worker process ``pid`` ended, as Ray's worker table recorded it (an OOM kill,
    a crash, an exit), in one line; empty when unknown. A call that was in flight when its
    actor died only says the connection closed: this says why."""
    try:
        from ray._private import state
        from ray.core.generated import gcs_pb2

        rows = state.state._connect_and_get_accessor().get_worker_table()
        ended = [
            w
            for w in (gcs_pb2.WorkerTableData.FromString(raw) for raw in rows)  # type: ignore[attr-defined]
            if w.pid == pid and not w.is_alive and w.exit_detail
        ]
    except Exception as e:  # an internal API: a Ray upgrade may move it
        log.debug("worker table unavailable: %s", e)
        return ""
    if not ended:
        return ""
    detail = max(ended, key=lambda w: w.end_time_ms).exit_detail
    detail = detail.split(" If the process was killed by the kernel")[0]
    return " ".join(detail.split())[:300]


# What Ray says of a dead worker, most telling first.
_CAUSES = (
    re.compile(r"((?:Task|Actor) was killed due to the node running low on memory[^\n]*)"),
    re.compile(r"error_message: \"([^\"]+)\""),
    re.compile(r"Worker exit detail: ([^\n]+?)(?: There are some potential root causes|$)"),
    re.compile(r"(The actor is dead because[^\n]*?\.)"),
)


def death_cause(error: BaseException | str) -> str:
    """One line on why an actor died, from Ray's error text (an out-of-memory kill names
    itself), for failed-shard messages."""
    return _one_line(str(error))


def _one_line(text: str) -> str:
    for pattern in _CAUSES:
        found = pattern.search(text)
        if found:
            return " ".join(found.group(1).split())[:300]
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[0][:300] if lines else ""
