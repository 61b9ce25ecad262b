"""Turn the revisitop download layout into WebDataset shards for jobs/extract.py.

python jobs/prepare_revisitop.py --root data/datasets --dataset roxford5k --output shards/roxf
python jobs/prepare_revisitop.py --root data/datasets --dataset revisitop1m --output shards/r1m
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prepare_revisitop.py", description=__doc__.split("\n\n")[0])
    add_verbose_argument(p)
    p.add_argument(
        "--root",
        required=True,
        help="folder (local or s3://) holding roxford5k/, rparis6k/, revisitop1m/",
    )
    p.add_argument("--dataset", required=True, choices=("roxford5k", "rparis6k", "revisitop1m"))
    p.add_argument(
        "--output",
        required=True,
        help="shards go to OUTPUT/database + OUTPUT/queries, or OUTPUT/distractors",
    )
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.datasets.revisitop import prepare_dataset, prepare_distractors

        if args.dataset == "revisitop1m":
            counts = prepare_distractors(args.root, args.output, args.shard_size)
        else:
            counts = prepare_dataset(args.root, args.dataset, args.output, args.shard_size)
        print(json.dumps(counts))
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
