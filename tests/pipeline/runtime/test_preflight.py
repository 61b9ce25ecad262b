"""The pre-flight from the workers' side: a job joining a cluster whose nodes reach another
storage endpoint fails at once, naming both endpoints and no credential; a job says which
cluster it joined."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.runtime.preflight import check_access
from tests.support.descriptors import write_folder
from tests.support.paths import REPO
from tests.support.ray_head import start_ray_head
from tests.support.waiting import free_port

SECRET = "preflight-secret-0123456789"  # moto accepts any credentials


def test_access_check_reads_and_writes_and_leaves_nothing(s3_bucket: str) -> None:
    write_folder(f"s3://{s3_bucket}/desc", 1, 3)
    report = check_access([f"s3://{s3_bucket}/desc"], [f"s3://{s3_bucket}/out"])
    assert report.error == ""
    assert "127.0.0.1" in report.endpoints[f"s3://{s3_bucket}/out"]
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert fs.find(f"{s3_bucket}/out") == []  # the probe object is gone
    # A missing shard in a readable folder is that shard's own error, later; a missing
    # bucket is an access failure now.
    assert check_access([f"s3://{s3_bucket}/desc/000404.tar"], []).error == ""
    missing = check_access(["s3://no-such-bucket-here/shards/000000.tar"], [])
    assert missing.error.startswith("FileNotFoundError")


@pytest.mark.slow
def test_workers_with_another_endpoint_fail_the_job_at_once(s3_bucket: str, tmp_path) -> None:
    write_folder(f"s3://{s3_bucket}/desc", 1, 5)
    wrong = f"http://127.0.0.1:{free_port()}"  # what the cluster's nodes were started with
    with start_ray_head({**os.environ, "AWS_ENDPOINT_URL": wrong}) as head:
        run = subprocess.run(
            [
                sys.executable,
                "jobs/build_index.py",
                "--descriptors",
                f"s3://{s3_bucket}/desc",
                "--output",
                f"s3://{s3_bucket}/idx",
                "--ray-address",
                head.gcs_address,
            ],
            cwd=REPO,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", "AWS_SECRET_ACCESS_KEY": SECRET},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"connected to the Ray cluster at {head.gcs_address}" in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: PreflightError: the cluster's workers cannot read s3://")
    assert f"through {wrong}" in last and os.environ["AWS_ENDPOINT_URL"] in last
    assert SECRET not in run.stderr
    assert "Traceback" not in run.stderr
