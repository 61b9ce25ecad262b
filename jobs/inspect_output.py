"""Summarise an extraction output with DuckDB: descriptor count, error rows, a norm."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inspect_output.py", description=__doc__)
    add_verbose_argument(p)
    p.add_argument("output", help="output folder URI of jobs/extract.py")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.extract.summary import summarize

        print(json.dumps(asdict(summarize(args.output)), indent=2))
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
