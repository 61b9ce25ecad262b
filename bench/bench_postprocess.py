"""Retrieval mAP without and with each post-processing step, on the trained-model evaluation
set of the training tests (tests/pipeline/train/test_train.py: ResNet18-GLAM, d = 64, trained
with the test's own arguments on 4 generated visual classes).

Two parts, each short enough for one exclusive hold of the machine:

    .venv/bin/python bench/bench_postprocess.py train --workdir /tmp/glam-bench-post
    .venv/bin/python bench/bench_postprocess.py evaluate --workdir /tmp/glam-bench-post

``evaluate`` describes new images of the training classes (another seed than the training set,
like the test's held-out set, but 40 per class: 5 queries and 35 database images per class;
Medium protocol: every database image of the query's class is a positive), fits a whitening on
a third set of the same classes, and runs jobs/evaluate.py once per configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from glam import ExtractConfig, GlamExtractor, build_glam
from glam.preprocess import decode_image, preprocess
from jobs.evaluate import main as evaluate_main
from jobs.learn_whitening import main as learn_main
from jobs.prepare_gldv2 import main as prepare_main
from jobs.train import main as train_main
from pipeline.datasets.synthetic import class_samples, write_gldv2_miniature
from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.io.descriptor_writer import (
    descriptor_table,
    file_metadata,
    parquet_bytes,
)
from pipeline.io.storage import write_bytes_atomic
from tests.pipeline.train.test_train import CLASSES, SIZE, TRAIN_ARGS

PER_CLASS = 40
QUERIES_PER_CLASS = 5
# (label, evaluate.py flags) — each step alone, then together.
WHITENINGS = {  # name -> learn_whitening.py flags
    "w": [],
    "w_half": ["--shrinkage", "0.5"],
    "w16": ["--dim", "16"],
}
# (label, evaluate.py flags) — each step alone, then together.
CONFIGURATIONS = [
    ("baseline", []),
    ("+ whitening (64 -> 64, shrinkage 1)", ["--whitening", "{w}"]),
    ("+ whitening (64 -> 64, shrinkage 0.5)", ["--whitening", "{w_half}"]),
    ("+ whitening (64 -> 16, shrinkage 1)", ["--whitening", "{w16}"]),
    ("+ αQE k=2", ["--aqe", "2"]),
    ("+ αQE k=5", ["--aqe", "5"]),
    ("+ DBA k=2", ["--dba", "2"]),
    ("+ DBA k=5", ["--dba", "5"]),
    ("+ re-ranking (M=400, K=9, β=0.15)", ["--rerank"]),
    ("DBA k=2 + αQE k=2", ["--dba", "2", "--aqe", "2"]),
    ("DBA k=2 + αQE k=2 + re-ranking", ["--dba", "2", "--aqe", "2", "--rerank"]),
    (
        "whitening (shrinkage 0.5) + DBA k=2 + αQE k=2 + re-ranking",
        ["--whitening", "{w_half}", "--dba", "2", "--aqe", "2", "--rerank"],
    ),
]


def train(workdir: Path) -> None:
    """The training test's fixture, on local disk: miniature -> prepare -> train."""
    raw, shards, run = workdir / "gldv2", workdir / "shards", workdir / "run"
    write_gldv2_miniature(str(raw), classes=CLASSES, per_class=96)
    prepare = ["--csv", f"{raw}/train_clean.csv", "--images", f"{raw}/train"]
    assert prepare_main([*prepare, "--output", str(shards), "--shard-size", "48"]) == 0
    t = time.perf_counter()
    pattern = f"{shards}/train-{{000000..000007}}.tar"
    assert train_main(["--input", pattern, "--output", str(run), *TRAIN_ARGS]) == 0
    print(f"# trained {run}/glam.safetensors in {time.perf_counter() - t:.0f}s")


def describe(model, samples) -> np.ndarray:
    x = [preprocess(decode_image(data), SIZE) for _, _, data in samples]
    return GlamExtractor(model, ExtractConfig(scales=(1.0,)))(x, 8).numpy()


def write(folder: str, keys: list[str], x: np.ndarray, sha: str) -> None:
    cfg = {"backbone": "resnet18", "dim": int(x.shape[1])}
    meta = file_metadata(fingerprint(ExtractionSpec(image_size=SIZE), cfg, sha), "bench")
    table = descriptor_table(keys, "bench", x, [SIZE] * len(keys), [SIZE] * len(keys), meta)
    write_bytes_atomic(f"{folder}/part-000000.parquet", parquet_bytes(table))


def evaluate(workdir: Path) -> None:
    model = build_glam(str(workdir / "run" / "glam.safetensors"))
    data = Path(tempfile.mkdtemp(prefix="glam-bench-post-"))
    try:
        held = class_samples(CLASSES, PER_CLASS, seed=99, key_prefix="held")
        x = describe(model, held)
        labels = np.array([label for _, label, _ in held])
        queries = [i for c in range(CLASSES) for i in np.flatnonzero(labels == c)[:5]]
        database = [i for i in range(len(held)) if i not in queries]
        gnd = []
        for qi in queries:
            positives = [j for j, i in enumerate(database) if labels[i] == labels[qi]]
            gnd.append({"bbx": [0, 0, 1, 1], "easy": positives[::2], "hard": positives[1::2]})
        keys = [key for key, _, _ in held]
        payload = {"qimlist": [keys[i] for i in queries], "imlist": [keys[i] for i in database]}
        (data / "gnd.pkl").write_bytes(pickle.dumps({**payload, "gnd": gnd}))
        write(str(data / "q"), payload["qimlist"], x[queries], model.weights_sha256)
        write(str(data / "db"), payload["imlist"], x[database], model.weights_sha256)
        other = class_samples(CLASSES, PER_CLASS, seed=7, key_prefix="white")
        write(
            str(data / "w-set"),
            [k for k, _, _ in other],
            describe(model, other),
            model.weights_sha256,
        )
        files = {name: str(data / f"{name}.safetensors") for name in WHITENINGS}
        for name, flags in WHITENINGS.items():
            fit = ["--descriptors", str(data / "w-set"), "--output", files[name], *flags]
            with contextlib.redirect_stdout(io.StringIO()):
                assert learn_main(fit) == 0
        print(
            f"# {len(queries)} queries, {len(database)} database images, {CLASSES} classes; "
            f"whitening fitted on {len(other)} other images of the same classes"
        )
        print("| configuration | Medium mAP | mP@5 | mP@10 |")
        print("| --- | --- | --- | --- |")
        for label, flags in CONFIGURATIONS:
            report = data / "report.json"
            args = ["--gnd", str(data / "gnd.pkl"), "--queries", str(data / "q")]
            args += ["--database", str(data / "db"), "--report", str(report)]
            with contextlib.redirect_stdout(io.StringIO()):
                assert evaluate_main([*args, *(f.format(**files) for f in flags)]) == 0
            medium = json.loads(report.read_text())["medium"]
            print(
                f"| {label} | {100 * medium['mAP']:.2f} | {100 * medium['mP@5']:.2f} | "
                f"{100 * medium['mP@10']:.2f} |",
                flush=True,
            )
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["train", "evaluate"])
    p.add_argument("--workdir", default="/tmp/glam-bench-post")
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train(workdir) if args.part == "train" else evaluate(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
