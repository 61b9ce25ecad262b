"""Shard listing: brace ranges (``{000000..000099}``), brace lists (``{a,b}``) and globs over
any fsspec URI; each shard gets a stable id from its file name."""

from __future__ import annotations

import re
from collections import Counter

from pipeline.io.storage import filesystem, unstrip

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = set("*?[")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def expand_braces(pattern: str) -> list[str]:
    """Expand the first brace group, recursively: ranges keep the zero padding of their start."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise ValueError(f"empty brace range {{{body}}} in {pattern!r}")
        width = len(rng.group(1))
        items = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ValueError(f"brace group {{{body}}} in {pattern!r} is neither a range nor a list")
    return [out for item in items for out in expand_braces(head + item + tail)]


def list_shards(pattern: str) -> list[str]:
    """Shard URIs matching ``pattern``, in order and without duplicates.

    Brace expansions name shards explicitly (a missing one fails when it is read and is
    reported); globs list what exists. A pattern matching nothing is an error.
    """
    out: list[str] = []
    for expanded in expand_braces(pattern):
        if _GLOB_CHARS & set(expanded):
            fs, path = filesystem(expanded)
            matches = sorted(fs.glob(path))
            out.extend(unstrip(fs, p, expanded) for p in matches if p.endswith(SHARD_SUFFIXES))
        else:
            out.append(expanded)
    unique = list(dict.fromkeys(out))
    if not unique:
        raise ValueError(f"no shards match {pattern!r}")
    counts = Counter(shard_id(u) for u in unique)  # linear: a million shards in a second
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise ValueError(f"shards from different folders share the names {dupes[:5]}")
    return unique


def shard_id(uri: str) -> str:
    """``s3://b/shards/000123.tar`` -> ``000123`` (names the shard's output files)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
