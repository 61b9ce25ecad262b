"""Waiting for a cluster to accept jobs: a dashboard that answers its version but drops job
submissions while it starts is waited for until the timeout, never a crash of the caller
(`make demo` once died of requests' ConnectionError, which is not the builtin one); a head
that has exited is not waited for."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import ray

from pipeline.runtime.cluster import wait_for_job_submission


class _Starting(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the version check passes
        body = json.dumps(
            {"version": "4", "ray_version": ray.__version__, "ray_commit": ray.__commit__,
             "session_name": "starting"}
        ).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # a submission: the connection closes without a response
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_dashboard_that_drops_job_submissions_is_waited_for_until_the_timeout() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Starting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(TimeoutError, match="accepted no job in 1s"):
            wait_for_job_submission(url, timeout_s=1.0)
    finally:
        server.shutdown()
        server.server_close()


def test_a_head_that_exited_is_not_waited_for() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Starting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:  # a timeout this long would fail the test if it were waited for
        with pytest.raises(ChildProcessError, match="exited"):
            wait_for_job_submission(url, timeout_s=3600.0, head_alive=lambda: False)
    finally:
        server.shutdown()
        server.server_close()
