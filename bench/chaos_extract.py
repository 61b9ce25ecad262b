"""Chaos run: an extraction killed again and again, re-run each time, must end exactly once.

A dedicated `ray start --head` cluster runs `jobs/extract.py` over generated shards (every bad
sample kind included). A seeded random schedule kills, at random moments, up to three times a
run, either the driver (SIGKILL of the job process: the re-run resumes) or a random ShardActor
process (SIGKILL: Ray restarts it, the driver waits for it and re-queues its shards). After each
run the committed output is checked: no duplicate descriptor, no sample in both files, every
committed shard complete. Once an output is complete, a re-run must do nothing and every sample
be in it exactly once; then a new output starts, until ``--rounds`` kills were survived.

    .venv/bin/python bench/chaos_extract.py [--rounds 12 --shards 10 --images 6 --seed 7]

Not part of `make test` (it takes minutes and uses wall-clock kill times by design).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow.dataset as ds

from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES, write_shards
from pipeline.io.layout import marker_uri
from pipeline.io.storage import read_json

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def expected(shards: int, images: int) -> tuple[set[str], dict[str, str]]:
    ok: set[str] = set()
    bad: dict[str, str] = {}
    for s in range(shards):
        ok |= {f"s{s:06d}_{i:05d}" for i in range(images)}
        ok |= {f"s{s:06d}_mode_{m.replace(';', '')}" for m in ODD_MODES}
        bad |= {f"s{s:06d}_bad_{k}": v for k, v in BAD_KINDS.items()}
    return ok, bad


def committed(output: str, shards: int) -> list[int]:
    return [s for s in range(shards) if read_json(marker_uri(output, f"{s:06d}")) is not None]


def check_output(output: str, shards: int, images: int, final: bool) -> None:
    """No duplicates, no sample in both files, every committed shard whole."""
    done = committed(output, shards)
    if not done:
        return
    files = [f"{output}/descriptors/part-{s:06d}.parquet" for s in done]
    errs = [f"{output}/errors/part-{s:06d}.parquet" for s in done]
    keys = ds.dataset(files, format="parquet").to_table(columns=["key"])["key"].to_pylist()
    err_keys = ds.dataset(errs, format="parquet").to_table(columns=["key"])["key"].to_pylist()
    ok, bad = expected(shards, images)
    want_ok = {k for k in ok if int(k[1:7]) in done}
    want_bad = {k for k in bad if int(k[1:7]) in done}
    assert len(keys) == len(set(keys)), "duplicate descriptors"
    assert set(keys) == want_ok, "descriptors differ from the committed shards' samples"
    assert set(err_keys) == want_bad and len(err_keys) == len(want_bad), "error rows differ"
    assert not set(keys) & set(err_keys), "a sample in both files"
    if final:
        assert len(done) == shards, f"only {len(done)} of {shards} shards committed"


def start_head(temp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = 6500 + os.getpid() % 500
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}",
        "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]  # fmt: skip
    name, value = RUN_MARK.decode().split("=", 1)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", name: value}
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # SIGTERM at the end: no 30 s drain
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    import ray

    deadline = time.monotonic() + 300
    while True:
        try:
            ray.init(address=address, log_to_driver=False)
            return proc, address
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(1)


# Set in the environment of this run's Ray head, which its workers inherit: only their
# processes are killed, never the actors of another cluster on the same machine.
RUN_MARK = f"GLAM_CHAOS_RUN={os.getpid()}-{time.time_ns()}".encode()


def actor_pids() -> list[int]:
    """Processes of this run's live ShardActors (Ray titles them ``ray::ShardActor``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if not title.startswith(b"ray::ShardActor"):
            continue
        try:
            mine = RUN_MARK in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mine:
            pids.append(int(entry.name))
    return pids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12, help="kills to survive")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--images", type=int, default=6, help="valid images per shard")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    root = tempfile.mkdtemp(prefix="glam-chaos-")
    head, address = start_head(os.path.join(root, "ray"))
    shards = f"{root}/shards"
    output = f"{root}/out"  # the command's template: each episode has its own output
    write_shards(shards, args.shards, args.images, size=(96, 72), bad=tuple(BAD_KINDS),
                 odd=ODD_MODES, seed=args.seed)  # fmt: skip
    cmd = [
        sys.executable, str(REPO / "jobs" / "extract.py"),
        "--input", f"{shards}/{{000000..{args.shards - 1:06d}}}.tar", "--output", output,
        "--image-size", "64", "--batch-size", "4", "--retry-backoff", "0",
        "--ray-address", address, "--actors", "2",
    ]  # fmt: skip
    survived = {"driver": 0, "actor": 0}
    runs, episodes, kills = 0, 0, 0
    t0 = time.monotonic()

    def command(output: str) -> list[str]:
        return [*cmd[:5], output, *cmd[6:]]

    try:
        while kills < args.rounds:
            # An episode: one output, run again and again under kills until it is complete.
            output = f"{root}/out-{episodes}"
            episodes += 1
            while len(committed(output, args.shards)) < args.shards:
                job = subprocess.Popen(
                    command(output), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                runs += 1
                what = []
                # Up to 3 kills in this run, each at a random point: after a random number of
                # further shard commits (0: while actors start) plus a random fraction of a
                # second. An actor kill lets the run go on; a driver kill ends it.
                for _ in range(int(rng.integers(1, 4))):
                    before = len(committed(output, args.shards))
                    target = before + int(rng.integers(0, args.shards - before + 1))
                    victim = "driver" if rng.random() < 0.4 else "actor"
                    while job.poll() is None and len(committed(output, args.shards)) < target:
                        time.sleep(0.1)
                    time.sleep(float(rng.uniform(0.0, 1.0)))
                    if job.poll() is not None:
                        break
                    if victim == "driver":
                        job.send_signal(signal.SIGKILL)
                    else:
                        pids = actor_pids()
                        if not pids:
                            continue
                        os.kill(int(rng.choice(pids)), signal.SIGKILL)
                    survived[victim] += 1
                    kills += 1
                    what.append(f"{victim} after {target - before} more commits")
                    if victim == "driver":
                        break
                code = job.wait(timeout=1800)
                err = job.stderr.read().decode() if job.stderr else ""
                if code not in (0, -signal.SIGKILL):
                    print(f"episode {episodes}: the job failed ({code}):\n{err[-3000:]}")
                    return 1
                check_output(output, args.shards, args.images, final=False)
                print(
                    f"episode {episodes}, run {runs}: killed {', '.join(what) or 'nothing'} "
                    f"-> exit {code}, {len(committed(output, args.shards))}/{args.shards} "
                    "shards committed",
                    flush=True,
                )
            final = subprocess.run(command(output), capture_output=True, text=True, timeout=1800)
            runs += 1
            if final.returncode != 0 or " 0 done" not in final.stdout:
                print(final.stdout[-1000:], final.stderr[-3000:])
                return 1
            check_output(output, args.shards, args.images, final=True)
    finally:
        import ray

        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"exactly once in {episodes} outputs after {survived['driver']} driver kills and "
        f"{survived['actor']} actor kills survived, {runs} runs, {time.monotonic() - t0:.0f}s "
        f"(seed {args.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
