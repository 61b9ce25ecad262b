"""An index version's record at a million input files: the manifest with its inputs inline (as
versions were written before ``inputs.parquet``) against the manifest and its inputs file, in
one run on a local folder: sizes, write time, what a search reads (the manifest alone) and what
a build reads (the manifest and its inputs).

    .venv/bin/python bench/bench_manifest.py --inputs 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.index.versions import IndexInput, IndexManifest, read_manifest, write_manifest
from pipeline.io.storage import join, write_json_atomic


def made_up(inputs: int) -> IndexManifest:
    files = [
        IndexInput(
            f"s3://bucket/runs/r1/descriptors/part-{i:07d}.parquet", 3 << 20, f'"{i:032x}"', 1000
        )
        for i in range(inputs)
    ]
    return IndexManifest(
        version="v1",
        signature="s" * 64,
        factory="IVF65536,PQ64x4fs,Refine(SQ8)",
        dim=512,
        metric="inner_product",
        shards=64,
        shard_counts=[inputs * 1000 // 64] * 64,
        count=inputs * 1000,
        config={"factory": "auto"},
        inputs=files,
        descriptor_model={"model": "GLAM"},
        created_at="2026-12-04T00:00:00+00:00",
        faiss="1.15",
    )


def timed(fn) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=1_000_000)
    args = p.parse_args()
    manifest = made_up(args.inputs)
    root = tempfile.mkdtemp(prefix="bench-manifest-")
    try:
        inline = join(root, "inline", "manifest.json")
        _, inline_write = timed(lambda: write_json_atomic(inline, manifest.to_dict()))
        _, inline_read = timed(
            lambda: IndexManifest.from_dict(json.loads(Path(inline).read_text()))
        )
        _, split_write = timed(lambda: write_manifest(root, manifest))
        _, search_read = timed(lambda: read_manifest(root, "v1", with_inputs=False))
        built, build_read = timed(lambda: read_manifest(root, "v1"))
        assert built == manifest
        folder = Path(root, "v1")
        print(
            json.dumps(
                {
                    "inputs": args.inputs,
                    "inline": {
                        "manifest_MB": round(os.path.getsize(inline) / 1e6, 1),
                        "write_s": inline_write,
                        "read_s": inline_read,
                    },
                    "split": {
                        "manifest_KB": round((folder / "manifest.json").stat().st_size / 1e3, 1),
                        "inputs_MB": round((folder / "inputs.parquet").stat().st_size / 1e6, 1),
                        "write_s": split_write,
                        "search_read_s": search_read,
                        "build_read_s": build_read,
                    },
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
