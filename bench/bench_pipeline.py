"""End-to-end pipeline throughput against the bare model, in one run.

Generates fixed 1024x768 JPEG shards, measures the bare model's images/s on the same images
pre-decoded to tensors (GlamExtractor.extract_batch, same batch size and precision), then runs
the whole pipeline (Ray actor, streaming reader, decode threads, uint8 batches normalised and
rescaled on the device, two shards in flight, Parquet, commit markers) and prints the ratio,
plus the cost per stage from the shard stats. Shards overlap (the next one decodes while this
one computes, a finished one is written while the next computes), so the actor's steady rate
is taken over its compute thread's time (wait for input + infer), which runs shard after
shard.

    .venv/bin/python bench/bench_pipeline.py [--shards 2 --images 12 --precision bf16] [--s3]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
import torch

from glam import ExtractConfig, GlamExtractor, build_glam, decode_image, preprocess
from glam.extract import resolve_precision
from pipeline.datasets.synthetic import write_shards
from pipeline.extract.driver import run_extraction
from pipeline.extract.spec import ExtractionJob, ExtractionSpec
from pipeline.extract.stats import STAGES
from pipeline.io.layout import marker_uri
from pipeline.io.storage import read_bytes, read_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--images", type=int, default=12, help="images per shard")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", default="bf16", choices=("auto", "fp32", "bf16"))
    p.add_argument("--s3", action="store_true", help="shards and output in a local moto S3")
    args = p.parse_args()

    server = None
    if args.s3:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="x",
            AWS_SECRET_ACCESS_KEY="x",
            AWS_DEFAULT_REGION="us-east-1",
        )
        root = "s3://bench"
    else:
        root = tempfile.mkdtemp(prefix="glam-bench-")
    # Landscape only, so that every batch is full (the model figure uses full batches too).
    shards = write_shards(
        f"{root}/shards", args.shards, args.images, (1024, 768), seed=1, portrait_every=0
    )
    spec = ExtractionSpec(image_size=1024, precision=args.precision, batch_size=args.batch_size)
    precision = resolve_precision(args.precision, torch.device("cpu"))

    # Bare model on pre-decoded tensors.
    images = []
    for uri in shards:
        with tarfile.open(fileobj=io.BytesIO(read_bytes(uri))) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    images.append(preprocess(decode_image(tar.extractfile(m).read()), 1024))
    model = build_glam(seed=spec.seed)
    ex = GlamExtractor(model, ExtractConfig(precision=precision))
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for x in images:
        by_shape.setdefault(tuple(x.shape), []).append(x)

    def bare_model_ips() -> float:
        """images/s of the extractor alone on pre-decoded tensors, after a full-batch warm-up."""
        group = next(iter(by_shape.values()))
        ex.extract_batch(torch.stack(group[: args.batch_size]))
        t = time.perf_counter()
        for group in by_shape.values():
            for i in range(0, len(group), args.batch_size):
                ex.extract_batch(torch.stack(group[i : i + args.batch_size]))
        return len(images) / (time.perf_counter() - t)

    # The shared 2-core VM drifts by ±10% over minutes: measure the model before and after
    # the pipeline and compare with the mean.
    model_before = bare_model_ips()

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    job = ExtractionJob(input=f"{root}/shards/*.tar", output=f"{root}/out", spec=spec)
    t = time.perf_counter()
    result = run_extraction(job)
    job_s = time.perf_counter() - t
    ray.shutdown()
    model_after = bare_model_ips()
    model_ips = (model_before + model_after) / 2
    markers = [read_json(marker_uri(job.output, f"{i:06d}")) for i in range(args.shards)]
    compute = sum(m["wait_s"] + m["infer_s"] for m in markers)
    steady_ips = result.samples / compute
    print(
        f"# {len(images)} images 1024x768 JPEG, 3 scales, {precision}, batch "
        f"{args.batch_size}, {'moto S3' if args.s3 else 'local disk'}, 1 CPU actor, "
        f"torch threads {torch.get_num_threads()}"
    )
    print("| measure | images/s | vs bare model |")
    print("| --- | --- | --- |")
    print(
        f"| bare model, pre-decoded tensors (mean of before {model_before:.3f} and after "
        f"{model_after:.3f}) | {model_ips:.3f} | 1.00 |"
    )
    print(
        f"| pipeline, inside the actor (Σ compute thread time, all shards) | {steady_ips:.3f} | "
        f"{steady_ips / model_ips:.2f} |"
    )
    warm = markers[1:]  # the first shard also pays oneDNN's primitive creation (cold start)
    if warm:
        warm_ips = sum(m["samples"] for m in warm) / sum(m["wait_s"] + m["infer_s"] for m in warm)
        print(
            f"| pipeline, inside the actor, after the first shard | {warm_ips:.3f} | "
            f"{warm_ips / model_ips:.2f} |"
        )
    print(
        f"| pipeline, whole job incl. Ray start-up and model load | "
        f"{result.samples / job_s:.3f} | {result.samples / job_s / model_ips:.2f} |"
    )
    stages = {k: sum(m[f"{k}_s"] for m in markers) for k in STAGES}
    print("| stage (from shard stats) | seconds | share of the compute thread's time |")
    print("| --- | --- | --- |")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} | {v / compute:.1%} |")
    print(f"| compute thread (wait + infer) | {compute:.2f} | 100% |")
    if server is None:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
