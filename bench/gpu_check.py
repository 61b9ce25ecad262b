"""Helper of ``bench/gpu_check.sh``: the device's facts, the dependency check and the report.

The shell script runs the steps (each under its own ``timeout``) and leaves, per step, in
``DIR/steps/``: ``NAME.cmd`` (the command line), ``NAME.log`` (stdout and stderr), ``NAME.rc``,
``NAME.wall`` (seconds), ``NAME.limit`` (its timeout), ``NAME.skip`` (why it did not run),
``NAME.note`` and, for the pytest steps, ``NAME.xml`` (JUnit). This module turns them into one
report, ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``. See docs/gpu_check.md.

    python bench/gpu_check.py device DIR        # DIR/device.json
    python bench/gpu_check.py deps DIR          # DIR/deps.json; prints what is missing
    python bench/gpu_check.py missing DIR       # the missing wheels' requirements, one a line
    python bench/gpu_check.py have MODULE       # exit 0 when MODULE can be imported
    python bench/gpu_check.py skip DIR STEP     # why STEP cannot run (nothing: it can)
    python bench/gpu_check.py report DIR --steps "a b" --wall S   # exit 1 if a step failed
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What the steps import beyond the GPU node image (Python 3.12, torch, torchvision, numpy,
# pyarrow, pandas, pillow, fsspec, safetensors, pytest, psutil, pyyaml): module -> wheel.
WHEELS = {
    "ray": "ray",
    "faiss": "faiss-gpu",
    "webdataset": "webdataset",
    "s3fs": "s3fs",
    "duckdb": "duckdb",
    "moto": "moto[server]",
}
BASE = ("torch", "torchvision", "numpy", "pyarrow", "PIL", "fsspec", "safetensors", "pytest")
STEP_NEEDS: dict[str, tuple[str, ...]] = {
    "cuda_tests": (),  # runs with --noconftest where ray is missing (tests/conftest.py imports it)
    "model": (),
    "feed": (),
    "pipeline": ("ray",),
    "faiss_tests": ("faiss", "ray"),  # pipeline.index.build imports ray
}
TITLES = {
    "cuda_tests": "pytest -m cuda (glam, extract)",
    "model": "bench/bench_model.py",
    "feed": "bench/bench_feed.py",
    "pipeline": "bench/bench_pipeline.py",
    "faiss_tests": "pytest -m cuda tests/pipeline/index/test_gpu.py (FAISS GPU)",
}
TAIL_LINES = 40


# ---------------------------------------------------------------- device and dependencies


def device_facts() -> dict[str, Any]:
    """The GPU, driver, CUDA, torch and CPUs of this node (what a figure depends on)."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _host_memory_gib(),
    }
    try:
        import torch
    except ImportError as e:
        facts["error"] = f"torch: {e}"
        return facts
    facts.update(
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cuda_available=torch.cuda.is_available(),
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
        get_driver = getattr(torch._C, "_cuda_getDriverVersion", None)
        if get_driver is not None:
            v = int(get_driver())  # the CUDA driver API version, e.g. 13000 -> 13.0
            facts["cuda_driver_api"] = f"{v // 1000}.{v % 1000 // 10}"
    facts.update(_nvidia_smi())
    return facts


def _host_memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def _nvidia_smi() -> dict[str, Any]:
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines()]
    if not rows or len(rows[0]) != 5:
        return {}
    name, driver, memory, power, clock = rows[0]
    return {
        "driver": driver,
        "nvidia_smi": {"name": name, "memory": memory, "power_limit": power, "max_sm_clock": clock},
    }


def _pins() -> dict[str, str]:
    """Pinned versions from constraints.txt (the set ``make`` installs), by lower-case name."""
    pins: dict[str, str] = {}
    path = ROOT / "constraints.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, version = line.split("#")[0].strip().partition("==")
            if sep:
                pins[name.strip().lower()] = version.strip()
    return pins


def _requirement(wheel: str, pins: dict[str, str]) -> str:
    base = wheel.split("[")[0]
    return f"{wheel}=={pins[base]}" if base in pins else wheel


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_deps() -> dict[str, Any]:
    """Which modules the steps need are absent, which steps that stops, and the wheels."""
    absent = {m: "" for m in (*BASE, *WHEELS) if not have(m)}  # module -> why, "" if absent
    if "faiss" not in absent:
        try:
            faiss = importlib.import_module("faiss")
            gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
        except Exception as e:  # a broken install: the step cannot run either
            absent["faiss"] = f"faiss does not import ({type(e).__name__}: {e})"
        else:
            if gpus == 0:
                absent["faiss"] = "faiss without GPU support or no GPU seen (faiss-cpu installed?)"
    pins = _pins()
    needed = sorted({m for needs in STEP_NEEDS.values() for m in needs} & set(absent))
    skip = {}
    for step, needs in STEP_NEEDS.items():
        gone = [WHEELS.get(m, m) for m in (*BASE, *needs) if m in absent and not absent[m]]
        why = [f"missing {', '.join(gone)}"] if gone else []
        why += [absent[m] for m in needs if absent.get(m)]
        if why:
            skip[step] = "; ".join(why)
    return {
        "absent": absent,
        "wheels_needed": [_requirement(WHEELS[m], pins) for m in needed if m in WHEELS],
        "base_missing": [m for m in BASE if m in absent],
        "other_absent": [
            _requirement(WHEELS[m], pins) for m in WHEELS if m in absent and m not in needed
        ],
        "skip": skip,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def print_deps(deps: dict[str, Any]) -> None:
    wheels = deps["wheels_needed"]
    if deps["base_missing"]:
        print(f"gpu_check: the node image lacks {' '.join(deps['base_missing'])} (steps skipped)")
    if not wheels:
        print("gpu_check: every wheel the steps need is importable")
    else:
        steps = sorted(s for s, r in deps["skip"].items() if r)
        print(f"gpu_check: missing wheels: {' '.join(wheels)} (steps {', '.join(steps)} skip)")
        print(
            "gpu_check: fetch them where there is network: pip download --only-binary=:all: "
            f"--python-version {deps['python']} -d wheels/ {' '.join(wheels)}"
        )
        print("gpu_check: then carry wheels/ and run GPU_CHECK_WHEELS=wheels bench/gpu_check.sh")
    if deps["other_absent"]:
        print(f"gpu_check: also absent, not needed by this check: {' '.join(deps['other_absent'])}")


# ---------------------------------------------------------------- parsing what the steps print


def _number(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell


def parse_output(text: str) -> dict[str, Any]:
    """The benches' figures: their Markdown tables (rows as dicts, under the last ``##``
    heading), their ``#`` and ``-`` note lines, and any line that is a JSON object."""
    tables: list[dict[str, Any]] = []
    notes: list[str] = []
    objects: list[Any] = []
    title: str | None = None
    header: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line[1:-1].split("|")]
            if header is not None:
                tables[-1]["lines"].append(line)
            if header is None:
                header = cells
                tables.append({"title": title, "columns": cells, "rows": [], "lines": [line]})
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                row = dict(zip(header, (_number(c) for c in cells), strict=False))
                tables[-1]["rows"].append(row)
            continue
        header = None
        if line.startswith("## "):
            title = line[3:]
        elif line.startswith(("# ", "- ")):
            notes.append(line)
        elif line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                objects.append(json.loads(line))
    if not objects and text.lstrip().startswith(("{", "[")):
        with contextlib.suppress(json.JSONDecodeError):
            objects.append(json.loads(text))
    out: dict[str, Any] = {"tables": tables, "notes": notes}
    if objects:
        out["json"] = objects
    return out


def parse_junit(path: Path) -> dict[str, Any] | None:
    """Counts and each test's outcome from pytest's JUnit XML."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome, message = kind, (el.get("message") or "")[:300]
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        tests.append({"test": name, "outcome": outcome, "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "skipped")}
    counts["failed"] = sum(t["outcome"] in ("failure", "error") for t in tests)
    return {"counts": counts, "tests": tests}


def key_figures(step: str, result: dict[str, Any]) -> str:
    """One short line of what matters in a step's result, for the summary table."""
    if "pytest" in result:
        c = result["pytest"]["counts"]
        return ", ".join(f"{v} {k}" for k, v in c.items() if v) or "no tests"
    parsed = result.get("parsed")
    if not parsed:
        return ""
    figures = []
    for table in parsed["tables"]:
        rows = [r for r in table["rows"] if isinstance(r.get("images/s"), float)]
        if not rows:
            continue
        first = table["columns"][0]
        if step == "model":
            rows = [r for r in rows if "folded BN" in str(r[first])] or rows
        elif step == "pipeline":
            rows = [r for r in rows if str(r[first]).startswith("pipeline, inside")][:1] or rows
        else:
            rows = [max(rows, key=lambda r: r["images/s"])]
        for r in rows:
            extra = f", MFU {r['MFU']}" if "MFU" in r else ""
            extra += f", {r['vs bare model']:g}x the bare model" if "vs bare model" in r else ""
            extra += f", {r['decode threads']:g} thread(s)" if "decode threads" in r else ""
            extra += f", decode {r['decode']} on {r['device']}" if "device" in r else ""
            where = f"{table['title'].split(':')[0]}: " if table["title"] else ""
            figures.append(f"{where}{r[first]}: {r['images/s']:g} images/s{extra}")
    return "; ".join(figures)


# ---------------------------------------------------------------- the report


def _read(path: Path) -> str | None:
    return path.read_text(errors="replace").strip() if path.exists() else None


def step_result(steps: Path, name: str) -> dict[str, Any]:
    result: dict[str, Any] = {"step": name, "title": TITLES.get(name, name)}
    note = _read(steps / f"{name}.note")
    if note:
        result["note"] = note
    skip = _read(steps / f"{name}.skip")
    if skip is not None:
        result.update(status=f"skipped: {skip}", wall_s=0.0)
        return result
    rc_text = _read(steps / f"{name}.rc")
    log = _read(steps / f"{name}.log") or ""
    result.update(
        command=_read(steps / f"{name}.cmd"),
        log=str(steps / f"{name}.log"),
        rc=int(rc_text) if rc_text and rc_text.lstrip("-").isdigit() else None,
        wall_s=round(float(_read(steps / f"{name}.wall") or 0), 1),
        timeout_s=int(_read(steps / f"{name}.limit") or 0),
    )
    junit = parse_junit(steps / f"{name}.xml")
    if junit is not None:
        result["pytest"] = junit
    else:
        result["parsed"] = parse_output(log)
    rc = result["rc"]
    if rc is None:
        result["status"] = "failed: did not finish"
    elif rc in (124, 137):
        result["status"] = f"failed: timed out after {result['timeout_s']} s"
    elif rc != 0:
        result["status"] = f"failed: exit {rc}"
    elif junit is not None and junit["counts"]["passed"] == 0:
        result["status"] = "failed: no test ran (all skipped or none collected)"
    else:
        result["status"] = "passed"
    if not result["status"].startswith("passed"):
        result["tail"] = log.splitlines()[-TAIL_LINES:]
    return result


def build_report(folder: Path, names: list[str], wall: float) -> dict[str, Any]:
    device = json.loads(_read(folder / "device.json") or "{}")
    deps = json.loads(_read(folder / "deps.json") or "{}")
    results = [step_result(folder / "steps", n) for n in names]
    for r in results:
        r["key_figures"] = key_figures(r["step"], r)
    counts = {
        k: sum(r["status"].startswith(k) for r in results) for k in ("passed", "failed", "skipped")
    }
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall, 1),
        "device": device,
        "dependencies": deps,
        "counts": counts,
        "ok": counts["failed"] == 0,
        "steps": results,
    }


def _device_line(d: dict[str, Any]) -> list[str]:
    if "gpu" not in d:
        return [f"- device: no CUDA device seen by torch {d.get('torch', '?')}"]
    smi = f"driver {d['driver']}, " if "driver" in d else ""
    return [
        f"- device: **{d['gpu']}** ×{d['gpu_count']}, {d['gpu_memory_gib']} GiB, compute "
        f"capability {d['compute_capability']}, {d['multiprocessors']} SMs",
        f"- {smi}CUDA driver API {d.get('cuda_driver_api', '?')}; torch {d['torch']} (CUDA "
        f"{d['torch_cuda']}, cuDNN {d['cudnn']})",
    ]


def to_markdown(report: dict[str, Any]) -> str:
    d, c = report["device"], report["counts"]
    lines = ["# GPU check", ""]
    lines += _device_line(d)
    lines += [
        f"- host: Python {d.get('python')}, {d.get('cpu_count')} CPUs ({d.get('cpus_usable')} "
        f"usable), {d.get('memory_gib')} GiB, {d.get('platform')}",
        f"- finished {report['finished']}, {report['wall_s']} s in all: {c['passed']} passed, "
        f"{c['failed']} failed, {c['skipped']} skipped",
    ]
    deps = report["dependencies"]
    if deps.get("wheels_needed"):
        lines.append(f"- missing wheels: {' '.join(deps['wheels_needed'])}")
    lines += ["", "| step | status | wall s | key figures |", "| --- | --- | --- | --- |"]
    for r in report["steps"]:
        figures = r["key_figures"].replace("|", "/")
        lines.append(f"| {r['step']} | {r['status']} | {r['wall_s']} | {figures} |")
    for r in report["steps"]:
        lines += ["", f"## {r['step']}: {r['title']}", "", f"- status: {r['status']}"]
        if r.get("command"):
            lines.append(f"- command: `{r['command']}` (timeout {r['timeout_s']} s)")
        if r.get("note"):
            lines.append(f"- note: {r['note']}")
        if "pytest" in r:
            lines += ["", "| test | outcome | message |", "| --- | --- | --- |"]
            for t in r["pytest"]["tests"]:
                message = t["message"].replace("|", "/").replace("\n", " ")[:160]
                lines.append(f"| `{t['test']}` | {t['outcome']} | {message} |")
        for table in r.get("parsed", {}).get("tables", []):
            lines += ["", f"### {table['title']}", ""] if table["title"] else [""]
            lines += table["lines"]
        notes = r.get("parsed", {}).get("notes", [])
        if notes:
            lines += ["", *(n if n.startswith("- ") else f"- {n[2:]}" for n in notes)]
        if r.get("tail"):
            lines += ["", f"Last {len(r['tail'])} lines of its output:", "", "```", *r["tail"]]
            lines.append("```")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, names: list[str], wall: float) -> dict[str, Any]:
    report = build_report(folder, names, wall)
    (folder / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "gpu_check.md").write_text(to_markdown(report))
    return report


# ---------------------------------------------------------------- command line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("device", "deps", "missing"):
        sub.add_parser(name).add_argument("dir", type=Path)
    sub.add_parser("have").add_argument("module")
    skip = sub.add_parser("skip")
    skip.add_argument("dir", type=Path)
    skip.add_argument("step")
    report = sub.add_parser("report")
    report.add_argument("dir", type=Path)
    report.add_argument("--steps", required=True, help="the steps, space separated, in order")
    report.add_argument("--wall", type=float, default=0.0, help="the whole run's seconds")
    args = p.parse_args()

    if args.command == "have":
        return 0 if have(args.module) else 1
    if args.command == "device":
        (args.dir / "device.json").write_text(json.dumps(device_facts(), indent=2) + "\n")
        return 0
    if args.command == "deps":
        deps = check_deps()
        (args.dir / "deps.json").write_text(json.dumps(deps, indent=2) + "\n")
        print_deps(deps)
        return 0
    deps = json.loads((args.dir / "deps.json").read_text())
    if args.command == "missing":
        print("\n".join(deps["wheels_needed"]))
        return 0
    if args.command == "skip":
        print(deps["skip"].get(args.step, ""))
        return 0
    result = write_report(args.dir, args.steps.split(), args.wall)
    for r in result["steps"]:
        status = f"{r['step']:<12} {r['status']:<40} {r['wall_s']:>6} s"
        print(f"gpu_check: {status}  {r['key_figures']}")
    print(f"gpu_check: report in {args.dir / 'gpu_check.md'} and {args.dir / 'gpu_check.json'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
