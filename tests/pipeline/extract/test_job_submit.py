"""`ray job submit` against a `ray start --head` cluster with two fake GPUs: the job
SUCCEEDS, the output is complete, and the GPU actors get distinct CUDA_VISIBLE_DEVICES and fall
back to the CPU since torch sees no CUDA device; the pipeline's metrics reach the head's Prometheus
endpoint."""

from __future__ import annotations

import re
import subprocess
import urllib.request
import uuid

from ray.job_submission import JobStatus, JobSubmissionClient

from pipeline.io.layout import job_uri
from pipeline.io.storage import read_json
from tests.support.extraction import assert_exactly_once, expected_keys, extract_command
from tests.support.paths import VENV_BIN
from tests.support.waiting import wait_until


def test_ray_job_submit_on_fake_gpus(ray_head, shards, tiny_weights) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/submitted"
    submission = f"extract-{uuid.uuid4().hex[:8]}"
    ray = str(VENV_BIN / "ray")
    submit = subprocess.run(
        [
            ray,
            "job",
            "submit",
            "--address",
            ray_head.dashboard_url,
            "--submission-id",
            submission,
            "--",
            *extract_command(shards, output, "--batch-size", "4", "--weights", tiny_weights),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    client = JobSubmissionClient(ray_head.dashboard_url)
    assert client.get_job_status(submission) == JobStatus.SUCCEEDED
    logs = client.get_job_logs(submission)
    assert "3 done, 0 skipped, 0 failed" in logs
    assert re.search(r"shards 3/3 .*images \d+ \([\d.]+ images/s\), ETA ", logs)  # progress
    assert_exactly_once(output, 3)
    job = read_json(job_uri(output))
    assert job["status"] == "succeeded"
    workers = job["workers"]
    assert sorted(w["cuda_visible_devices"] for w in workers) == ["0", "1"]
    assert {w["device"] for w in workers} == {"cpu"}
    assert_metrics_exported(ray_head.metrics_url)


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def assert_metrics_exported(metrics_url: str) -> None:
    """The submitted job's metrics (recorded by its driver) at the head's Prometheus endpoint."""
    wanted = ("ray_glam_images_total", "ray_glam_shards_total", "ray_glam_stage_seconds_total")
    wait_until(
        lambda: all(m in scrape(metrics_url) for m in wanted),
        120,
        "the pipeline's metrics at the head's endpoint",
    )
    text = scrape(metrics_url)
    images = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_glam_images_total")
    ]
    per_shard = [len(ok) + len(bad) for ok, bad in (expected_keys(s) for s in range(3))]
    assert sum(images) == sum(per_shard)
