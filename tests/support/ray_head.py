"""A `ray start --head` cluster in its own process group, with the dashboard (for `ray job
submit`) and the environment the caller gives it (its workers see that, not the test's)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.runtime.cluster import wait_for_job_submission

from .paths import VENV_BIN
from .waiting import free_port, wait_until


@dataclass(frozen=True)
class RayHead:
    gcs_address: str
    dashboard_url: str
    metrics_url: str  # the head's Prometheus endpoint


def _dashboard_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def start_ray_head(env: dict[str, str], num_gpus: int = 0) -> Iterator[RayHead]:
    """`ray start --head` with ``env`` and ``num_gpus`` fake GPUs; stopped on exit."""
    port, dash, metrics_port = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")
    env = {
        **env,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "RAY_metrics_report_interval_ms": "1000",  # export application metrics every second
        # Stopped by SIGTERM: tear down at once, no 30 s drain (that is for Serve replicas).
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=2",
        f"--num-gpus={num_gpus}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        f"--metrics-export-port={metrics_port}",
        # Ports of its own: the in-process cluster of ray_local holds Ray's defaults (52365 for
        # the dashboard agent, ...), and a head whose agent cannot bind accepts no jobs.
        *(
            f"--{flag}={free_port()}"
            for flag in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "ray-client-server-port",
                "node-manager-port",
                "object-manager-port",
            )
        ),
    ]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        # Start-up, not a race: a generous bound only turns a hang into a failure.
        wait_until(lambda: _dashboard_up(url) or proc.poll() is not None, 600, "the Ray head")
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        wait_for_job_submission(url, timeout_s=600)
        yield RayHead(f"127.0.0.1:{port}", url, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=120)
