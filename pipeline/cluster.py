"""Connecting to Ray: the cluster a job was submitted to, a running one, or a new local one."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> None:
    """Join ``address`` / ``RAY_ADDRESS`` (set by ``ray job submit``), else a running local
    cluster, else start a local one in this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    try:
        ray.init(address="auto", log_to_driver=True)
        log.info("joined the running Ray cluster")
    except ConnectionError:
        ray.init(log_to_driver=True)
        log.info("started a local Ray cluster: %s", ray.cluster_resources())
