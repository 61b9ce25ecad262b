"""Extract GLAM descriptors from WebDataset shards into Parquet, on a Ray cluster.

    ray job submit -- python jobs/extract.py --input 's3://b/shards/{000000..000999}.tar' \
        --output s3://b/runs/r1

Exit code 0 only when every shard is committed.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_cluster_arguments, float_list, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input",
        required=True,
        help="shard URI pattern: brace ranges and globs, e.g. "
        "'s3://b/shards/{000000..000099}.tar' or 'data/*.tar'",
    )
    p.add_argument("--output", required=True, help="output folder URI (local path or s3://)")
    p.add_argument(
        "--weights",
        default=None,
        help="GLAM checkpoint URI (.safetensors/.pt), 'imagenet' for the ImageNet "
        "backbone only, or omit for seeded random weights",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=1024,
        help="longer image side before the scales (default 1024)",
    )
    p.add_argument(
        "--scales",
        type=float_list,
        default=None,
        help="comma-separated scales of the image size (default 0.7071,1,1.4142)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per forward (default 8)")
    p.add_argument(
        "--actors",
        type=int,
        default=None,
        help="number of actors (default: one per GPU, else CPUs/4 CPU actors)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="auto: one GPU actor per GPU, else CPU actors; gpu: GPU actors even before an "
        "autoscaling cluster has GPU workers (needs --actors); cpu: CPU actors",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default): bf16 autocast where the actors' device computes bf16 natively "
        "(CUDA compute capability >= 8, CPUs with AVX512-BF16 or AMX), fp32 elsewhere; "
        "fp32; bf16 (warns where it is emulated, ~11x slower than fp32 on AVX2 CPUs)",
    )
    p.add_argument(
        "--decode",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu (default): PIL in decode threads; gpu: JPEGs batched through nvjpeg on the "
        "actor's GPU, what it cannot take (PNG, CMYK, progressive, corrupt) on the CPU",
    )
    p.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        help="decode threads per actor (default: the CPUs the actor holds)",
    )
    p.add_argument(
        "--jpeg-draft",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode JPEGs at least twice the largest scale's size at 1/2, 1/4 or 1/8 scale in "
        "the DCT domain, never below that size (default on; --no-jpeg-draft decodes fully)",
    )
    p.add_argument(
        "--query-crop-scale",
        choices=["full_image", "crop"],
        default="full_image",
        help="query crops (images carrying their full image's size, as prepare_revisitop.py "
        "writes them): full_image scales them by the full image's factor, as the protocol's "
        "reference code does (default); crop scales each crop's longer side to --image-size",
    )
    p.add_argument(
        "--resize",
        choices=["bilinear", "lanczos-shrink"],
        default="bilinear",
        help="how the longer side is brought to --image-size: bilinear, up or down (default); "
        "lanczos-shrink, cirtorch's (PIL thumbnail, LANCZOS), never enlarging; CPU decode only",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=None,
        help="CPUs each actor holds (default: a GPU node's CPUs per GPU, else 4 for GPU "
        "actors; CPU actors share the cluster's CPUs)",
    )
    p.add_argument(
        "--shards-per-actor",
        type=int,
        default=2,
        help="shards an actor holds at once: the next one decodes while the current one "
        "computes (default 2)",
    )
    p.add_argument(
        "--max-shard-restarts",
        type=int,
        default=3,
        help="actor deaths (real restarts) a shard may cause before it is reported failed, "
        "with the last death's cause (default 3)",
    )
    p.add_argument(
        "--start-timeout-s",
        type=float,
        default=1800.0,
        help="seconds to wait for the actors to start (GPU nodes an autoscaler adds, the model "
        "loaded) before failing, naming what the cluster lacks (default 1800)",
    )
    p.add_argument(
        "--restart-timeout-s",
        type=float,
        default=1800.0,
        help="seconds to wait for Ray to restart a failed actor before retiring it and giving "
        "its shards to the others (default 1800)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="images with more pixels become 'oversized' error rows",
    )
    p.add_argument(
        "--shard-attempts",
        type=int,
        default=3,
        help="attempts per shard on storage errors (default 3)",
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=1.0,
        help="seconds before the first retry, doubling after (default 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (default 0)")
    p.add_argument(
        "--table",
        choices=("delta", "iceberg", "none"),
        default="delta",
        help="delta (default): OUTPUT/descriptors/ and OUTPUT/errors/ are Delta tables of "
        "exactly the committed shards' files (docs/tables.md); iceberg: the same files in "
        "Iceberg tables of --catalog; none: Parquet files and markers only",
    )
    p.add_argument(
        "--catalog",
        help="--table iceberg's catalog: sqlite:///catalog.db (any SQLAlchemy URI), a REST "
        "catalog's http(s):// URI, or glue",
    )
    p.add_argument(
        "--iceberg-table",
        default="glam.descriptors",
        help="--table iceberg: namespace.name of the descriptor table (errors: name_errors)",
    )
    p.add_argument(
        "--register-every",
        type=float_list,
        default=(100, 30),
        help="N,S: register committed shards in the tables once N are pending or the first "
        "of them committed S seconds ago, and at the end (default 100,30)",
    )
    add_cluster_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.extract.driver import run_extraction
        from pipeline.extract.registration import OutputTables
        from pipeline.extract.spec import ExtractionJob, ExtractionSpec
        from pipeline.runtime.cluster import connect

        spec_kw = {
            "weights": args.weights,
            "seed": args.seed,
            "image_size": args.image_size,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "decode": args.decode,
            "decode_workers": args.decode_workers,
            "jpeg_draft": args.jpeg_draft,
            "query_crop_scale": args.query_crop_scale,
            "resize": args.resize,
            "shard_attempts": args.shard_attempts,
            "retry_backoff_s": args.retry_backoff,
        }
        if args.scales is not None:
            spec_kw["scales"] = args.scales
        if args.max_pixels is not None:
            spec_kw["max_pixels"] = args.max_pixels
        job = ExtractionJob(
            args.input,
            args.output,
            ExtractionSpec(**spec_kw),
            args.actors,
            max_shard_restarts=args.max_shard_restarts,
            device=args.device,
            cpus_per_actor=args.cpus_per_actor,
            shards_per_actor=args.shards_per_actor,
            start_timeout_s=args.start_timeout_s,
            restart_timeout_s=args.restart_timeout_s,
        )
        every_shards, every_s = (*args.register_every, 30.0)[:2]
        tables = OutputTables(
            args.table, int(every_shards), every_s, args.catalog, args.iceberg_table
        )
        connect(args.ray_address)
        result = run_extraction(job, tables=tables)
        print(result.summary())
        from pipeline.io.layout import failed_shards_uri
        from pipeline.io.redact import redact_text

        for failed in result.failed:  # the first ones; all are in _failed_shards.parquet
            line = f"failed shard: {failed.shard}: {failed.error}"
            print(redact_text(line), file=sys.stderr)
        if result.failed_count > len(result.failed):
            more = result.failed_count - len(result.failed)
            where = redact_text(failed_shards_uri(args.output))
            print(f"… and {more} more failed shards (all of them in {where})", file=sys.stderr)
        return 0 if result.succeeded else 1

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
