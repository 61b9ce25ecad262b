"""Query an index version with descriptors of given keys: top-k keys and scores, from this
process or from Ray actors holding the shards (--distributed).

    python jobs/search_index.py --index s3://b/indexes/r1 --descriptors s3://b/runs/q \
        --key all_souls_000013 -k 10
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import (
    add_gpu_arguments,
    add_search_arguments,
    add_serving_arguments,
    connect_serving,
    run_main,
    setup_logging,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search_index.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="index folder URI")
    p.add_argument("--version", default=None, help="index version (default: LATEST)")
    p.add_argument("--descriptors", required=True, help="descriptor output holding the queries")
    p.add_argument("--key", action="append", required=True, help="query key (repeatable)")
    p.add_argument("-k", type=int, default=10, help="results per query (10)")
    add_search_arguments(p)
    add_gpu_arguments(p, "search")
    add_serving_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def run() -> int:
        from pipeline.index.search import open_index
        from pipeline.io.descriptor_reader import read_descriptors

        keys, x, _ = read_descriptors(args.descriptors)
        rows = {k: i for i, k in enumerate(keys)}
        missing = [k for k in args.key if k not in rows]
        if missing:
            raise ValueError(f"no descriptor for {missing}")
        serving = connect_serving(args)
        with open_index(args.index, args.version, serving, args.use_gpu) as index:
            params = index.params.with_overrides(args.nprobe, args.k_factor)
            result = index.search(x[[rows[k] for k in args.key]], args.k, params)
        where = f"{serving.actors} actors" if serving else "this process"
        for q, key in enumerate(args.key):
            print(f"query {key} (index {index.version}, {where}):")
            for rank, (hit, score) in enumerate(
                zip(result.keys[q], result.scores[q], strict=False)
            ):
                print(f"  {rank + 1:3d}  {score:.4f}  {hit}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
