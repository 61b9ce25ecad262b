"""Summarise an extraction output with DuckDB: descriptor count, error rows, a norm.

Reads the output's Delta tables (only committed shards; any earlier version with --version),
or the Parquet files of an output without tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inspect_output.py", description=__doc__.split("\n\n")[0])
    add_verbose_argument(p)
    p.add_argument("output", help="output folder URI of jobs/extract.py")
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="the tables' version to read (default: the latest; 0 is the empty table)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="only this shard URI's rows, as the files hold it (the other files are skipped "
        "by the tables' statistics, never opened)",
    )
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.extract.summary import summarize

        summary = summarize(args.output, args.version, args.source)
        print(json.dumps(asdict(summary), indent=2))
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
