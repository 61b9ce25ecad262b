"""The requests a block of code sends to the moto server, from moto's own recorder."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


def _post(endpoint: str, action: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST")
    urllib.request.urlopen(request, timeout=30).close()


@contextmanager
def recorded_requests(endpoint: str) -> Iterator[list[tuple[str, str]]]:
    """Yields a list that holds, after the block, the (method, path) of every request the
    server received during it."""
    requests: list[tuple[str, str]] = []
    _post(endpoint, "reset-recording")
    _post(endpoint, "start-recording")
    try:
        yield requests
    finally:
        _post(endpoint, "stop-recording")
        url = f"{endpoint}/moto-api/recorder/download-recording"
        with urllib.request.urlopen(url, timeout=30) as response:
            lines = response.read().decode().splitlines()
        for line in lines:
            entry = json.loads(line)
            path = "/" + entry["url"].split("://", 1)[-1].split("/", 1)[-1]
            requests.append((entry["method"], path))


def requests_by_kind(requests: list[tuple[str, str]], bucket: str) -> Counter[str]:
    """The requests to ``bucket`` by kind: LIST (a GET of the bucket with a query), GET, HEAD, ...
    of objects. Requests to other buckets are not counted: the server is shared by everything
    in the test process, and a Ray worker left from an earlier test may still read its own."""
    out: Counter[str] = Counter()
    for method, path in requests:
        parts = urlsplit(path)
        if parts.path.strip("/").split("/", 1)[0] != bucket:
            continue
        is_list = method == "GET" and parts.path.strip("/") == bucket and "list-type" in parts.query
        out["LIST" if is_list else method] += 1
    return out
