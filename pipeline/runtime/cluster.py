"""Connecting to Ray: the cluster a job was submitted to, a running one, or a new local one."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> None:
    """Join ``address`` / ``RAY_ADDRESS`` (set by ``ray job submit``), else a running local
    cluster, else start a local one in this process. Which one it joined is logged: a cluster
    started elsewhere runs its tasks with its own environment, not this shell's."""
    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"log_to_driver": True}
    given = address or os.environ.get("RAY_ADDRESS")
    if given:
        ray.init(address=given, **kw)
        how = "--ray-address" if address else "RAY_ADDRESS (as under `ray job submit`)"
        log.info("connected to the Ray cluster at %s, from %s", given, how)
        return
    running = running_local_cluster()
    if running:
        ray.init(address=running, **kw)
        log.info(
            "joined the Ray cluster already running at %s (started by `ray start`; its workers "
            "use that cluster's environment, not this shell's)",
            running,
        )
    else:
        ray.init(address="local", **kw)
        log.info("started a local Ray cluster: %s", ray.cluster_resources())


def running_local_cluster() -> str | None:
    """The GCS address of the cluster `ray start` last started here, if it still answers.

    `ray.init(address="auto")` trusts that record even when the cluster is gone and then
    waits a minute for it; a one-second TCP probe tells first.
    """
    record = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(record) as f:
            address = f.read().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None


def wait_for_job_submission(
    dashboard_url: str,
    timeout_s: float = 120.0,
    head_alive: Callable[[], bool] = lambda: True,
) -> None:
    """Block until the cluster accepts `ray job submit`: the dashboard answers before the head's
    job agent has registered ("No available agent to submit job"), so submit a no-op job until
    one is accepted and finishes. A head that ``head_alive`` says has exited raises
    `ChildProcessError` at once: it will accept nothing, however long the wait."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if not head_alive():
            raise ChildProcessError(f"the Ray head of {dashboard_url} exited: {last_error}")
        try:
            client = JobSubmissionClient(dashboard_url)
            job_id = client.submit_job(entrypoint="true")
            while client.get_job_status(job_id) not in (
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
                JobStatus.STOPPED,
            ):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            else:
                return
        except (RuntimeError, OSError) as e:  # requests' errors are OSErrors, not ConnectionError
            last_error = str(e).splitlines()[0] if str(e) else type(e).__name__
        time.sleep(0.5)
    raise TimeoutError(f"{dashboard_url} accepted no job in {timeout_s:.0f}s: {last_error}")


_COLOURS = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def without_colours(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours task names in its errors)."""
    return _COLOURS.sub("", text)


def task_cause(error: Exception) -> Exception:
    """The error a failed Ray task raised, not Ray's wrapper (whose first line is the task's
    name, pid and ip in terminal colours)."""
    while isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, Exception):
        error = error.cause
    return error
