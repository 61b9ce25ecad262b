"""The pre-flight: before any work is scheduled, check from the driver and from one task on
the cluster that the job's input can be read and its output written, with the job's own
storage settings. A cluster whose workers see another storage environment than the driver
(another endpoint, no credentials) fails here within seconds, with one line naming both
endpoints, instead of minutes later in every shard."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.io.redact import redact_text
from pipeline.io.storage import endpoint, filesystem, is_local, join

log = logging.getLogger(__name__)

# What a failed probe's error is cut to (enough for the cause, never a stack).
_MESSAGE_CHARS = 300


class PreflightError(RuntimeError):
    """The cluster (or this driver) cannot read the input or write the output."""


@dataclass(frozen=True)
class AccessReport:
    """One side's view: where it reaches storage, and what failed (empty: all good)."""

    endpoints: dict[str, str]  # URI -> the endpoint it is reached through
    error: str = ""


def check_access(read: Sequence[str], write: Sequence[str]) -> AccessReport:
    """Read the first bytes of each ``read`` URI (a file) or list it (a folder); write and
    delete a probe object under each ``write`` folder. Fails fast (one attempt, short
    timeouts)."""
    endpoints = {uri: endpoint(uri) for uri in (*read, *write)}
    try:
        for uri in read:
            fs, path = filesystem(uri, probe=True)
            if fs.isdir(path):
                fs.ls(path)
                continue
            try:
                with fs.open(path, "rb") as f:
                    f.read(512)
            except FileNotFoundError:
                # A missing file is that file's own error, reported where it is used (a
                # missing shard fails alone); access is what is checked here: its folder.
                fs.ls(path.rsplit("/", 1)[0])
        for folder in write:
            fs, path = filesystem(folder, probe=True)
            name = f"preflight-{uuid.uuid4().hex}"
            if is_local(fs):  # a hidden name in the folder (made if missing)
                fs.makedirs(path, exist_ok=True)
                probe = join(path, f".{name}")
            else:  # the object store's temporary prefix, as atomic writes use
                probe = join(path, "_tmp", name)
            fs.pipe_file(probe, b"glam pre-flight probe")
            fs.rm_file(probe)
    except Exception as e:  # any failure is the answer, reported as one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        message = f"{type(e).__name__}: {text}"[:_MESSAGE_CHARS]
        return AccessReport(endpoints, redact_text(message))
    return AccessReport(endpoints)


def _what(read: Sequence[str], write: Sequence[str]) -> str:
    parts = [f"read {redact_text(u)}" for u in read] + [f"write {redact_text(u)}" for u in write]
    return ", ".join(parts)


def preflight(read: Sequence[str], write: Sequence[str], on_cluster: bool = True) -> None:
    """Check access from this process, then (``on_cluster``) from a task on the connected Ray
    cluster; raise ``PreflightError`` with one line naming what failed and both endpoints."""
    mine = check_access(read, write)
    if mine.error:
        where = "; ".join(sorted(set(mine.endpoints.values())))
        raise PreflightError(f"cannot {_what(read, write)} (via {where}): {mine.error}")
    if not on_cluster:
        return
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(check_access)
    theirs: AccessReport = ray.get(task.remote(list(read), list(write)))
    if theirs.error:
        differs = [u for u in theirs.endpoints if theirs.endpoints[u] != mine.endpoints[u]]
        uri = differs[0] if differs else next(iter(theirs.endpoints))
        raise PreflightError(
            f"the cluster's workers cannot {_what(read, write)}: {theirs.error}; the workers "
            f"reach storage through {theirs.endpoints[uri]}, this driver through "
            f"{mine.endpoints[uri]} (a cluster started elsewhere has its own environment: "
            "set the storage variables on its nodes, or submit with `ray job submit`)"
        )
    log.debug("pre-flight passed: %s", _what(read, write))
