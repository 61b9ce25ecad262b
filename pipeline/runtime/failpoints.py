"""Fault injection for the crash-recovery tests, off unless ``GLAM_FAILPOINTS`` is set.

``GLAM_FAILPOINTS="actor_crash_in_shard=000001;driver_exit_after_shards=1"`` arms failpoints;
each fires once per (name, value), remembered by a flag file in ``GLAM_FAILPOINT_DIR``, so a
re-run or a restarted actor proceeds normally. ``actor_restart_delay_s=S`` is not a one-off:
every restarted extraction actor sleeps S seconds before loading its model (a slow restart,
as on a GPU node loading weights from S3); ``actor_crash_always_in_shard=ID`` crashes the
actor on that shard every time (a shard that kills whatever processes it);
``driver_interrupt_after_shards=N`` sends the driver SIGINT (Ctrl-C) after its N-th commit;
``driver_exit_before_registering=K`` exits the driver just before its K-th batch of committed
shards is registered in the output's tables (a crash between a commit and its registration).
"""

from __future__ import annotations

import os

ENV_SPEC = "GLAM_FAILPOINTS"
ENV_DIR = "GLAM_FAILPOINT_DIR"


def armed_env() -> dict[str, str]:
    """The failpoint variables of this process, to pass on to actors."""
    return {k: os.environ[k] for k in (ENV_SPEC, ENV_DIR) if k in os.environ}


def armed(name: str) -> str | None:
    """The value failpoint ``name`` is armed with, every time it is asked (None: not armed)."""
    spec = os.environ.get(ENV_SPEC)
    if not spec:
        return None
    return dict(item.split("=", 1) for item in spec.split(";") if "=" in item).get(name)


def trigger(name: str, value: str) -> bool:
    """True the first time failpoint ``name`` is reached with ``value`` while armed."""
    if armed(name) != value:
        return False
    flag = os.path.join(os.environ.get(ENV_DIR, "."), f"{name}-{value}.fired")
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
