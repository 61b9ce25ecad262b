"""Start-up and resume from listings: what an output holds comes from one paginated listing of
its markers (moto's server counts the requests), not from a request per shard; the refusals
that reading every marker gave still hold; totals and failed shards stay bounded (no Ray)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.extract import failures, resume
from pipeline.extract.failures import FailedShards
from pipeline.extract.resume import final_totals, recount_totals, scan_output, trusted_totals
from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.extract.stats import FailedShard, ShardStats, ShardTotals
from pipeline.io.layout import MarkerName, job_uri, marker_uri, source_digest
from pipeline.io.storage import list_names, read_json, write_json_atomic
from pipeline.runtime.records import OutputMismatchError
from tests.support.s3_recording import recorded_requests, requests_by_kind

CONFIG = {"backbone": "resnet101", "dim": 512}


def fp(precision: str) -> dict:
    return fingerprint(ExtractionSpec(precision="auto"), CONFIG, "abc", precision)


def marker(source: str, precision: str = "bf16", samples: int = 3) -> dict:
    stats = ShardStats(shard=source.rsplit("/", 1)[1][:6], source=source, samples=samples)
    return {**stats.to_dict(), "ok": samples, "read_s": 0.5, "fingerprint": fp(precision)}


def put_directly(bucket: str, objects: dict[str, dict]) -> None:
    """Objects into the in-process moto server's store, without a request each (moto takes
    ~50 ms a PUT: 300 markers through S3 would cost the test 15 s)."""
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    backend = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]
    for key, body in objects.items():
        backend.put_object(bucket, key, json.dumps(body).encode())


def committed_output(bucket: str, committed: int, record: dict | None) -> tuple[str, list[str]]:
    out = f"s3://{bucket}/runs/r"
    shards = [f"s3://{bucket}/shards/{i:06d}.tar" for i in range(committed + 100)]
    objects = {
        marker_uri(out, f"{i:06d}", shards[i]).split("/", 3)[3]: marker(shards[i])
        for i in range(committed)
    }
    if record is not None:
        objects["runs/r/_job.json"] = record
    put_directly(bucket, objects)
    return out, shards


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_resume_costs_one_listing_and_no_request_per_shard(
    s3_endpoint, s3_bucket, precision
) -> None:
    """300 committed shards of 400: one LIST page, the record, and (for ``auto``, whose
    precision the output binds) one marker; no HEAD, no marker GET per shard."""
    record = {"fingerprint": fp("bf16"), "status": "succeeded", "totals": {"committed_shards": 300}}
    out, shards = committed_output(s3_bucket, 300, record)
    with recorded_requests(s3_endpoint) as requests:
        scan = scan_output(out, fp(precision), shards)
    assert sorted(scan.committed) == [f"{i:06d}" for i in range(300)] and scan.markers == 300
    assert scan.precisions == ({"bf16"} if precision == "auto" else set())
    objects = Counter(p for m, p in requests if "list-type" not in p)
    markers = [p for p in objects if "/_shards/" in p]
    assert len(markers) == (precision == "auto") and objects[f"/{s3_bucket}/runs/r/_job.json"]
    kinds = requests_by_kind(requests, s3_bucket)
    assert kinds["LIST"] == 1 and sum(kinds.values()) <= 5, requests
    assert trusted_totals(scan.previous, scan.markers) is not None


def test_a_listing_of_more_than_a_page_is_paginated(s3_endpoint, s3_bucket) -> None:
    put_directly(s3_bucket, {f"f/{i:05d}.json": {} for i in range(1001)})
    put_directly(s3_bucket, {"f/_tmp/x.json": {}, "f/.hidden.json": {}})
    with recorded_requests(s3_endpoint) as requests:
        pages = list(list_names(f"s3://{s3_bucket}/f"))
    names = [n for page in pages for n in page]  # not the hidden one, not the subfolder
    assert names == [f"{i:05d}.json" for i in range(1001)] and len(pages) == 1
    assert requests_by_kind(requests, s3_bucket) == {"LIST": 2}
    assert list(list_names(f"s3://{s3_bucket}/nothing")) == [[]]
    with recorded_requests(s3_endpoint) as requests:  # in three parts, listed concurrently
        parts = list(list_names(f"s3://{s3_bucket}/f", split_at=["00700", "00300.json"]))
    assert [n for part in parts for n in part] == names and parts[1][0] == "00301.json"
    assert requests_by_kind(requests, s3_bucket) == {"LIST": 3}


def test_a_large_input_lists_the_markers_in_concurrent_parts(
    s3_endpoint, s3_bucket, monkeypatch
) -> None:
    monkeypatch.setattr(resume, "PART_SHARDS", 100)  # 400 shards: 4 parts (10,000 each by default)
    record = {"fingerprint": fp("bf16"), "status": "succeeded", "totals": {"committed_shards": 300}}
    out, shards = committed_output(s3_bucket, 300, record)
    cuts = resume.listing_cuts(shards)
    assert len(cuts) == 3 and cuts == sorted(cuts)
    with recorded_requests(s3_endpoint) as requests:
        scan = scan_output(out, fp("bf16"), shards)
    assert sorted(scan.committed) == [f"{i:06d}" for i in range(300)] and scan.markers == 300
    assert requests_by_kind(requests, s3_bucket)["LIST"] == 4


def test_a_fresh_output_costs_one_listing(s3_endpoint, s3_bucket) -> None:
    out, shards = committed_output(s3_bucket, 0, None)
    with recorded_requests(s3_endpoint) as requests:
        scan = scan_output(out, fp("auto"), shards)
    assert scan.committed == {} and scan.previous is None and scan.markers == 0
    listings = [p for m, p in requests if "list-type" in p and "_shards" in p]
    kinds = requests_by_kind(requests, s3_bucket)
    assert len(listings) == 1 and sum(kinds.values()) <= 3, requests  # and _job.json: HEAD, LIST


def test_a_shard_of_the_same_name_from_another_source_is_refused_from_its_name(
    tmp_path, s3_endpoint, s3_bucket
) -> None:
    """``day1/000000.tar`` committed, ``day2/000000.tar`` given: refused, naming both (the
    committed source read from its marker, on the way to the error only)."""
    out = str(tmp_path / "out")
    day1 = f"s3://{s3_bucket}/day1/000000.tar"
    write_json_atomic(marker_uri(out, "000000", day1), marker(day1))
    write_json_atomic(job_uri(out), {"fingerprint": fp("bf16"), "status": "succeeded"})
    with pytest.raises(
        OutputMismatchError,
        match=rf"000000 \(committed from {day1}, given s3://{s3_bucket}/day2/000000.tar\)",
    ):
        scan_output(out, fp("bf16"), [f"s3://{s3_bucket}/day2/000000.tar"])
    assert list(scan_output(out, fp("bf16"), [day1]).committed) == ["000000"]


def test_another_configuration_is_refused_from_one_marker(tmp_path) -> None:
    out = str(tmp_path / "out")
    write_json_atomic(marker_uri(out, "000000", "s/000000.tar"), marker("s/000000.tar"))
    with pytest.raises(OutputMismatchError, match="differs in: precision"):
        scan_output(out, fp("fp32"), ["s/000001.tar"])  # no record: the marker binds


def test_markers_of_the_earlier_layout_are_still_read(tmp_path, caplog) -> None:
    """An output written before markers named their source: its markers are read (each), and
    both layouts count."""
    out = str(tmp_path / "out")
    write_json_atomic(f"{out}/_shards/000000.json", marker("s/000000.tar"))  # earlier layout
    write_json_atomic(marker_uri(out, "000001", "s/000001.tar"), marker("s/000001.tar"))
    write_json_atomic(f"{out}/_shards/000002.json", marker("t/000002.tar"))
    with caplog.at_level(logging.WARNING, logger="pipeline.extract.resume"):
        scan = scan_output(out, fp("auto"), ["s/000000.tar", "s/000001.tar", "s/000003.tar"])
    assert sorted(scan.committed) == ["000000", "000001"] and scan.markers == 3
    assert scan.precisions == {"bf16"} and "2 commit markers of an earlier layout" in caplog.text
    assert read_json(marker_uri(out, "000001"))["source"] == "s/000001.tar"  # found by its id
    with pytest.raises(OutputMismatchError, match=r"000002 \(committed from t/000002.tar"):
        scan_output(out, fp("bf16"), ["s/000002.tar"])


def test_a_marker_name_holds_the_id_and_the_source_folder() -> None:
    digest = source_digest("s3://b/day1/000000.tar")
    assert source_digest("s3://b/day1/000001.tar") == digest  # one per folder
    assert source_digest("s3://b/day2/000000.tar") != digest
    assert source_digest("s3://b/day1/000000.tgz") != digest
    assert source_digest(str(Path("s/000000.tar").resolve())) == source_digest("s/000000.tar")
    parsed = MarkerName.parse(f"000000.{digest}.json")
    assert parsed == MarkerName("000000", digest) and parsed.name == f"000000.{digest}.json"
    assert MarkerName.parse("000000.json") == MarkerName("000000", None)
    assert MarkerName.parse("a.b.json") == MarkerName("a.b", None)
    assert MarkerName.parse("000000.parquet") is None


def test_totals_are_trusted_only_when_they_account_for_every_marker(tmp_path) -> None:
    out = str(tmp_path / "out")
    for i, samples in enumerate((3, 4)):
        source = f"s/{i:06d}.tar"
        write_json_atomic(marker_uri(out, f"{i:06d}", source), marker(source, samples=samples))
    done = {"status": "succeeded", "totals": {"committed_shards": 2, "samples": 7}}
    assert trusted_totals(done, 2).samples == 7  # type: ignore[union-attr]
    assert trusted_totals(done, 3) is None  # another run committed since
    assert trusted_totals({**done, "status": "running"}, 2) is None  # crashed mid-run
    assert trusted_totals(None, 0) is not None and trusted_totals(None, 2) is None
    recounted = recount_totals(out)
    assert (recounted.committed_shards, recounted.samples, recounted.ok) == (2, 7, 7)
    assert recounted.read_s == pytest.approx(1.0)
    # After a run: previous + this run's when they account for every marker, else recounted.
    base, run = ShardTotals(committed_shards=1, samples=100), ShardTotals(1, samples=1)
    assert final_totals(out, base, run).samples == 101
    assert final_totals(out, base, ShardTotals()).samples == 7  # one commit went uncounted
    assert final_totals(out, None, run).samples == 7


def test_failed_shards_are_bounded_in_memory_and_log_and_all_kept_in_parquet(
    tmp_path, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(failures, "SPILL_ROWS", 64)
    failed = FailedShards()
    with caplog.at_level(logging.ERROR, logger="pipeline.extract.failures"):
        for i in range(250):
            failed.add(FailedShard(f"s/{i:06d}.tar", f"error {i}"))
    assert failed.count == 250 and len(failed.first) == failures.KEEP and failed.more == 150
    assert len(caplog.records) == failures.KEEP + 1  # and one line saying the rest are counted
    uri = failed.publish(str(tmp_path / "out"))
    table = pq.read_table(uri)
    assert table.column("shard").to_pylist() == [f"s/{i:06d}.tar" for i in range(250)]
    assert table.column("error").to_pylist()[-1] == "error 249"
    assert FailedShards().publish(str(tmp_path / "none")) is None
