"""Fit a PCA-whitening (mean, projection, optional shrinkage, output dimension) on descriptor
Parquet. Use it in an index (build_index.py --whitening: applied to the stored vectors and,
automatically, to every query) or as the FC of a model's head (--checkpoint).

    python jobs/learn_whitening.py --descriptors s3://b/runs/train-sample \
        --output s3://b/whitening/r101-512.safetensors --dim 512
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="learn_whitening.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--descriptors",
        required=True,
        help="descriptors to fit on: an extraction output or a folder of descriptor Parquet "
        "(not the evaluation set itself)",
    )
    p.add_argument("--output", required=True, help="whitening file to write (.safetensors)")
    p.add_argument(
        "--dim", type=int, default=None, help="output dimension (default: the descriptors')"
    )
    p.add_argument(
        "--shrinkage",
        type=float,
        default=1.0,
        help="s in P = Λ^(-s/2) Vᵀ: 1 full whitening, 0 PCA rotation only (1)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=1_000_000,
        help="descriptors drawn at random to fit on (1000000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that draw (0)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="also write this GLAM checkpoint with the whitening as its head's FC "
        "(a model whose head is the identity, e.g. converted without whitening)",
    )
    p.add_argument("--output-checkpoint", default=None, help="where to write that checkpoint")
    add_verbose_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != (args.output_checkpoint is None):
        parser.error("--checkpoint and --output-checkpoint go together")
    setup_logging(args.verbose)

    def run() -> int:
        from pipeline.index.whitening import (
            WhiteningConfig,
            learn_whitening,
            read_whitening,
            whiten_checkpoint,
        )
        from pipeline.io.redact import redact_text

        cfg = WhiteningConfig(args.dim, args.shrinkage, args.max_samples, args.seed)
        whitening = learn_whitening(args.descriptors, args.output, cfg)
        _, sha = read_whitening(args.output)
        print(
            f"whitening {redact_text(args.output)}: {whitening.samples} descriptors, "
            f"{whitening.dim_in} -> {whitening.dim_out} dims, shrinkage {whitening.shrinkage}, "
            f"sha256 {sha}"
        )
        if args.checkpoint:
            label = f"{redact_text(args.output)} (sha256 {sha})"
            out_sha = whiten_checkpoint(args.checkpoint, whitening, args.output_checkpoint, label)
            print(f"checkpoint {redact_text(args.output_checkpoint)}: sha256 {out_sha}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
