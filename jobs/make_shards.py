"""Generate WebDataset shards of synthetic images (and bad samples) for demos and benchmarks."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_shards.py", description=__doc__)
    add_verbose_argument(p)
    p.add_argument("--output", required=True, help="folder URI for 000000.tar, 000001.tar, ...")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--images", type=int, default=8, help="valid images per shard")
    p.add_argument("--size", type=size, default=(1024, 768), help="WIDTHxHEIGHT (1024x768)")
    p.add_argument(
        "--bad",
        action="store_true",
        help="add one sample of every bad kind and every odd image mode per shard",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES, write_shards

        bad = tuple(BAD_KINDS) if args.bad else ()
        odd = ODD_MODES if args.bad else ()
        uris = write_shards(args.output, args.shards, args.images, args.size, bad, odd, args.seed)
        print(f"wrote {len(uris)} shards to {args.output}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
