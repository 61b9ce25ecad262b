"""Credentials never travel: URIs that carry them are refused before anything reads or logs
them, and every secret value the process knows is masked, those inside
GLAM_STORAGE_OPTIONS included."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.io.redact import RedactingFilter, has_userinfo, redact_text
from pipeline.io.storage import CredentialsInUriError, check_uri, filesystem

KEY_ID = "AKIAOPTIONSONLY00042"
SECRET = "options-only-secret-0123456789"


@pytest.mark.parametrize(
    "uri",
    ["s3://AKIAXXXX:SECRETVALUE@bucket/shards/*.tar", "s3://AKIAXXXX@bucket/x", "http://u:p@h/x"],
)
def test_uris_with_credentials_are_refused_without_repeating_them(uri: str) -> None:
    assert has_userinfo(uri)
    for refuse in (check_uri, filesystem):
        with pytest.raises(CredentialsInUriError) as e:
            refuse(uri)
        assert "SECRETVALUE" not in str(e.value) and "AKIAXXXX" not in str(e.value)
        assert "***@" in str(e.value)


@pytest.mark.parametrize("uri", ["s3://bucket/x", "/data/a@b/x.tar", "file:///tmp/x"])
def test_plain_uris_pass(uri: str) -> None:
    assert not has_userinfo(uri) and check_uri(uri) == uri


def test_values_inside_glam_storage_options_are_masked(monkeypatch) -> None:
    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"region_name": "eu-west-1"}}
    monkeypatch.setenv("GLAM_STORAGE_OPTIONS", json.dumps(options))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    line = f"botocore: Credentials found: access_key={KEY_ID}, secret {SECRET}; eu-west-1"
    assert redact_text(line) == "botocore: Credentials found: access_key=***, secret ***; eu-west-1"
    record = logging.LogRecord("botocore", logging.DEBUG, __file__, 1, "%s", (line,), None)
    assert RedactingFilter().filter(record)
    assert KEY_ID not in record.getMessage() and SECRET not in record.getMessage()
