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
from pathlib import Path

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


def _log_tails(temp_dir: str, lines: int = 15) -> str:
    """The last lines of `ray start`'s output and of the head's own logs: why a head died."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    found = [Path(temp_dir) / "ray_start.out"]
    found += [
        logs / n for n in ("ray_process_exit.log", "raylet.out", "gcs_server.out", "dashboard.log")
    ]
    found += sorted(logs.glob("dashboard_agent*.log")) if logs.is_dir() else []
    parts = []
    for path in found:
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(parts)


def _head_command(temp_dir: str, num_gpus: int) -> tuple[list[str], int, int, int]:
    """`ray start --head` on fresh ports: (command, GCS port, dashboard port, metrics port)."""
    port, dash, metrics_port = free_port(), free_port(), free_port()
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
        # No autoscaler monitor: a fixed one-node cluster scales nothing (a process fewer).
        "--no-monitor",
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
    return cmd, port, dash, metrics_port


@contextlib.contextmanager
def start_ray_head(env: dict[str, str], num_gpus: int = 0, attempts: int = 3) -> Iterator[RayHead]:
    """`ray start --head` with ``env`` and ``num_gpus`` fake GPUs; stopped on exit.

    A head that exits while it starts is started again on fresh ports, up to ``attempts``
    times: a port picked free can be taken by another process before Ray binds it (the other
    test worker starts clusters and servers too), and a Ray agent that cannot bind its port
    takes the whole head down with it."""
    env = {
        **env,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "RAY_metrics_report_interval_ms": "1000",  # export application metrics every second
        # Stopped by SIGTERM: tear down at once, no 30 s drain (that is for Serve replicas).
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    died: list[str] = []
    for _ in range(attempts):
        temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")
        cmd, port, dash, metrics_port = _head_command(temp_dir, num_gpus)
        with open(Path(temp_dir) / "ray_start.out", "wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{dash}"
        try:
            started = _accepts_jobs(proc, url)
        except BaseException:
            _stop(proc)
            raise
        if not started:
            died.append(f"ray start exited with {proc.returncode}:\n{_log_tails(temp_dir)}")
            _stop(proc)
            continue
        try:
            yield RayHead(f"127.0.0.1:{port}", url, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            _stop(proc)
        return
    raise RuntimeError(f"the Ray head exited while starting, {attempts} times:\n" + "\n".join(died))


def _accepts_jobs(proc: subprocess.Popen[bytes], url: str) -> bool:
    """Wait until the head at ``url`` accepts a job (True) or its process exits (False)."""
    # Start-up, not a race: a generous bound only turns a hang into a failure.
    wait_until(lambda: _dashboard_up(url) or proc.poll() is not None, 600, "the Ray head")
    try:
        wait_for_job_submission(url, 600, head_alive=lambda: proc.poll() is None)
    except ChildProcessError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """The head and every process it started: they share its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    proc.wait(timeout=120)
