"""Query an index version with descriptors of given keys: top-k keys and scores.

    python jobs/search_index.py --index s3://b/indexes/r1 --descriptors s3://b/runs/q \
        --key all_souls_000013 -k 10
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="search_index.py", description=__doc__.split("\n\n")[0])
    add_verbose_argument(p)
    p.add_argument("--index", required=True, help="index folder URI")
    p.add_argument("--version", default=None, help="index version (default: LATEST)")
    p.add_argument("--descriptors", required=True, help="descriptor output holding the queries")
    p.add_argument("--key", action="append", required=True, help="query key (repeatable)")
    p.add_argument("-k", type=int, default=10, help="results per query (10)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.index.search import ShardedIndex
        from pipeline.io.descriptor_reader import read_descriptors

        keys, x, identity = read_descriptors(args.descriptors)
        rows = {k: i for i, k in enumerate(keys)}
        missing = [k for k in args.key if k not in rows]
        if missing:
            raise ValueError(f"no descriptor for {missing}")
        index = ShardedIndex.load(args.index, args.version)
        index.check_queries(identity, args.descriptors)
        result = index.search(x[[rows[k] for k in args.key]], args.k)
        for q, key in enumerate(args.key):
            print(f"query {key} (index {index.version}):")
            for rank, (hit, score) in enumerate(
                zip(result.keys[q], result.scores[q], strict=False)
            ):
                print(f"  {rank + 1:3d}  {score:.4f}  {hit}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
