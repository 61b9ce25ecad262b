"""A run with S3 credentials in the environment and in storage options leaves no credential in
its logs, its records or its Parquet metadata."""

from __future__ import annotations

import json
import logging
import os
import subprocess

from pipeline.io.redact import RedactingFilter, redact, redact_text
from pipeline.io.storage import filesystem
from tests.support.extraction import extract_command

KEY_ID = "AKIAGLAMTESTKEY00001"
SECRET = "glam-secret-value-0123456789abcdef"
TOKEN = "glam-session-token-9876543210"


def test_redaction_masks_userinfo_secret_keys_and_env_values(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert redact_text(f"http://user:{SECRET}@minio:9000/b and {SECRET}") == (
        "http://***@minio:9000/b and ***"
    )
    assert redact({"secret": "x", "nested": [{"password": "p", "ok": "s3://b/k"}]}) == {
        "secret": "***",
        "nested": [{"password": "***", "ok": "s3://b/k"}],
    }
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "endpoint %s", (f"https://a:{SECRET}@host",), None
    )
    assert RedactingFilter().filter(record) and SECRET not in record.getMessage()


def test_a_run_leaves_no_credentials_behind(s3_endpoint, shards, tmp_path, tiny_weights) -> None:
    output = shards[0].rsplit("/", 2)[0] + "/runs/secrets"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "GLAM_STORAGE_OPTIONS": json.dumps({"key": KEY_ID, "secret": SECRET, "token": TOKEN}),
    }
    cmd = extract_command(
        shards, output, "-v", "--shard-attempts", "1", "--actors", "1", "--weights", tiny_weights
    )
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = run.stdout + run.stderr
    assert "shards: 3 done" in logs  # the actors' and the driver's logs are all here
    fs, path = filesystem(output)
    fs.invalidate_cache()
    written = {p: fs.cat_file(p) for p in fs.find(path)}
    assert any(p.endswith("_job.json") for p in written) and len(written) >= 10
    for secret in (KEY_ID, SECRET, TOKEN):
        assert secret not in logs
        for p, data in written.items():  # _job.json, markers, Parquet (metadata included)
            assert secret.encode() not in data, p
