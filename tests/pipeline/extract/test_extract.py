"""End to end through jobs/extract.py on a real local Ray cluster and the moto S3 server:
exactly-once output, idempotent re-runs, refused config changes, crash recovery."""

from __future__ import annotations

import os
import re
import subprocess

from jobs.extract import main as extract_main
from pipeline.io.layout import job_uri, marker_uri
from pipeline.io.storage import read_json
from tests.support.extraction import (
    IMAGE_SIZE,
    assert_exactly_once,
    expected_keys,
    extract_command,
    output_listing,
    shard_pattern,
)

ARGS = ["--image-size", str(IMAGE_SIZE), "--batch-size", "4", "--retry-backoff", "0"]


def test_extract_end_to_end_then_idempotent_then_mismatch(ray_local, shards, capsys) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/r1"
    assert extract_main(["--input", shard_pattern(shards), "--output", output, *ARGS]) == 0
    assert_exactly_once(output, 3)
    job = read_json(job_uri(output))
    assert job["status"] == "succeeded" and job["totals"]["committed_shards"] == 3
    assert job["totals"]["ok"] == sum(len(expected_keys(s)[0]) for s in range(3))
    assert (
        job["versions"]["torch"] and job["weights_sha256"] == job["fingerprint"]["weights_sha256"]
    )
    assert [w["device"] for w in job["workers"]] == ["cpu"]

    # Idempotent: a re-run skips every shard and writes nothing.
    before = output_listing(output)
    capsys.readouterr()
    assert extract_main(["--input", shard_pattern(shards), "--output", output, *ARGS]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert output_listing(output) == before

    # A different configuration is refused with one line, and nothing is written.
    args = ["--input", shard_pattern(shards), "--output", output, "--image-size", "80"]
    assert extract_main(args) == 1
    err = capsys.readouterr().err
    assert "different model or configuration" in err and "image_size" in err
    assert "Traceback" not in err
    assert output_listing(output) == before

    # --precision auto (the default) was resolved on the actors and recorded resolved: the
    # other precision is refused, the resolved one named explicitly is the same configuration.
    resolved = job["fingerprint"]["precision"]
    assert job["config"]["precision"] == "auto" and resolved in ("fp32", "bf16")
    assert {w["precision"] for w in job["workers"]} == {resolved}
    base = ["--input", shard_pattern(shards), "--output", output, *ARGS]
    other = "fp32" if resolved == "bf16" else "bf16"
    assert extract_main([*base, "--precision", other]) == 1
    assert "differs in: precision" in capsys.readouterr().err
    assert extract_main([*base, "--precision", resolved]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert output_listing(output) == before


def test_actor_killed_mid_shard_is_restarted_and_the_shard_requeued(
    ray_local, shards, tmp_path, monkeypatch
) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/crash"
    monkeypatch.setenv("GLAM_FAILPOINTS", "actor_crash_in_shard=000001")
    monkeypatch.setenv("GLAM_FAILPOINT_DIR", str(tmp_path))
    assert extract_main(["--input", shard_pattern(shards), "--output", output, *ARGS]) == 0
    assert (tmp_path / "actor_crash_in_shard-000001.fired").exists()  # it did crash
    assert_exactly_once(output, 3)


def test_driver_killed_mid_job_then_rerun_is_exactly_once(ray_local, shards, tmp_path) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/driver"
    cmd = extract_command(shards, output, "--ray-address", ray_local, "--actors", "1", *ARGS[2:])
    env = {
        **os.environ,
        "GLAM_FAILPOINTS": "driver_exit_after_shards=1",
        "GLAM_FAILPOINT_DIR": str(tmp_path),
    }
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode != 0, crashed.stderr[-2000:]
    committed = [s for s in ("000000", "000001", "000002") if read_json(marker_uri(output, s))]
    # It died after the first shard's result; the actor held a second shard, which may have
    # committed meanwhile; the third was never handed out.
    assert 1 <= len(committed) <= 2 and not read_json(marker_uri(output, "000002"))
    assert read_json(job_uri(output))["status"] == "running"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done, skipped = map(int, re.search(r"(\d+) done, (\d+) skipped", rerun.stdout).groups())
    assert done + skipped == 3 and skipped >= 1 and done >= 1
    assert_exactly_once(output, 3)
    assert read_json(job_uri(output))["status"] == "succeeded"


def test_failed_shard_is_reported_and_the_others_complete(ray_local, shards, capsys) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/partial"
    folder = shards[0].rsplit("/", 1)[0]
    pattern = f"{folder}/{{000000..000003}}.tar"  # 000003 does not exist
    args = ["--input", pattern, "--output", output, "--shard-attempts", "2", *ARGS]
    assert extract_main(args) == 1
    assert "failed shard: " in capsys.readouterr().err
    job = read_json(job_uri(output))
    assert job["status"] == "failed"
    assert [f["shard"] for f in job["failed_shards"]] == [f"{folder}/000003.tar"]
    assert_exactly_once(output, 3)
