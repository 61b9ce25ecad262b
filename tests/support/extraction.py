"""Generated shards' expected contents, the extract command line, and output checks."""

from __future__ import annotations

import sys
from collections.abc import Collection

import pyarrow.dataset as ds

from glam import GlamConfig, build_glam, save_checkpoint
from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES
from pipeline.io.storage import WEIGHTS_STORE, filesystem

from .paths import REPO

IMAGE_SIZE = 64
# The extraction tests' model: what they show (scheduling, commits, recovery, records) does not
# depend on its size, and ResNet18-GLAM at 64 channels costs a fraction of ResNet101-GLAM to
# build, to hash and to run in every driver and actor.
TINY_GLAM = GlamConfig(backbone="resnet18", dim=64, reduced_channels=64)


def write_tiny_weights(path: str) -> str:
    """A seeded random ResNet18-GLAM checkpoint at ``path`` (a local file); returns ``path``."""
    save_checkpoint(build_glam("random", TINY_GLAM, seed=0), path, store=WEIGHTS_STORE)
    return path


def shard_pattern(shard_uris: list[str]) -> str:
    folder = shard_uris[0].rsplit("/", 1)[0]
    return f"{folder}/{{000000..{len(shard_uris) - 1:06d}}}.tar"


def extract_command(shard_uris: list[str], output: str, *extra: str) -> list[str]:
    """``python jobs/extract.py`` over the generated shards at the tests' image size."""
    return [
        sys.executable,
        str(REPO / "jobs" / "extract.py"),
        "--input",
        shard_pattern(shard_uris),
        "--output",
        output,
        "--image-size",
        str(IMAGE_SIZE),
        *extra,
    ]


def expected_keys(shard: int, n_images: int = 5) -> tuple[set[str], dict[str, str]]:
    """(keys that must get a descriptor, key -> error type) of a generated shard."""
    ok = {f"s{shard:06d}_{i:05d}" for i in range(n_images)}
    ok |= {f"s{shard:06d}_mode_{m.replace(';', '')}" for m in ODD_MODES}
    bad = {f"s{shard:06d}_bad_{k}": v for k, v in BAD_KINDS.items()}
    return ok, bad


def output_listing(output: str) -> dict[str, object]:
    """Every object under ``output`` with its ETag/mtime: equal listings = nothing written."""
    fs, path = filesystem(output)
    fs.invalidate_cache()
    return {
        p: info.get("ETag") or info.get("LastModified") or info.get("mtime")
        for p, info in fs.find(path, detail=True).items()
    }


def assert_exactly_once(output: str, n_shards: int, failed: Collection[int] = ()) -> None:
    """Every sample of the first ``n_shards`` generated shards but the ``failed`` ones is in
    ``output`` once: a descriptor or its error row; nothing else is."""
    fs, path = filesystem(output)
    fs.invalidate_cache()
    desc = ds.dataset(f"{path}/descriptors", filesystem=fs, format="parquet").to_table()
    errs = ds.dataset(f"{path}/errors", filesystem=fs, format="parquet").to_table()
    committed = [s for s in range(n_shards) if s not in failed]
    ok = set().union(*(expected_keys(s)[0] for s in committed))
    bad = {}
    for s in committed:
        bad.update(expected_keys(s)[1])
    keys = desc["key"].to_pylist()
    assert len(keys) == len(set(keys)), "duplicate descriptors"
    assert set(keys) == ok
    assert dict(zip(errs["key"].to_pylist(), errs["error"].to_pylist(), strict=True)) == bad
    assert errs.num_rows == len(bad)
