"""End-to-end mAP with an approximate distractor index against the exact (Flat) one, on the
revisitop miniature with distractors (``write_revisitop_miniature``), through the jobs:
prepare_revisitop -> extract (GLAM, seeded random weights) -> build_index (Flat, and the
approximate setting) -> evaluate (in this process and with --distributed).

The miniature's database images are shifted, noisier copies of their query image, so even
random-weight descriptors rank them; what changes between the two indexes is only where the
distractors rank.

    .venv/bin/python bench/bench_index_map.py [--distractors 3000] [--workdir /tmp/glam-bench-map]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
import torch
from bench_index import header, row

from jobs.build_index import main as build_index
from jobs.evaluate import main as evaluate
from jobs.extract import main as extract
from jobs.prepare_revisitop import main as prepare
from pipeline.datasets.synthetic import write_revisitop_miniature


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/glam-bench-map")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--distractors", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--factory", default="IVF32,PQ64x4fs,Refine(SQ8)")
    p.add_argument("--nprobe", type=int, default=16, help="half the cells, as at 1M (512/1024)")
    p.add_argument("--k-factor", type=int, default=16)
    args = p.parse_args()
    w = args.workdir
    shutil.rmtree(w, ignore_errors=True)
    precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    t = time.perf_counter()
    write_revisitop_miniature(
        f"{w}/data", classes=args.classes, per_class=args.per_class, distractors=args.distractors
    )
    prepare(["--root", f"{w}/data", "--dataset", "roxford5k", "--output", f"{w}/shards/roxf"])
    prepare(["--root", f"{w}/data", "--dataset", "revisitop1m", "--output", f"{w}/shards/r1m"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    for part in ("roxf/database", "roxf/queries", "r1m/distractors"):
        code = extract([
            "--input", f"{w}/shards/{part}/*.tar", "--output", f"{w}/runs/{part}",
            "--image-size", str(args.image_size), "--precision", precision, "--batch-size", "8",
        ])  # fmt: skip
        if code:
            raise SystemExit(f"extract {part} failed")
    # The queries once more with the crops sized as before (longer side = --image-size).
    code = extract([
        "--input", f"{w}/shards/roxf/queries/*.tar", "--output", f"{w}/runs/roxf/queries-crop",
        "--image-size", str(args.image_size), "--precision", precision, "--batch-size", "8",
        "--query-crop-scale", "crop",
    ])  # fmt: skip
    if code:
        raise SystemExit("extract roxf/queries (crop) failed")
    prep_s = time.perf_counter() - t
    by_crop = f"{w}/report-crop.json"
    evaluate([
        "--gnd", f"{w}/data/roxford5k/gnd_roxford5k.pkl", "--queries",
        f"{w}/runs/roxf/queries-crop", "--database", f"{w}/runs/roxf/database",
        "--report", by_crop,
    ])  # fmt: skip
    crop_scaled = json.loads(Path(by_crop).read_text())
    indexes = {
        "Flat": ["--factory", "Flat"],
        args.factory: [
            "--factory", args.factory, "--train-size", str(args.distractors),
            "--nprobe", str(args.nprobe), "--k-factor", str(args.k_factor),
        ],
    }  # fmt: skip
    reports = {}
    for name, flags in indexes.items():
        out = f"{w}/indexes/{name.replace(',', '_').replace('(', '').replace(')', '')}"
        build_index(["--descriptors", f"{w}/runs/r1m/distractors", "--output", out, *flags])
        for mode, extra in (("one process", []), ("2 actors", ["--distributed"])):
            report = f"{w}/report-{len(reports)}.json"
            evaluate([
                "--gnd", f"{w}/data/roxford5k/gnd_roxford5k.pkl",
                "--queries", f"{w}/runs/roxf/queries", "--database", f"{w}/runs/roxf/database",
                "--distractors", out, "--report", report, *extra,
                "--cpus-per-actor", "1", "--actor-overhead-mb", "0",
            ])  # fmt: skip
            reports[(name, mode)] = json.loads(Path(report).read_text())
    ray.shutdown()
    flat = reports[("Flat", "one process")]
    print(
        f"# {args.classes} x {args.per_class} database images, {args.classes} queries, "
        f"{args.distractors} distractors, {args.image_size} px, {precision}, random weights; "
        f"prepare + extract {prep_s:.0f} s"
    )
    header("distractor index", "search", "Medium mAP", "Hard mAP", "Medium mP@10", "exact ranks")
    base = flat["without_distractors"]
    row("none (database only)", "-", *(f"{100 * base[p]['mAP']:.2f}" for p in ("medium", "hard")),
        f"{100 * base['medium']['mP@10']:.2f}", "yes")  # fmt: skip
    cs = crop_scaled.get("without_distractors", crop_scaled)
    row("none, crops scaled to the image size", "-",
        *(f"{100 * cs[p]['mAP']:.2f}" for p in ("medium", "hard")),
        f"{100 * cs['medium']['mP@10']:.2f}", "yes")  # fmt: skip
    for (name, mode), r in reports.items():
        row(
            f"`{name}`", mode, *(f"{100 * r[p]['mAP']:.2f}" for p in ("medium", "hard")),
            f"{100 * r['medium']['mP@10']:.2f}", "yes" if r["exact"] else "no (upper bound)",
        )  # fmt: skip
    approx = reports[(args.factory, "one process")]
    for p in ("medium", "hard"):
        change = 100 * (approx[p]["mAP"] - flat[p]["mAP"])
        print(f"# {p} mAP change, approximate vs exact distractor index: {change:+.2f} points")
    same = all(reports[(n, "one process")] == reports[(n, "2 actors")] for n in indexes)
    print(f"# --distributed reports identical to the single-process ones: {same}")
    shutil.rmtree(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
