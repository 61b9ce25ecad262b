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


def test_query_strings_of_presigned_urls_are_masked() -> None:
    token = "IQoJb3JpZ2luX2VjEXAMPLETOKEN"
    url = (
        "https://bucket.s3.amazonaws.com/w.safetensors?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAQUERY0001%2F20261203&X-Amz-Security-Token={token}#frag"
    )
    text = redact_text(f"cannot read {url}: 403")
    assert text == "cannot read https://bucket.s3.amazonaws.com/w.safetensors?***: 403"
    assert (
        redact_text(f"weights '{url}'")
        == "weights 'https://bucket.s3.amazonaws.com/w.safetensors?***'"
    )
    assert redact_text("s3://bucket/shards/000000.tar") == "s3://bucket/shards/000000.tar"


def test_secrets_containing_slashes_are_user_info() -> None:
    uri = "s3://AKIAEXAMPLE0001:wJalrXUtnFEMI/K7MDENG/bPxRfiCY@bucket/a.tar"
    assert has_userinfo(uri) and redact_text(uri) == "s3://***@bucket/a.tar"
    assert not has_userinfo("http://127.0.0.1:9000/bucket/a@b.tar")


def test_credentials_are_masked_by_their_shape_whatever_their_origin() -> None:
    sts = (
        "<Credentials><AccessKeyId>ASIARZPUZDIKAEOA6RDP</AccessKeyId>"
        "<SecretAccessKey>objdG+Vx/LYBe</SecretAccessKey><SessionToken>FQoGZX==</SessionToken>"
    )
    headers = "{'X-Amz-Security-Token': b'FQoGZXIvYXdz', 'Authorization': b'AWS4 Signature=ab12'}"
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJnbGFtIn0.c2ln"
    text = redact_text(" ".join([sts, headers, jwt, "AKIAIOSFODNN7EXAMPLE"]))
    for secret in ("ASIARZPUZDIKAEOA6RDP", "objdG", "FQoGZX", "ab12", "eyJzdWIi", "AKIAIOSFODNN7"):
        assert secret not in text
    assert "<SecretAccessKey>***</SecretAccessKey>" in text
