"""Build a sharded FAISS index (inner product) from descriptor Parquet, as a new version
behind OUTPUT/LATEST; exits 0 without building when nothing changed since LATEST, and adds only
the new files' vectors (reusing the previous shards) when only new files appeared (never with
--dba: database-side augmentation changes every stored vector, so it always rebuilds in full).

    python jobs/build_index.py --descriptors s3://b/runs/r1 --output s3://b/indexes/r1 \
        --shards 4 --factory IVF1024,PQ64x4fs,Refine(SQ8) --nprobe 32 --k-factor 8
    python jobs/build_index.py --descriptors s3://b/runs/r1 --output s3://b/indexes/r1 \
        --shards 4 --target-recall 0.95 --max-index-memory 4G
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import (
    add_cluster_arguments,
    add_database_arguments,
    add_gpu_arguments,
    dba_config,
    run_main,
    setup_logging,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_index.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--descriptors",
        required=True,
        help="extraction output (committed shards only) or a folder of descriptor Parquet",
    )
    p.add_argument("--output", required=True, help="index folder URI (versions + LATEST)")
    p.add_argument("--shards", type=int, default=1, help="index shards, built in parallel (1)")
    p.add_argument(
        "--factory",
        default="auto",
        help="FAISS index_factory string: Flat, IVF4096,Flat, IVF65536,PQ64, "
        "IVF1024,PQ64x4fs,RFlat (refined from float32 copies), "
        "IVF1024,PQ64x4fs,Refine(SQ8) (refined from 8-bit copies), ...; or auto: Flat below "
        "--flat-below vectors, else an IVF-PQ with nlist from N and a refinement within "
        "--max-index-memory, chosen per full build (auto)",
    )
    p.add_argument(
        "--max-index-memory",
        type=_memory_size,
        default=None,
        metavar="SIZE",
        help="with --factory auto: the index's memory budget, e.g. 4G or 512M (none)",
    )
    p.add_argument(
        "--flat-below",
        type=int,
        default=None,
        metavar="N",
        help="with --factory auto: a Flat (exact) index below N vectors (500000: the "
        "measured crossover, docs/index_tuning.md)",
    )
    tune = p.add_argument_group("search tuning on the version's own data")
    tune.add_argument(
        "--target-recall",
        type=float,
        default=None,
        metavar="R",
        help="after the build, tune nprobe/k-factor on held-out queries drawn from the indexed "
        "descriptors until recall@K against exact search reaches R; the cheapest such "
        "setting becomes the version's search default (replaces --nprobe/--k-factor)",
    )
    tune.add_argument(
        "--recall-at", type=int, default=100, metavar="K", help="the K of recall@K (100)"
    )
    tune.add_argument(
        "--tuning-queries",
        type=int,
        default=300,
        metavar="N",
        help="held-out queries the tuning measures (300)",
    )
    p.add_argument(
        "--nprobe", type=int, default=16, help="search default: IVF cells visited per query (16)"
    )
    p.add_argument(
        "--k-factor",
        type=int,
        default=4,
        help="search default for refined indexes: k x this many candidates re-scored (4)",
    )
    p.add_argument(
        "--full",
        dest="incremental",
        action="store_false",
        help="never build incrementally: every rebuild retrains and re-adds everything",
    )
    p.add_argument(
        "--max-new-fraction",
        type=float,
        default=0.5,
        help="rebuild in full once vectors added since the last full build exceed this "
        "fraction of it (0.5)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=100_000,
        help="training vectors sampled uniformly across all inputs (100000)",
    )
    p.add_argument("--retention", type=int, default=3, help="versions kept (3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training sample (0)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument(
        "--cpus-per-task",
        type=int,
        default=1,
        help="CPUs each shard-building task holds, FAISS threads = CPUs (1)",
    )
    p.add_argument(
        "--descriptors-version",
        type=int,
        metavar="N",
        help="read version N of the descriptors' Delta table (default: the latest; the "
        "version read is in the manifest): rebuilds exactly an earlier build's inputs",
    )
    add_gpu_arguments(p, "FAISS")
    add_database_arguments(
        p,
        "post-processing (stored in the version)",
        "whitening file (learn_whitening.py) applied to every stored vector and, "
        "automatically, to every query",
        "database-side augmentation with each vector's K nearest neighbours, found with the "
        "version's own index",
    )
    add_cluster_arguments(p)
    return p


def _memory_size(text: str) -> int:
    from pipeline.index.factory_choice import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.index.build import IndexBuildConfig, build_index
        from pipeline.index.factory_choice import FactoryPolicy
        from pipeline.index.tuning_record import RecallTarget
        from pipeline.runtime.cluster import connect

        target = None
        if args.target_recall is not None:
            target = RecallTarget(args.target_recall, args.recall_at, args.tuning_queries)

        cfg = IndexBuildConfig(
            factory=args.factory,
            shards=args.shards,
            train_size=args.train_size,
            seed=args.seed,
            retention=args.retention,
            use_gpu=args.use_gpu,
            nprobe=args.nprobe,
            k_factor=args.k_factor,
            incremental=args.incremental,
            max_new_fraction=args.max_new_fraction,
            whitening=args.whitening,
            dba=dba_config(args),
            target=target,
            flat_below=FactoryPolicy.flat_below if args.flat_below is None else args.flat_below,
            max_index_memory=args.max_index_memory,
            cpus_per_task=args.cpus_per_task,
        )
        connect(args.ray_address)
        result = build_index(
            args.descriptors,
            args.output,
            cfg,
            force=args.force,
            descriptors_version=args.descriptors_version,
        )
        if result.up_to_date:
            print(f"up to date: {args.output} version {result.version} ({result.vectors} vectors)")
        else:
            print(
                f"built {args.output} version {result.version} ({result.kind}: {result.reason}): "
                f"{result.vectors} vectors in {len(result.shard_counts)} shards, "
                f"{result.added} added, {result.seconds:.1f}s"
            )
            if result.factory_choice is not None:
                print(f"factory {result.factory}: {result.factory_choice.reason}")
            if result.dba is not None:
                print(
                    f"DBA k={result.dba.k} alpha={result.dba.alpha:g}: {result.dba.seconds:.1f}s, "
                    f"peak RSS {result.dba.peak_rss_bytes / 2**30:.2f} GiB"
                )
        if result.tuning is not None:
            print(f"search default: {result.tuning.summary()}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
