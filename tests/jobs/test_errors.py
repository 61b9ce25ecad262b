"""Every job failure is one line and exit 1; with -v the traceback and its cause follow; an
unreachable endpoint, credentials in a URI and a bug all end that way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobs._cli import run_main, setup_logging
from tests.support.paths import REPO
from tests.support.waiting import free_port

KEY, SECRET = "AKIAURIKEY000000001", "uri-secret-value-0123456789"


@pytest.fixture(autouse=True)
def _quiet_root_logger():
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def botocore_failure() -> int:
    from botocore.exceptions import EndpointConnectionError

    try:
        raise OSError("connection refused")
    except OSError as cause:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b") from cause


def test_an_endpoint_error_is_one_line_and_its_traceback_comes_with_v(capsys) -> None:
    assert run_main(botocore_failure) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        'error: EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:9/b"'
    ]
    setup_logging(verbose=True)
    assert run_main(botocore_failure) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "OSError: connection refused" in err  # the cause is kept
    assert err.rstrip().splitlines()[-1].startswith("error: EndpointConnectionError")


def test_a_bug_says_it_is_one(capsys) -> None:
    def bug() -> int:
        return {}["missing"]  # type: ignore[no-any-return]

    assert run_main(bug) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: unexpected KeyError") and "-v shows the traceback" in line


def run_job(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_credentials_in_a_uri_are_refused_before_anything_starts(tmp_path) -> None:
    out = tmp_path / "out"
    run = run_job(
        "jobs/extract.py",
        "--input",
        f"s3://{KEY}:{SECRET}@bucket/shards/*.tar",
        "--output",
        str(out),
    )
    assert run.returncode == 1
    assert KEY not in run.stderr + run.stdout and SECRET not in run.stderr + run.stdout
    assert run.stderr.strip().splitlines()[-1].startswith("error: CredentialsInUriError")
    assert "Traceback" not in run.stderr and "started a local Ray" not in run.stderr
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_an_unreachable_endpoint_is_one_line_from_the_pre_flight(tmp_path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    run = run_job(
        "jobs/build_index.py",
        "--descriptors",
        "s3://bucket/runs/r1",
        "--output",
        "s3://bucket/indexes/r1",
        env=env,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: PreflightError: cannot read s3://bucket/runs/r1")
    assert endpoint in last and "Traceback" not in run.stderr
    assert SECRET not in run.stderr and KEY not in run.stderr


@pytest.mark.slow
def test_workload_identity_credentials_stay_out_of_verbose_logs(s3_endpoint, tmp_path) -> None:
    """Credentials that no environment variable holds (STS hands them out for a web-identity
    token) stay out of -v's output: neither the token nor what STS returned is printed."""
    import os
    import re

    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.V0VCSURFTlRJVFlUT0tFTg.c2lnbmF0dXJl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ROLE_ARN="arn:aws:iam::123456789012:role/glam",
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
    )
    run = subprocess.run(
        [sys.executable, "jobs/inspect_output.py", "s3://no-such-bucket-wi/out", "-v"],
        cwd=REPO,
        env={**env, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = run.stdout + run.stderr
    assert run.returncode == 1 and "error:" in run.stderr  # it did reach S3 with STS's keys
    assert "V0VCSURFTlRJVFlUT0tFTg" not in text
    assert not re.search(r"ASIA[A-Z0-9]{12,}", text)
    assert not re.search(r"<(SecretAccessKey|SessionToken)>[^*<]", text)


@pytest.mark.parametrize("flag", [["-k", "0"], ["-k", "-1"], ["--aqe", "0"], ["--nprobe", "0"]])
def test_search_counts_below_one_are_refused_before_anything_runs(flag, capsys) -> None:
    from jobs import search_index

    with pytest.raises(SystemExit) as e:
        search_index.main(["--index", "/nowhere", "--key", "a", "--descriptors", "/x", *flag])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_keys_with_control_characters_print_as_one_line() -> None:
    from jobs._cli import printable

    assert printable("a\nquery b (index 1") == "a\\nquery b (index 1"
    assert printable("plain/é key.jpg") == "plain/é key.jpg"
