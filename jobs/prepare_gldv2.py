"""Turn GLDv2-clean into shuffled, labelled WebDataset shards for jobs/train.py.

    python jobs/prepare_gldv2.py --csv s3://b/gldv2/train_clean.csv \
        --images s3://b/gldv2/train --output s3://b/gldv2-shards

Labels are remapped to 0..K-1 (OUTPUT/label_map.csv); OUTPUT/_dataset.json, written last,
lists the shards and their sample counts. Re-running resumes or does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_gldv2.py", description=__doc__.split("\n\n")[0])
    add_verbose_argument(p)
    p.add_argument("--csv", required=True, help="URI of GLDv2's train_clean.csv")
    p.add_argument("--images", required=True, help="URI of the folder holding <a>/<b>/<c>/<id>.jpg")
    p.add_argument("--output", required=True, help="shard folder URI (local path or s3://)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (0)")
    p.add_argument(
        "--max-missing-fraction",
        type=float,
        default=0.01,
        help="missing image files are skipped and listed in missing.txt, up to this "
        "fraction; more fails the run (0.01)",
    )
    p.add_argument("--threads", type=int, default=16, help="concurrent image reads (16)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="exclusion list, CSV with a header: landmark_id (landmarks removed) or id / "
        "image_id / images (images removed), e.g. the landmarks RGLDv2-clean removes "
        "(repeatable)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.datasets.gldv2 import PrepareSpec, prepare

        spec = PrepareSpec(
            csv=args.csv,
            images=args.images,
            output=args.output,
            shard_size=args.shard_size,
            seed=args.seed,
            max_missing_fraction=args.max_missing_fraction,
            threads=args.threads,
            exclude=tuple(args.exclude),
        )
        manifest = prepare(spec)
        shards = manifest["shards"]
        summary = {
            "num_samples": manifest["num_samples"],
            "num_classes": manifest["num_classes"],
            "shards": len(shards) if isinstance(shards, dict) else shards,
            "missing": manifest["missing"],
        }
        if "excluded" in manifest:
            summary["excluded"] = manifest["excluded"]
        print(json.dumps(summary))
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
