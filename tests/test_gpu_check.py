"""bench/gpu_check.sh: one line and exit 0 without a GPU; the feed step's command (bench_feed.py
--decode gpu, which refuses a host without CUDA in one line); the report read from a step's
files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its checks")
def test_without_a_gpu_it_says_so_and_exits_0() -> None:
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "gpu_check: no GPU (torch.cuda.is_available() is False); nothing to check\n"
    )


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the feed step runs the bench")
def test_the_feed_step_runs_bench_feed_with_device_decode(tmp_path: Path) -> None:
    """Forced on a CPU host: the step's command carries --decode gpu, and bench_feed.py refuses
    in one line, exit 2, instead of measuring the CPU decode under the device's name."""
    env = {**os.environ, "GPU_CHECK_FORCE": "1", "GPU_CHECK_STEPS": "feed"}
    env["GPU_CHECK_OUT"] = str(tmp_path)
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    steps = tmp_path / "steps"
    command = (steps / "feed.cmd").read_text().split()
    assert command[1:] == [
        "bench/bench_feed.py",
        "--part",
        "all",
        "--shards",
        "1",
        "--repeats",
        "1",
        "--decode",
        "gpu",
    ]
    assert not (steps / "feed.note").exists()
    assert (steps / "feed.rc").read_text() == "2\n"
    log = [line for line in (steps / "feed.log").read_text().splitlines() if "bench_feed" in line]
    assert log == [
        "bench_feed.py: --decode gpu needs a CUDA device and torch sees none "
        "(torch.cuda.is_available() is False); the pipeline would decode on the CPU"
    ]
    (feed,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert feed["status"] == "failed: exit 2"


def test_the_feed_figures_name_the_decode_and_the_device() -> None:
    gpu_check = load_gpu_check()
    log = (
        "## small: 1024x768 JPEGs, 12 images measured\n"
        "| path | decode | device | decode threads | images/s | vs earlier decode, 1 thread |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| earlier decode (float tensors, full decode) | cpu | cpu | 1 | 61.0 | 1.00 |\n"
        "| data path, device decode, no-op model | gpu | cuda:0 (H200) | 1 | 380.0 | 6.23 |\n"
        "| data path, device decode, no-op model | gpu | cuda:0 (H200) | 2 | 520.5 | 8.53 |\n"
    )
    result = {"parsed": gpu_check.parse_output(log)}
    assert gpu_check.key_figures("feed", result) == (
        "small: data path, device decode, no-op model: 520.5 images/s, 2 thread(s), decode gpu "
        "on cuda:0 (H200)"
    )


def test_report_takes_the_figures_and_fails_a_step_that_failed(tmp_path: Path) -> None:
    gpu_check = load_gpu_check()
    steps = tmp_path / "steps"
    steps.mkdir()
    table = "| variant | images/s | GFLOP/s | MFU |\n| --- | --- | --- | --- |\n"
    table += "| bf16 channels_last + folded BN b4 | 31.5 | 28700 | 40.1% |\n"
    (steps / "model.log").write_text(f"# matmul peak: bf16 700000 GFLOP/s\n{table}")
    (steps / "feed.log").write_text("Traceback (most recent call last):\nRuntimeError: boom\n")
    for name, rc in (("model", 0), ("feed", 1)):
        (steps / f"{name}.rc").write_text(f"{rc}\n")
        (steps / f"{name}.wall").write_text("2.5\n")
    (steps / "pipeline.skip").write_text("missing ray\n")

    report = gpu_check.write_report(tmp_path, ["model", "feed", "pipeline"], 5.0)

    model, feed, pipeline = report["steps"]
    assert model["status"] == "passed"
    assert model["parsed"]["tables"][0]["rows"][0]["images/s"] == 31.5
    assert "31.5 images/s, MFU 40.1%" in model["key_figures"]
    assert feed["status"] == "failed: exit 1" and feed["tail"][-1] == "RuntimeError: boom"
    assert pipeline["status"] == "skipped: missing ray"
    assert report["counts"] == {"passed": 1, "failed": 1, "skipped": 1} and not report["ok"]
    assert "| feed | failed: exit 1 | 2.5 |" in (tmp_path / "gpu_check.md").read_text()
