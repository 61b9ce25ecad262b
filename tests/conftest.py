"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), a local Ray cluster in
this process, a `ray start --head` cluster with two fake GPUs and the dashboard (for `ray job
submit`), generated shards; and the ``slow`` marker on every test that uses one of them, so
that ``pytest -m "not slow"`` is the fast development loop."""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES, write_shards
from tests.support.extraction import write_tiny_weights
from tests.support.ray_head import RayHead, start_ray_head

# Under pytest-xdist each worker has its own temp dir, so that what Ray records there (the
# `ray_current_cluster` a job started by a test joins, session folders) and every temp file
# belong to that worker's own S3 server and clusters, never another worker's.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix=f"{os.environ['PYTEST_XDIST_WORKER']}-")
    tempfile.tempdir = None  # re-read TMPDIR
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
logging.getLogger("werkzeug").setLevel(logging.WARNING)
# moto's request recorder (tests/support/s3_recording.py) writes to this file, read at import.
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH",
    os.path.join(tempfile.gettempdir(), f"moto_recording-{os.getpid()}-{uuid.uuid4().hex[:8]}"),
)

# Fixtures that start or use a real service: a test that takes any of them is end to end.
SLOW_FIXTURES = frozenset({"s3_endpoint", "s3_bucket", "ray_local", "ray_head", "shards"})


# The longest test files, run first: under pytest-xdist (``--dist loadfile``, one file per
# worker at a time) the longest file bounds the suite, so it must not start last.
LONGEST_FIRST = (
    "tests/pipeline/train/test_train.py",
    "tests/pipeline/extract/test_extract.py",
    "tests/pipeline/index/test_serving.py",
    "tests/pipeline/index/test_incremental.py",
    "tests/pipeline/index/test_build_search.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the collection order within a rank


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback; the standard AWS variables point every client at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return name


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


@pytest.fixture(scope="session")
def ray_head(s3_endpoint: str) -> Iterator[RayHead]:
    """`ray start --head --num-gpus 2` on a CPU box (fake GPUs), with the dashboard."""
    with start_ray_head(dict(os.environ), num_gpus=2) as head:
        yield head


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local ResNet18-GLAM checkpoint (``tests.support.extraction.TINY_GLAM``) for the
    extraction tests: ``--weights`` for every run whose model size does not matter."""
    return write_tiny_weights(str(tmp_path_factory.mktemp("weights") / "tiny.safetensors"))


@pytest.fixture
def shards(s3_bucket: str) -> list[str]:
    """Three shards in S3: 5 images each, plus every odd mode and every bad sample kind."""
    return write_shards(
        f"s3://{s3_bucket}/shards", 3, 5, size=(96, 72), bad=tuple(BAD_KINDS), odd=ODD_MODES
    )
