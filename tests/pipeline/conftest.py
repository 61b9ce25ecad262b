"""Pipeline fixtures: a local Ray cluster in this process, a `ray start --head` cluster with two
fake GPUs and the dashboard (for `ray job submit`), and generated shards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.cluster import wait_for_job_submission
from pipeline.synthetic import BAD_KINDS, ODD_MODES, write_shards

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def ray_local(s3_endpoint: str) -> Iterator[str]:
    """A local Ray cluster without GPUs, started in this process after the S3 endpoint (its
    workers inherit the AWS variables); yields its GCS address."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayHead:
    gcs_address: str
    dashboard_url: str
    metrics_url: str  # the head's Prometheus endpoint


def wait_until(condition, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _dashboard_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def ray_head(s3_endpoint: str) -> Iterator[RayHead]:
    """`ray start --head --num-gpus 2` on a CPU box (fake GPUs), with the dashboard."""
    port, dash, metrics_port = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "RAY_metrics_report_interval_ms": "1000",  # export application metrics every second
    }
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=2",
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
        wait_until(lambda: _dashboard_up(url) or proc.poll() is not None, 120, "the Ray head")
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        wait_for_job_submission(url)
        yield RayHead(f"127.0.0.1:{port}", url, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


@pytest.fixture
def shards(s3_bucket: str) -> list[str]:
    """Three shards in S3: 5 images each, plus every odd mode and every bad sample kind."""
    return write_shards(
        f"s3://{s3_bucket}/shards", 3, 5, size=(96, 72), bad=tuple(BAD_KINDS), odd=ODD_MODES
    )


def shard_pattern(shard_uris: list[str]) -> str:
    folder = shard_uris[0].rsplit("/", 1)[0]
    return f"{folder}/{{000000..{len(shard_uris) - 1:06d}}}.tar"


def extract_command(shard_uris: list[str], output: str, *extra: str) -> list[str]:
    """``python jobs/extract.py`` over the generated shards at the tests' image size."""
    return [
        sys.executable,
        str(REPO / "jobs" / "extract.py"),
        "--input",
        shard_pattern(shard_uris),
        "--output",
        output,
        "--image-size",
        str(IMAGE_SIZE),
        *extra,
    ]


def expected_keys(shard: int, n_images: int = 5) -> tuple[set[str], dict[str, str]]:
    """(keys that must get a descriptor, key -> error type) of a generated shard."""
    ok = {f"s{shard:06d}_{i:05d}" for i in range(n_images)}
    ok |= {f"s{shard:06d}_mode_{m.replace(';', '')}" for m in ODD_MODES}
    bad = {f"s{shard:06d}_bad_{k}": v for k, v in BAD_KINDS.items()}
    return ok, bad
