"""Revisited Oxford/Paris evaluation (revisitop protocol): mAP and mP@1/5/10 for Easy, Medium
and Hard, optionally with the R1M distractor index; writes report.json and a Markdown table.

    python jobs/evaluate.py --gnd data/roxford5k/gnd_roxford5k.pkl --queries runs/roxf-q \
        --database runs/roxf-db --distractors indexes/r1m --report report.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import (
    add_database_arguments,
    add_postprocessing_arguments,
    add_search_arguments,
    add_serving_arguments,
    add_verbose_argument,
    connect_serving,
    dba_config,
    query_options,
    run_main,
    setup_logging,
)

NAMES = {"roxford5k": "ROxf", "rparis6k": "RPar"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    add_verbose_argument(p)
    p.add_argument("--gnd", required=True, help="revisitop ground truth (gnd_roxford5k.pkl, ...)")
    p.add_argument("--queries", required=True, help="descriptors of the query crops (qimlist)")
    p.add_argument("--database", required=True, help="descriptors of the database (imlist)")
    p.add_argument("--distractors", default=None, help="R1M index folder (jobs/build_index.py)")
    p.add_argument("--report", required=True, help="report.json path")
    p.add_argument("--markdown", default=None, help="report.md path (default: beside report)")
    p.add_argument("--name", default=None, help="dataset name in the table (from --gnd)")
    p.add_argument(
        "--approx-k",
        type=int,
        default=1000,
        help="top-k read from an approximate distractor index (1000)",
    )
    add_database_arguments(
        p,
        "database-side post-processing",
        "whitening file applied to queries and database (default: the distractor index's "
        "own, when it was built with one)",
        "database-side augmentation with K neighbours (the distractor index must have been "
        "built with the same --dba, or without DBA for --dba-joint)",
    )
    joint = p.add_argument_group("joint DBA (with --dba and --distractors)")
    joint.add_argument(
        "--dba-joint",
        action="store_true",
        help="DBA over database + distractors jointly, where memory allows: every vector with "
        "its K nearest in their union, from the raw vectors of a distractor index built "
        "without --dba; then an exact ranking (default: the database only, over the union)",
    )
    joint.add_argument(
        "--dba-joint-max-gib",
        type=float,
        default=None,
        metavar="GIB",
        help="refuse joint DBA when its estimated memory exceeds this (default: 0.75 of the "
        "memory available)",
    )
    add_search_arguments(p.add_argument_group("search of the distractor index"))
    add_postprocessing_arguments(p)
    add_serving_arguments(p)
    args = p.parse_args(argv)
    if args.dba_joint and (args.dba is None or not args.distractors):
        p.error("--dba-joint needs --dba K and --distractors (it augments both jointly)")
    if args.dba_joint_max_gib is not None and not (args.dba_joint and args.dba_joint_max_gib > 0):
        p.error("--dba-joint-max-gib takes a positive size, with --dba-joint")
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.evaluate.postprocess import EvalPostProcessing, JointDba
        from pipeline.evaluate.report import evaluate, markdown
        from pipeline.io.storage import write_bytes_atomic

        options = query_options(args)
        post = EvalPostProcessing(
            whitening=args.whitening,
            dba=dba_config(args),
            qe=options.qe,
            rerank=options.rerank,
            dba_joint=JointDba(
                None if args.dba_joint_max_gib is None else int(args.dba_joint_max_gib * 2**30)
            )
            if args.dba_joint
            else None,
        )
        serving = connect_serving(args) if args.distractors else None
        report = evaluate(
            args.gnd,
            args.queries,
            args.database,
            args.distractors,
            args.approx_k,
            post=post,
            serving=serving,
            search=(args.nprobe, args.k_factor),
        )
        stem = os.path.basename(args.gnd).removeprefix("gnd_").removesuffix(".pkl")
        name = args.name or NAMES.get(stem, stem)
        table = markdown(report, name)
        write_bytes_atomic(args.report, json.dumps(report, indent=2).encode())
        md = args.markdown or os.path.splitext(args.report)[0] + ".md"
        write_bytes_atomic(md, table.encode())
        print(table)
        if "search" in report:
            print(f"distractor search: {report['search']}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
