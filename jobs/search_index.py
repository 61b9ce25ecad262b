"""Query an index version with descriptors of given keys, or with images: top-k keys and
scores, with the version's whitening and optional alpha-QE and re-ranking, from this process or
from Ray actors holding the shards (--distributed).

    python jobs/search_index.py --index s3://b/indexes/r1 --descriptors s3://b/runs/q \
        --key all_souls_000013 -k 10
    python jobs/search_index.py --index s3://b/indexes/r1 --image photo.jpg --aqe 2 --rerank
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import (
    add_gpu_arguments,
    add_postprocessing_arguments,
    add_search_arguments,
    add_serving_arguments,
    add_verbose_argument,
    connect_serving,
    positive_int,
    printable,
    query_options,
    run_main,
    setup_logging,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search_index.py", description=__doc__.split("\n\n")[0])
    add_verbose_argument(p)
    p.add_argument("--index", required=True, help="index folder URI")
    p.add_argument("--version", default=None, help="index version (default: LATEST)")
    p.add_argument("--descriptors", help="descriptor output holding the --key queries")
    p.add_argument("--key", action="append", default=[], help="query key (repeatable)")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        help="query image, a path or URI (repeatable): described with the index's own model "
        "configuration and weights",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="with --image: where the index's weights are, when not where the extraction read "
        "them (their sha256 must match)",
    )
    p.add_argument("-k", type=positive_int, default=10, help="results per query (10)")
    add_search_arguments(p)
    add_postprocessing_arguments(p)
    add_gpu_arguments(p, "search")
    add_serving_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.key and not args.image:
        p.error("give at least one --key or --image")
    if args.key and not args.descriptors:
        p.error("--key needs --descriptors")
    setup_logging(args.verbose)

    def run() -> int:
        import numpy as np

        from pipeline.index.query import describe_search, search
        from pipeline.index.query_image import describe_images
        from pipeline.index.search import check_queries, resolve_version
        from pipeline.index.serving import open_index
        from pipeline.io.descriptor_reader import read_descriptors

        options = query_options(args)
        # What can be refused is refused before any shard is loaded or any actor started;
        # the version resolved here is the one opened (LATEST may move meanwhile).
        version, manifest = resolve_version(args.index, args.version)
        names, blocks = [], []
        if args.key:
            keys, x, identity = read_descriptors(args.descriptors)
            rows = {k: i for i, k in enumerate(keys)}
            missing = [k for k in args.key if k not in rows]
            if missing:
                raise ValueError(f"no descriptor for {missing}")
            check_queries(version, manifest, identity, args.descriptors)
            names += args.key
            blocks.append(x[[rows[k] for k in args.key]])
        serving = connect_serving(args)
        with open_index(args.index, version, serving, args.use_gpu) as index:
            if args.image:
                names += args.image
                blocks.append(describe_images(index.manifest, args.image, args.weights))
            params = index.params.with_overrides(args.nprobe, args.k_factor)
            found = search(index, np.concatenate(blocks), args.k, options, params)
            promise = describe_search(index, params)
        result = found.result
        where = f"{serving.actors} actors" if serving else "this process"
        for q, key in enumerate(names):
            print(f"query {printable(key)} (index {index.version}, {where}):")
            for rank, (hit, score) in enumerate(
                zip(result.keys[q], result.scores[q], strict=False)
            ):
                print(f"  {rank + 1:3d}  {score:.4f}  {printable(hit)}")
        print(f"post-processing: {'; '.join(found.applied) or 'none'}")
        print(f"search: {promise}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
