"""Keeping credentials out of logs and records: URL user-info and query strings, secret-looking
keys, and the values of the process's credential variables are masked."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from typing import Any

MASK = "***"
# user-info: ``user@`` or ``key:secret@``, where a secret may hold "/" (AWS secret keys do);
# ``host:port/path@…`` is not user-info (a port is digits).
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/@\s:]+:(?!\d+(?:/|$))[^@\s]*|[^/@\s:]+)@"
)
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|credential|session|^key$|access_key|key_id)", re.IGNORECASE
)
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "GLAM_STORAGE_OPTIONS",
)


def _option_secrets(options: Any) -> list[str]:
    """String values under secret-looking keys of a JSON-like object (``GLAM_STORAGE_OPTIONS``:
    ``key``, ``secret``, ``token``, nested ``client_kwargs``' ``aws_secret_access_key``, …)."""
    if isinstance(options, dict):
        out = []
        for k, v in options.items():
            if isinstance(v, str) and _SECRET_KEY.search(str(k)):
                out.append(v)
            else:
                out += _option_secrets(v)
        return out
    if isinstance(options, list):
        return [s for v in options for s in _option_secrets(v)]
    return []


def _secret_values() -> list[str]:
    values = [os.environ.get(k, "") for k in _SECRET_ENV]
    with contextlib.suppress(json.JSONDecodeError):  # storage_options refuses it, loudly
        values += _option_secrets(json.loads(os.environ.get("GLAM_STORAGE_OPTIONS") or "{}"))
    return [v for v in values if len(v) >= 6]


# A URL's query string and fragment: presigned URLs carry their credentials there
# (X-Amz-Credential, X-Amz-Security-Token, X-Amz-Signature, sig=…). Masked whole: nothing in
# a query is needed to name the object once it has been read.
_QUERY = re.compile(
    r"(?P<url>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"]*)[?#](?:[^\s'\"]*[^\s'\":;,.)\]])?"
)


# Credentials by their shape, whatever their origin (a shared credentials file, STS, a
# web-identity token): AWS key ids, the elements and headers that carry secrets and tokens,
# signatures, and JWTs.
_CREDENTIAL_SHAPES = (  # each keeps its ``pre`` group and masks the rest
    re.compile(r"(?P<pre>\b)(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"),
    re.compile(r"(?P<pre><(?:SecretAccessKey|SessionToken|AccessKeyId|Token)>)[^<]+"),
    re.compile(
        r"(?i)(?P<pre>(?:x-amz-security-token|authorization|x-amz-credential|signature)"
        r"['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}]+"
    ),
    re.compile(r"(?P<pre>\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
)


def has_userinfo(uri: str) -> bool:
    """True when a URI carries user-info (``s3://KEY:SECRET@bucket/...``)."""
    return _USERINFO.match(uri.strip()) is not None


def redact_text(text: str) -> str:
    """``text`` with URL user-info and query strings masked, and the values of the process's
    credential variables and ``GLAM_STORAGE_OPTIONS``' secrets replaced by ``MASK``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m.group('url')}?{MASK}", text)
    for shape in _CREDENTIAL_SHAPES:
        text = shape.sub(lambda m: f"{m.group('pre')}{MASK}", text)
    for value in _secret_values():
        text = text.replace(value, MASK)
    return text


def redact(obj: Any) -> Any:
    """A copy of a JSON-like object with secret-named keys and secret values masked."""
    if isinstance(obj, dict):
        return {k: MASK if _SECRET_KEY.search(str(k)) and v else redact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


class RedactingFilter(logging.Filter):
    """Masks credentials in every log record that passes through the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
