"""bench/gpu_check.sh: one line and exit 0 without a GPU; the report read from a step's files."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

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


def test_report_takes_the_figures_and_fails_a_step_that_failed(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
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
