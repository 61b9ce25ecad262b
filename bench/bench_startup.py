"""The extraction driver's start-up and resume cost: requests before the first dispatch, time,
peak memory; this tree against another (``--before``: a clone of an earlier commit), in one
run.

What is timed is what ``run_extraction`` does before it hands out a shard, without Ray and
the model (constant, and the same in both trees): list the input (a brace range), read what
the output holds, and if anything is left to do, probe the output, take its lease and read
it again under the lease. Outputs are made up directly, without extraction: a ``_job.json``
and a commit marker per committed shard (~1 KB, a real marker's body), each tree's own
layout (markers named ``<id>.json`` before, ``<id>.<digest>.json`` after), for a fresh, a
half done and a finished output.

- ``--s3 N``: on a local S3 endpoint (moto's server, in this process) with N shards; the
  requests each start-up sends are counted from moto's request recorder. The markers are put
  into moto's store directly (a PUT through moto takes ~50 ms).
- ``--local N``: in a local folder with N shards (1M simulated shards: 1M files).

Each start-up runs in a child process (``--child``) with the tree's code on its path; its
wall time and peak RSS (and its RSS once imports are done) come back as JSON.

    .venv/bin/python bench/bench_startup.py --before /tmp/glam-before --s3 10000 --local 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
CONFIG = {"backbone": "resnet101", "dim": 512}
SCENARIOS = {"fresh": 0.0, "half": 0.5, "finished": 1.0}


def fingerprints() -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's fingerprint (``--precision auto``) and the one its markers hold (fp32)."""
    from pipeline.extract.spec import ExtractionSpec, fingerprint

    spec = ExtractionSpec(precision="auto")
    return fingerprint(spec, CONFIG, "0" * 64), fingerprint(spec, CONFIG, "0" * 64, "fp32")


def marker_body(sid: str, source: str, fp: dict[str, Any]) -> bytes:
    from pipeline.extract.stats import ShardStats

    stats = ShardStats(shard=sid, source=source, samples=1000, ok=998, errors=2, bytes=10**8)
    stats.errors_by_type = {"corrupt": 2}
    body = {**stats.to_dict(), "read_s": 1.5, "infer_s": 30.0, "wall_s": 33.0, "fingerprint": fp}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def marker_name(sid: str, source: str, layout: str) -> str:
    if layout == "before":
        return f"{sid}.json"
    from pipeline.io.layout import marker_uri

    return marker_uri("o", sid, source).rsplit("/", 1)[1]


def made_up_output(
    put: Any, output: str, shards: list[str], done: float, layout: str
) -> dict[str, bytes]:
    """The objects of an output with ``done`` of ``shards`` committed, ``put`` into a store."""
    _, stored = fingerprints()
    committed = int(len(shards) * done)
    template = marker_body("@SID@", "@SOURCE@", stored)
    objects: dict[str, bytes] = {}
    for s in shards[:committed]:
        sid = s.rsplit("/", 1)[1][: -len(".tar")]
        body = template.replace(b"@SID@", sid.encode()).replace(b"@SOURCE@", s.encode())
        objects[f"{output}/_shards/{marker_name(sid, s, layout)}"] = body
    if committed:
        totals = {"committed_shards": committed, "samples": 1000 * committed}
        record = {"fingerprint": stored, "status": "succeeded", "totals": totals}
        objects[f"{output}/_job.json"] = json.dumps(record).encode()
    put(objects)
    return objects


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since ``reset_peak``) of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Start ``VmHWM`` over from the current RSS (Linux: ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(output: str, pattern: str) -> dict[str, Any]:
    """One start-up, as ``run_extraction`` does it up to the first dispatch."""
    from pipeline.extract.spec import ExtractionSpec, fingerprint
    from pipeline.io.shards import list_shards, shard_id
    from pipeline.runtime.lease import Lease
    from pipeline.runtime.preflight import preflight

    try:
        from pipeline.extract.resume import scan_output

        def check(shards: list[str]) -> tuple[Any, dict[str, Any]]:
            scan = scan_output(output, fp, shards)
            return scan.previous, scan.committed

    except ImportError:  # the tree before: every marker read
        from pipeline.extract.driver import check_output

        def check(shards: list[str]) -> tuple[Any, dict[str, Any]]:
            previous, committed, _ = check_output(output, fp, shards)
            return previous, committed

    fp = fingerprint(ExtractionSpec(precision="auto"), CONFIG, "0" * 64)
    reset_peak()  # the imports' peak (torch) is not the start-up's
    base = memory_mb("VmRSS")
    t0 = time.perf_counter()
    shards = list_shards(pattern)
    previous, committed = check(shards)
    todo = len(shards)
    if not (previous is not None and len(committed) == len(shards)):
        preflight(read=[], write=[output], on_cluster=False)
        with Lease(output, "extract"):
            del committed
            previous, committed = check(shards)
            todo = sum(1 for s in shards if shard_id(s) not in committed)
    else:
        todo = 0
    wall = time.perf_counter() - t0
    peak = memory_mb("VmHWM")
    return {
        "startup_s": wall,
        "todo": todo,
        "rss_base_mb": base,
        "rss_peak_mb": peak,
        "startup_mb": peak - base,
    }


def run_child(tree: Path, output: str, pattern: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, str(HERE / "bench" / "bench_startup.py"), "--child", output, pattern]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"start-up in {tree} failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_s3(trees: dict[str, Path], n: int) -> list[dict[str, Any]]:
    """Every tree and scenario against one moto server, requests counted."""
    os.environ.setdefault(
        "MOTO_RECORDER_FILEPATH", os.path.join(tempfile.mkdtemp(), "moto-recording")
    )
    import boto3
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(HERE))
    from tests.support.s3_recording import recorded_requests, requests_by_kind

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    bucket = "bench-startup"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    store = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]

    def put(objects: dict[str, bytes]) -> None:
        for key, body in objects.items():
            store.put_object(bucket, key, body)

    shards = [f"s3://{bucket}/shards/{i:07d}.tar" for i in range(n)]
    pattern = f"s3://{bucket}/shards/{{0000000..{n - 1:07d}}}.tar"
    rows = []
    try:
        for layout, tree in trees.items():
            for scenario, done in SCENARIOS.items():
                output = f"runs/{layout}-{scenario}-{n}"
                made_up_output(put, output, shards, done, layout)
                with recorded_requests(endpoint) as requests:
                    measured = run_child(tree, f"s3://{bucket}/{output}", pattern)
                counts = requests_by_kind(requests, bucket)
                total = sum(counts.values())
                rows.append(
                    {
                        "store": "s3 (moto)",
                        "shards": n,
                        "tree": layout,
                        "scenario": scenario,
                        **measured,
                        "requests": dict(counts),
                        "requests_per_shard": total / n,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def bench_local(trees: dict[str, Path], n: int, root: Path) -> list[dict[str, Any]]:
    """Every tree and scenario in a local folder (1M files: the simulated million)."""
    shards = [f"{root}/shards/{i:07d}.tar" for i in range(n)]
    pattern = f"{root}/shards/{{0000000..{n - 1:07d}}}.tar"

    def put(objects: dict[str, bytes]) -> None:
        for folder in {os.path.dirname(p) for p in objects}:
            os.makedirs(folder, exist_ok=True)
        for path, body in objects.items():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, body)
            os.close(fd)

    rows = []
    for layout, tree in trees.items():
        for scenario, done in SCENARIOS.items():
            output = f"{root}/runs/{layout}-{scenario}"
            t = time.perf_counter()
            made_up_output(put, output, shards, done, layout)
            made = time.perf_counter() - t
            measured = run_child(tree, output, pattern)
            shutil.rmtree(output)
            rows.append(
                {
                    "store": "local folder",
                    "shards": n,
                    "tree": layout,
                    "scenario": scenario,
                    **measured,
                    "made_up_s": made,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="a clone of the tree to compare with")
    p.add_argument("--s3", type=int, nargs="*", default=[], help="shard counts on moto's S3")
    p.add_argument(
        "--s3-after", type=int, nargs="*", default=[], help="shard counts on S3, this tree only"
    )
    p.add_argument("--local", type=int, nargs="*", default=[], help="shard counts locally")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bench-startup")
    p.add_argument("--child", nargs=2, metavar=("OUTPUT", "PATTERN"), help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="write every row here too")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    trees = {"before": args.before} if args.before else {}
    trees["after"] = HERE
    rows = []
    for n in args.s3:
        rows += bench_s3(trees, n)
    for n in args.s3_after:
        rows += bench_s3({"after": HERE}, n)
    for n in args.local:
        rows += bench_local(trees, n, args.root)
        shutil.rmtree(args.root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
