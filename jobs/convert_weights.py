"""Convert a published retrieval checkpoint (cirtorch GeM network, or CVNet/SuperGlobal's
pycls ResNet) into a GLAM checkpoint (attention "none") that computes the source's own global
descriptor, for jobs/extract.py --weights.

    python jobs/convert_weights.py --format cirtorch \
        --source s3://b/models/gl18-tl-resnet101-gem-w-a4d43db.pth \
        --output s3://b/models/gl18-r101-gem-w.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_verbose_argument, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_weights.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="the downloaded checkpoint (path or s3://)")
    p.add_argument(
        "--format",
        required=True,
        choices=["cirtorch", "cvnet"],
        help="source layout: cirtorch (filipradenovic/cnnimageretrieval-pytorch) or cvnet "
        "(the pycls ResNet of sungonce/CVNet, also used by SuperGlobal)",
    )
    p.add_argument("--output", required=True, help="GLAM checkpoint to write (.safetensors/.pt)")
    p.add_argument(
        "--whitening",
        default=None,
        help="cirtorch: use the learned whitening meta['Lw'][NAME] as the head, e.g. "
        "retrieval-SfM-120k (networks without an end-to-end whiten layer)",
    )
    p.add_argument(
        "--whitening-mode",
        choices=["ms", "ss"],
        default="ms",
        help="cirtorch Lw learned on multi-scale (ms) or single-scale (ss) descriptors (ms)",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help="keep the first DIM rows of a PCA whitening (Lw) as the descriptor (default: all)",
    )
    add_verbose_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from glam.convert import ConversionOptions, convert_file
        from pipeline.io.redact import redact_text
        from pipeline.io.storage import WEIGHTS_STORE

        opts = ConversionOptions(args.format, args.whitening, args.whitening_mode, args.dim)
        converted = convert_file(
            args.source, args.output, opts, redact_text(args.source), store=WEIGHTS_STORE
        )
        cfg, notes = converted.model.config, converted.notes
        print(
            f"converted {notes['source_format']} {notes['backbone']} (head: {notes['head']}) "
            f"-> {redact_text(args.output)}: attention none, dim {cfg.dim}, "
            f"sha256 {converted.model.weights_sha256}"
        )
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
