"""End to end through jobs/extract.py on a real local Ray cluster and the moto S3 server:
exactly-once output, idempotent re-runs, refused config changes, crash recovery."""

from __future__ import annotations

import logging
import os
import re
import subprocess

import pytest

from jobs.extract import main as extract_main
from pipeline.io.layout import descriptors_folder, job_uri, marker_uri
from pipeline.io.storage import read_json, write_bytes_atomic
from tests.support.extraction import (
    IMAGE_SIZE,
    assert_exactly_once,
    expected_keys,
    extract_command,
    output_listing,
    shard_pattern,
)
from tests.support.s3_recording import recorded_requests

from .test_registration import assert_tables_match_markers, table_names

ARGS = ["--image-size", str(IMAGE_SIZE), "--batch-size", "4", "--retry-backoff", "0"]


@pytest.fixture
def flags(tiny_weights: str) -> list[str]:
    """The tests' flags: their image size, small batches, no retry wait, the small model."""
    return [*ARGS, "--weights", tiny_weights]


def test_extract_end_to_end_then_idempotent_then_mismatch(ray_local, shards, capsys, flags) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/r1"
    assert extract_main(["--input", shard_pattern(shards), "--output", output, *flags]) == 0
    assert_exactly_once(output, 3)
    assert_tables_match_markers(output)  # the Delta tables list the committed files, once
    job = read_json(job_uri(output))
    assert job["status"] == "succeeded" and job["totals"]["committed_shards"] == 3
    assert job["totals"]["ok"] == sum(len(expected_keys(s)[0]) for s in range(3))
    assert (
        job["versions"]["torch"] and job["weights_sha256"] == job["fingerprint"]["weights_sha256"]
    )
    assert [w["device"] for w in job["workers"]] == ["cpu"]

    # Idempotent: a re-run skips every shard and writes nothing, not even a probe.
    before = output_listing(output)
    capsys.readouterr()
    with recorded_requests(os.environ["AWS_ENDPOINT_URL"]) as requests:
        assert extract_main(["--input", shard_pattern(shards), "--output", output, *flags]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert output_listing(output) == before
    bucket = output.removeprefix("s3://").split("/", 1)[0]  # not another test's leftover worker
    ours = [r for r in requests if r[1].strip("/").split("/", 1)[0] == bucket]
    writes = [r for r in ours if r[0] in ("PUT", "POST", "DELETE")]
    assert ours and not writes, writes

    # A different configuration is refused with one line, and nothing is written.
    args = ["--input", shard_pattern(shards), "--output", output, *flags, "--image-size", "80"]
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
    base = ["--input", shard_pattern(shards), "--output", output, *flags]
    other = "fp32" if resolved == "bf16" else "bf16"
    assert extract_main([*base, "--precision", other]) == 1
    assert "differs in: precision" in capsys.readouterr().err
    assert extract_main([*base, "--precision", resolved]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert output_listing(output) == before


def test_actor_killed_mid_shard_is_restarted_slowly_waited_for_and_the_shard_requeued(
    ray_local, shards, tmp_path, monkeypatch, caplog, flags
) -> None:
    """An actor crashes mid-shard; restarted, it sleeps 4 s before it loads the model: four
    times the driver's pacing of its pings (``recovery.PING_INTERVAL_S``), so every call sent
    meanwhile would fail, more of them than the shard's allowed deaths. One crash is one
    death, whatever the machine's speed: the shard is requeued and committed exactly once,
    never failed for 'actor died N times'."""
    output = shards[0].rsplit("/", 2)[0] + "/runs/slow-restart"
    monkeypatch.setenv("GLAM_FAILPOINTS", "actor_crash_in_shard=000000;actor_restart_delay_s=4")
    monkeypatch.setenv("GLAM_FAILPOINT_DIR", str(tmp_path))
    args = ["--input", shard_pattern(shards), "--output", output, "--actors", "1", *flags]
    with caplog.at_level(logging.INFO):
        assert extract_main(args) == 0
    assert (tmp_path / "actor_crash_in_shard-000000.fired").exists()
    assert_exactly_once(output, 3)
    job = read_json(job_uri(output))
    assert job["actor_restarts"] == 1 and job["status"] == "succeeded"
    assert len(re.findall(r"actor 0 was restarted \(pid \d+ -> \d+\)", caplog.text)) == 1


def test_failed_shards_are_reported_with_their_causes_and_the_others_complete(
    ray_local, shards, tmp_path, monkeypatch, capsys, flags
) -> None:
    """Two shards fail, each for its own reason, in one run: 000001 kills every actor that
    runs it, 000003 does not exist. Each is reported with its cause; the others commit
    exactly once."""
    output = shards[0].rsplit("/", 2)[0] + "/runs/poison"
    folder = shards[0].rsplit("/", 1)[0]
    pattern = f"{folder}/{{000000..000003}}.tar"  # 000003 does not exist
    monkeypatch.setenv("GLAM_FAILPOINTS", "actor_crash_always_in_shard=000001")
    monkeypatch.setenv("GLAM_FAILPOINT_DIR", str(tmp_path))
    args = ["--input", pattern, "--output", output, "--actors", "1", *flags]
    args += ["--max-shard-restarts", "1", "--shard-attempts", "2"]
    assert extract_main(args) == 1
    err = capsys.readouterr().err
    # The first death hits both shards the actor held: each is then run alone, so the bystander
    # commits, and 000001 dies twice more on its own (one restart allowed) and fails, with
    # Ray's reason. Three restarts in all, each counted once. (000003 is handed out after the
    # shards run alone: it never shares the actor with 000001.)
    found = re.search(r"failed shard: \S+000001.tar: actor died 2 times \(last: (.+)\)", err)
    # The dead process's exit as Ray recorded it, not the closed connection of the call.
    assert found and "exits with a connection error" in found.group(1), err[-2000:]
    assert f"failed shard: {folder}/000003.tar: {folder}/000003.tar does not exist" in err, err
    job = read_json(job_uri(output))
    assert job["status"] == "failed" and job["actor_restarts"] == 3
    failed = sorted(f["shard"] for f in job["failed_shards"])
    assert failed == [f"{folder}/000001.tar", f"{folder}/000003.tar"]
    assert read_json(marker_uri(output, "000000")) and read_json(marker_uri(output, "000002"))
    assert_exactly_once(output, 3, failed={1})


def test_gpu_actors_on_a_cluster_without_gpus_fail_naming_the_shortfall(
    ray_local, shards, capsys, caplog, flags
) -> None:
    """--device gpu on a GPU-less cluster: said at once, and an error once the start timeout
    is over (no GPU can ever come, so the outcome does not depend on the timeout's length)."""
    output = shards[0].rsplit("/", 2)[0] + "/runs/no-gpu"
    args = ["--input", shard_pattern(shards), "--output", output, *flags]
    args += ["--device", "gpu", "--actors", "1", "--start-timeout-s", "1"]
    with caplog.at_level(logging.WARNING):
        assert extract_main(args) == 1
    assert "1 GPU workers are asked for and the cluster has 0 GPU(s) now" in caplog.text
    err = capsys.readouterr().err
    assert "ActorStartError: 1 of 1 actors did not start within 1 s" in err
    assert "use --device cpu" in err and "Traceback" not in err


def test_driver_killed_mid_job_then_rerun_is_exactly_once(
    ray_local, shards, tmp_path, monkeypatch, capsys, flags
) -> None:
    """The hard crash is a driver process of its own (``os._exit``); the interrupted run and
    the rerun after it run in this process, as ``jobs/extract.py`` would."""
    output = shards[0].rsplit("/", 2)[0] + "/runs/driver"
    cmd = extract_command(shards, output, "--ray-address", ray_local, "--actors", "1", *flags[2:])
    env = {
        **os.environ,
        "GLAM_FAILPOINTS": "driver_exit_after_shards=1",
        "GLAM_FAILPOINT_DIR": str(tmp_path),
    }
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode != 0, crashed.stderr[-2000:]
    # Actors get nothing by reference that Ray may lose before a restart (ray#53727): Ray
    # says so on the driver's stderr when it creates such an actor, as this run did.
    assert "starting 1 CPU actors" in crashed.stderr, crashed.stderr[-2000:]
    assert "constructor arguments in the object store" not in crashed.stderr
    committed = [s for s in ("000000", "000001", "000002") if read_json(marker_uri(output, s))]
    # It died after the first shard's result; the actor held a second shard, which may have
    # committed meanwhile; the third was never handed out.
    assert 1 <= len(committed) <= 2 and not read_json(marker_uri(output, "000002"))
    assert read_json(job_uri(output))["status"] == "running"  # a hard crash cannot say more
    # It died between the shard's commit and its registration (a batch is due every 100
    # shards or 30 s): the table holds no file, and never one whose shard is not committed.
    assert table_names(descriptors_folder(output)) == set()
    # Ctrl-C after this run's first commit: exit 130, and the record says it was interrupted.
    # (Only this failpoint is armed here: the crash's has fired, and would end this process.)
    monkeypatch.setenv("GLAM_FAILPOINTS", "driver_interrupt_after_shards=1")
    monkeypatch.setenv("GLAM_FAILPOINT_DIR", str(tmp_path))
    args = cmd[cmd.index("--input") :]
    capsys.readouterr()
    assert extract_main(args) == 130
    assert "error: interrupted" in capsys.readouterr().err
    assert read_json(job_uri(output))["status"] == "interrupted"
    monkeypatch.delenv("GLAM_FAILPOINTS")
    assert extract_main(args) == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    done, skipped = map(int, re.search(r"(\d+) done, (\d+) skipped", out).groups())
    assert done + skipped == 3 and skipped >= 2
    assert_exactly_once(output, 3)
    assert_tables_match_markers(output)  # reconciled: every committed shard once
    assert read_json(job_uri(output))["status"] == "succeeded"


def test_two_extractions_started_together_end_done_or_refused(
    ray_local, shards, capsys, flags
) -> None:
    """Two runs with different configurations on one output, two drivers (a process of its
    own, started first, and this one): one finishes, the other is refused (by the lease while
    the first runs, or by the fingerprint after it); the output holds one configuration's
    descriptors, exactly once."""
    output = shards[0].rsplit("/", 2)[0] + "/runs/together"
    other = subprocess.Popen(
        extract_command(shards, output, "--ray-address", ray_local, *flags, "--image-size", "64"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        capsys.readouterr()
        args = ["--input", shard_pattern(shards), "--output", output, *flags]
        here = (extract_main([*args, "--image-size", "72"]), capsys.readouterr().err)
    finally:
        _, other_err = other.communicate(timeout=600)
    outcomes = [(other.returncode, other_err), here]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 1], outcomes
    winner = next(i for i, (code, _) in enumerate(outcomes) if code == 0)
    refusal = outcomes[1 - winner][1].strip().splitlines()[-1]
    assert (
        "is being written by another run: extract (pid" in refusal
        or "was made by a different model or configuration" in refusal
    ), refusal
    assert_exactly_once(output, 3)
    job = read_json(job_uri(output))
    assert job["status"] == "succeeded"
    assert job["fingerprint"]["image_size"] == (64, 72)[winner]
    assert read_json(marker_uri(output, "000002"))["fingerprint"] == job["fingerprint"]


def test_a_configuration_that_committed_nothing_does_not_bind_the_output(
    ray_local, shards, capsys, caplog, flags
) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/unbound"
    garbage = shards[0].rsplit("/", 1)[0] + "/000009.tar"
    write_bytes_atomic(garbage, b"not a tar file " * 100)  # its shard fails: nothing commits
    args = ["--output", output, *flags, "--shard-attempts", "1", "--image-size", "80"]
    assert extract_main(["--input", garbage, *args]) == 1
    assert read_json(job_uri(output))["fingerprint"]["image_size"] == 80  # committed nothing
    with caplog.at_level(logging.WARNING, logger="pipeline.extract.driver"):
        assert extract_main(["--input", shard_pattern(shards), "--output", output, *flags]) == 0
    assert "(differs in: image_size) committed no shard; this run's replaces it" in caplog.text
    assert_exactly_once(output, 3)
    # Now the output is bound: the first configuration is refused.
    again = ["--input", shard_pattern(shards), "--output", output, *flags, "--image-size", "80"]
    assert extract_main(again) == 1
    assert "different model or configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--image-size", "20000"], "image size must be in 32..4096"),
        (["--image-size", "4096", "--scales", "1,2"], "at most 6144 px are accepted"),
        (["--image-size", "10000000"], "image size must be in 32..4096"),
    ],
)
def test_sizes_beyond_the_stated_maximum_are_refused(tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "out"
    assert extract_main(["--input", f"{tmp_path}/shards/*.tar", "--output", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_the_input_folder_is_refused_as_output(tmp_path, capsys) -> None:
    from jobs.build_index import main as build_main
    from jobs.prepare_gldv2 import main as prepare_main
    from jobs.train import main as train_main

    folder = tmp_path / "shards"
    assert extract_main(["--input", f"{folder}/*.tar", "--output", f"{folder}/"]) == 1
    assert f"--output {folder}/ is the folder of the input shards" in capsys.readouterr().err
    assert train_main(["--input", f"{folder}/*.tar", "--output", str(folder)]) == 1
    assert "is the folder of the training shards" in capsys.readouterr().err
    assert build_main(["--descriptors", str(folder), "--output", f"file://{folder}"]) == 1
    assert "is the folder of the descriptors" in capsys.readouterr().err
    args = ["--csv", f"{folder}/t.csv", "--images", str(folder), "--output", str(folder)]
    assert prepare_main(args) == 1
    assert "is the folder of the images" in capsys.readouterr().err
    assert not folder.exists()
