"""The shard worker without Ray: output contract, equality with the model, retries."""

from __future__ import annotations

import gc
import io
import json
import logging
import tarfile
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from moto.server import ThreadedMotoServer

from glam import ExtractConfig, GlamConfig, GlamExtractor, build_glam, decode_image, preprocess
from pipeline.datasets.synthetic import encode, image, write_shards
from pipeline.extract.decode import DecodedSample, SampleError
from pipeline.extract.spec import ExtractionSpec
from pipeline.extract.worker import CPU_DECODE_CHUNK, ShardWorker
from pipeline.io.layout import descriptors_uri, errors_uri, marker_uri
from pipeline.io.shard_reader import RawSample
from pipeline.io.shards import shard_id
from pipeline.io.storage import exists, filesystem, read_bytes, write_bytes_atomic
from pipeline.runtime.progress import UnitProgress
from tests.support.extraction import IMAGE_SIZE, expected_keys
from tests.support.tars import JPEG, tar_of
from tests.support.waiting import free_port

SPEC = ExtractionSpec(image_size=IMAGE_SIZE, batch_size=3, retry_backoff_s=0.0)


@pytest.fixture(scope="module")
def worker() -> ShardWorker:
    return ShardWorker(SPEC, device="cpu", name="test")


def read_table(uri: str):
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def test_shard_output_contract(worker: ShardWorker, shards: list[str]) -> None:
    out = shards[0].rsplit("/", 2)[0] + "/run"
    stats = worker.process(shards[1], out)
    assert stats.status == "committed" and stats.attempts == 1
    ok, bad = expected_keys(1)
    desc = read_table(descriptors_uri(out, "000001"))
    errs = read_table(errors_uri(out, "000001"))
    # Every sample in exactly one of the two files.
    assert sorted(desc["key"].to_pylist()) == sorted(ok)
    assert dict(zip(errs["key"].to_pylist(), errs["error"].to_pylist(), strict=True)) == bad
    assert stats.samples == len(ok) + len(bad) and stats.ok == len(ok)
    assert set(desc["source"].to_pylist()) == {shards[1]}
    # Schema and metadata of ARCHITECTURE.md.
    dtype = desc.schema.field("descriptor").type
    assert pa.types.is_fixed_size_list(dtype) and dtype.list_size == 512
    assert dtype.value_type == pa.float32()
    assert not desc.schema.field("key").nullable
    meta = {k.decode(): v.decode() for k, v in desc.schema.metadata.items()}
    for key in (
        "model",
        "weights_sha256",
        "backbone",
        "scales",
        "image_size",
        "descriptor_dim",
        "precision",
        "package_version",
    ):
        assert meta[key]
    assert meta["weights_sha256"] == worker.fingerprint["weights_sha256"]
    assert json.loads(meta["scales"]) == pytest.approx([0.70710678, 1.0, 1.41421356])
    vectors = np.stack(desc["descriptor"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    marker = json.loads(read_bytes(marker_uri(out, "000001")))
    assert marker["ok"] == len(ok) and marker["bytes"] > 0 and marker["infer_s"] > 0


def test_pipeline_descriptor_equals_the_models_own(worker: ShardWorker, shards: list[str]) -> None:
    out = shards[0].rsplit("/", 2)[0] + "/run"
    worker.process(shards[0], out)
    desc = read_table(descriptors_uri(out, "000000")).to_pylist()
    by_key = {r["key"]: np.asarray(r["descriptor"], np.float32) for r in desc}
    members = {}
    with tarfile.open(fileobj=io.BytesIO(read_bytes(shards[0]))) as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    model = build_glam(seed=SPEC.seed)
    cfg = ExtractConfig(precision=worker.precision)  # auto, resolved
    extractor = GlamExtractor(model, cfg)
    for key in ("s000000_00000", "s000000_00001", "s000000_mode_CMYK"):
        name = next(n for n in members if n.startswith(key + ".") and n[-3:] in ("jpg", "png"))
        img = decode_image(members[name])
        mine = extractor([preprocess(img, IMAGE_SIZE)])[0].numpy()
        np.testing.assert_allclose(by_key[key], mine, rtol=1e-4, atol=1e-5)
        assert by_key[key] @ mine > 0.99999


def test_duckdb_reads_the_output(worker: ShardWorker, shards: list[str], tmp_path) -> None:
    out = shards[0].rsplit("/", 2)[0] + "/run"
    worker.process(shards[2], out)
    local = tmp_path / "part.parquet"
    local.write_bytes(read_bytes(descriptors_uri(out, "000002")))
    con = duckdb.connect()
    con.execute("CREATE TABLE d AS SELECT * FROM read_parquet($1)", [str(local)])
    n, norm = con.execute(
        "SELECT count(*), max(abs(sqrt(list_dot_product(descriptor::FLOAT[512], "
        "descriptor::FLOAT[512])) - 1)) FROM d"
    ).fetchone()
    assert n == len(expected_keys(2)[0]) and norm < 1e-5


def test_unreadable_shards_fail_at_once_without_retries(worker: ShardWorker, s3_bucket) -> None:
    """Garbage, truncated or missing shards read the same on a retry: failed at once, with a
    message that says what is wrong (storage errors are retried: the next test)."""
    out = f"s3://{s3_bucket}/run"
    corrupt = f"s3://{s3_bucket}/shards/000007.tar"
    write_bytes_atomic(corrupt, b"\x00not a tar" * 200)
    truncated = f"s3://{s3_bucket}/shards/000008.tar"
    write_bytes_atomic(truncated, read_bytes(write_shards(f"s3://{s3_bucket}/t", 1, 3)[0])[:3000])
    retries: list[int] = []
    worker.on_retry = lambda shard, attempt, error: retries.append(attempt)
    try:
        for uri, says in (
            (corrupt, "is not a tar archive"),
            (truncated, "is not a readable tar archive"),
            (f"s3://{s3_bucket}/shards/000404.tar", "does not exist"),
        ):
            stats = worker.process(uri, out)
            assert stats.status == "failed" and says in stats.error, stats.error
            assert stats.attempts == 1 and "object at 0x" not in stats.error
            sid = uri.rsplit("/", 1)[1][:-4]
            assert not exists(marker_uri(out, sid)) and not exists(descriptors_uri(out, sid))
        assert retries == []
    finally:
        worker.on_retry = None


def test_members_that_give_no_descriptor_are_typed_error_rows(worker, tmp_path) -> None:
    good = encode(image(np.random.default_rng(0), 80, 60))
    shard = str(tmp_path / "000000.tar")
    write_bytes_atomic(
        shard,
        tar_of(
            ("a.jpg", good),
            ("a.jpg", good),
            ("README", b"x"),
            ("._b.jpg", JPEG),
            ("c.jpg", "->a.jpg"),
            ("d.__key__", b"d"),
            ("e.jpg", good),
            ("a.jpg", good),
        ),
    )
    out = str(tmp_path / "run")
    stats = worker.process(shard, out)
    assert stats.status == "committed" and (stats.ok, stats.errors) == (2, 6)
    assert sorted(read_table(descriptors_uri(out, "000000"))["key"].to_pylist()) == ["a", "e"]
    errors = read_table(errors_uri(out, "000000")).to_pylist()
    assert sorted((r["key"], r["error"]) for r in errors) == [
        ("._b.jpg", "hidden_member"),
        ("README", "no_extension"),
        ("a", "duplicate_key"),
        ("a.jpg", "duplicate_member"),
        ("c.jpg", "link_member"),
        ("d.__key__", "reserved_member"),
    ]


@pytest.mark.slow  # its own S3 server, stopped and restarted
def test_s3_endpoint_restart_mid_run_is_retried(monkeypatch, tmp_path) -> None:
    """The endpoint goes away before the read; the retry hook brings it back: committed."""
    import boto3
    import s3fs

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="restart")
    from pipeline.datasets.synthetic import write_shards

    (shard,) = write_shards("s3://restart/shards", 1, 4, size=(80, 60))
    server.stop()  # the endpoint is down when the worker starts reading
    restarted = []

    def restart(uri: str, attempt: int, error: str) -> None:
        new = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        new.start()
        restarted.append(new)

    spec = ExtractionSpec(image_size=IMAGE_SIZE, retry_backoff_s=0.0, shard_attempts=3)
    w = ShardWorker(spec, device="cpu", on_retry=restart)
    try:
        stats = w.process(shard, "s3://restart/run")
        assert stats.status == "committed" and stats.attempts == 2
        assert len(restarted) == 1 and stats.ok == 4
        assert torch.tensor(read_table(descriptors_uri("s3://restart/run", "000000")).num_rows) == 4
    finally:
        for s in restarted:
            s.stop()
        s3fs.S3FileSystem.clear_instance_cache()


# Pipelining, progress and memory, on local shards (no service: the fast loop).
PIPE_SPEC = ExtractionSpec(
    image_size=IMAGE_SIZE, batch_size=2, prefetch=4, decode_workers=2, retry_backoff_s=0.0
)


@pytest.fixture(scope="module")
def piped() -> Iterator[ShardWorker]:
    w = ShardWorker(PIPE_SPEC, device="cpu", name="piped", report_interval_s=0.0)
    yield w
    w.close()


def local_shards(folder: Path, n: int = 2, images: int = 12) -> list[str]:
    from pipeline.datasets.synthetic import write_shards

    return write_shards(str(folder / "shards"), n, images, size=(96, 72), bad=("corrupt",))


def test_next_shard_decodes_while_this_one_computes_and_commits_off_the_compute_path(
    piped: ShardWorker, tmp_path: Path, monkeypatch
) -> None:
    """Shard B is read while A computes; A's commit waits until B computes. Were either
    serial, one side would wait on the other and the test would time out."""
    import pipeline.extract.feed as feed_module
    import pipeline.extract.worker as worker_module

    a, b = local_shards(tmp_path)
    out = str(tmp_path / "out")
    read_started = {sid: threading.Event() for sid in ("000000", "000001")}
    computing = {sid: threading.Event() for sid in ("000000", "000001")}
    real_iter_shard, real_write_json = feed_module.iter_shard, worker_module.write_json_atomic

    def iter_shard(uri: str, counter: list[int] | None = None) -> Iterator[RawSample]:
        read_started[shard_id(uri)].set()
        yield from real_iter_shard(uri, counter)

    def progress(p: UnitProgress) -> None:  # on the compute thread
        if p.images > 0:
            computing[p.unit].set()
        if p.unit == "000000" and p.images > 0:
            assert read_started["000001"].wait(120), "B was not read while A computed"

    def write_json(uri: str, value: object) -> None:
        if uri == marker_uri(out, "000000"):
            assert computing["000001"].wait(120), "A's commit held up B's compute"
        real_write_json(uri, value)

    monkeypatch.setattr(feed_module, "iter_shard", iter_shard)
    monkeypatch.setattr(worker_module, "write_json_atomic", write_json)
    piped.progress = progress
    try:
        with ThreadPoolExecutor(2) as pool:  # as the threaded actor calls it
            first = pool.submit(piped.process, a, out, 1)
            assert computing["000000"].wait(120)
            second = pool.submit(piped.process, b, out, 1)
            stats = [first.result(), second.result()]
    finally:
        piped.progress = None
    assert [s.status for s in stats] == ["committed", "committed"]
    for sid in ("000000", "000001"):  # in shard order, every sample once
        keys = read_table(descriptors_uri(out, sid))["key"].to_pylist()
        assert keys == [f"s{sid}_{i:05d}" for i in range(12)]
        assert read_table(errors_uri(out, sid))["key"].to_pylist() == [f"s{sid}_bad_corrupt"]


def test_progress_is_reported_in_images_during_the_shard(
    piped: ShardWorker, tmp_path: Path
) -> None:
    (shard,) = local_shards(tmp_path, n=1)
    out = str(tmp_path / "out")
    reports: list[UnitProgress] = []

    def progress(p: UnitProgress) -> None:
        reports.append(p)
        if 0 < p.images < 13:  # before the last batch: nothing is committed yet
            assert not exists(marker_uri(out, "000000"))

    piped.progress = progress
    try:
        stats = piped.process(shard, out, dispatch=3)
    finally:
        piped.progress = None
    images = [p.images for p in reports]
    assert images == sorted(images) and images[0] == 0 and images[-1] == stats.samples == 13
    assert len({i for i in images if 0 < i < 13}) >= 3  # moves batch by batch
    assert {(p.unit, p.dispatch) for p in reports} == {("000000", 3)}
    assert reports[-1].fraction == pytest.approx(1.0)


def _peak_images_alive(worker: ShardWorker, folder: Path, n: int, monkeypatch) -> int:
    """The most decoded images alive at once while ``worker`` runs an ``n``-image shard of 9
    different sizes (few full batches); checks none outlives the shard."""
    import pipeline.extract.worker as worker_module
    from pipeline.datasets.synthetic import encode, image
    from pipeline.io.shard_writer import tar_bytes

    rng = np.random.default_rng(0)
    samples = [(f"k{i:03d}", {"jpg": encode(image(rng, 64 + 8 * (i % 9), 48))}) for i in range(n)]
    shard = str(folder / f"{n:06d}.tar")
    write_bytes_atomic(shard, tar_bytes(iter(samples)))
    alive = [0]  # decoded images not yet collected (numpy arrays are not hashable: counted)
    real_decode = worker_module.decode_sample

    def collected() -> None:
        alive[0] -= 1

    def tracked(*args: object, **kw: object) -> DecodedSample | SampleError:
        item = real_decode(*args, **kw)  # type: ignore[arg-type]
        if isinstance(item, DecodedSample):
            alive[0] += 1
            weakref.finalize(item.image, collected)
        return item

    peak = [0]

    def progress(p: UnitProgress) -> None:
        peak[0] = max(peak[0], alive[0])

    monkeypatch.setattr(worker_module, "decode_sample", tracked)
    worker.progress = progress
    try:
        stats = worker.process(shard, str(folder / "out"))
    finally:
        worker.progress = None
        monkeypatch.undo()
    assert stats.ok == n
    gc.collect()
    assert alive[0] == 0  # no image outlives its batch
    return peak[0]


def test_memory_is_bounded_by_prefetch_and_batch_not_by_the_shard(
    tmp_path: Path, monkeypatch
) -> None:
    """A 50-image and a 500-image shard: at no time do more than prefetch + buckets + batches
    in flight + decode threads exist, whatever the shard's size (the first version kept every
    image of a shard until its end: +330 KB an image at 192 px)."""
    # A small GLAM (ResNet18, one scale): what is measured is the data path, not the model.
    model = build_glam(config=GlamConfig(backbone="resnet18", reduced_channels=16, dim=32))
    extractor = GlamExtractor(model, ExtractConfig(scales=(1.0,)))
    worker = ShardWorker(
        PIPE_SPEC, device="cpu", name="memory", report_interval_s=0.0, extractor=extractor
    )
    try:
        small = _peak_images_alive(worker, tmp_path, 50, monkeypatch)
        large = _peak_images_alive(worker, tmp_path, 500, monkeypatch)
    finally:
        worker.close()
    # Chunks queued (prefetch / chunk), one waiting to be queued and one being taken; the
    # buckets (at most prefetch); the batch computing and the next one.
    spec, chunk = PIPE_SPEC, CPU_DECODE_CHUNK
    bound = (max(1, spec.prefetch // chunk) + 2) * chunk + spec.prefetch + 2 * spec.batch_size
    assert 0 < small <= bound < 50 and 0 < large <= bound, (small, large, bound)


def test_decode_gpu_without_cuda_decodes_on_the_cpu(caplog) -> None:
    spec = ExtractionSpec(image_size=IMAGE_SIZE, decode="gpu")
    with caplog.at_level(logging.WARNING):
        w = ShardWorker(spec, device="cpu", cpus=3)
    try:
        assert w.decode == "cpu" and w.pool.workers == 3
        assert "no CUDA device" in caplog.text
        assert w.fingerprint["precision"] == w.precision != "auto"
    finally:
        w.close()


def test_a_shard_of_a_run_that_lost_the_lease_is_not_committed(
    worker: ShardWorker, shards: list[str]
) -> None:
    """An actor that resumes after its run was taken over (it stalled past the TTL) writes
    nothing: not the descriptors, not the errors, not the marker."""
    from pipeline.runtime.lease import Lease

    out = shards[0].rsplit("/", 2)[0] + "/fenced"
    with Lease(out, "extract", ttl_s=3, heartbeat_s=1) as ours:
        fence = ours.fence()
        assert worker.process(shards[0], out, fence=fence).status == "committed"
    with Lease(out, "extract", ttl_s=600, heartbeat_s=300):  # another run holds it now
        # The fence trusts its last confirmation for less than TTL - margin (2 s): after the
        # TTL it reads the record again, whatever the machine's speed.
        time.sleep(3)
        stats = worker.process(shards[1], out, fence=fence)
    assert stats.status == "failed" and "is no longer this run's (held by extract" in stats.error
    for uri in (descriptors_uri, errors_uri, marker_uri):
        assert not exists(uri(out, "000001")), uri.__name__
    assert exists(marker_uri(out, "000000"))
