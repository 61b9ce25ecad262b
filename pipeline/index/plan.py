"""What a scheduled rebuild has to do, decided from the inputs and LATEST's manifest alone (no
FAISS, no Ray): nothing, a full build, or an incremental version.

- up to date: the same committed inputs and configuration as LATEST;
- incremental: every input of LATEST is still there unchanged, only new files appeared (or only
  the recorded search defaults changed), the shards' configuration is the same, the previous
  trained index is stored, and the vectors added since the last full build stay within
  ``max_new_fraction`` of it: the new version reuses every shard of LATEST and the trained
  quantizer, and adds only the new files' vectors, in new shards;
- full: everything else (a changed or removed input, a changed configuration, including the
  whitening's file content or DBA being switched off, ``--force``), and every rebuild of an
  index built with DBA: DBA changes every stored vector from its neighbours, and new vectors
  change the neighbours of old ones, so an incremental version could not answer as a full
  rebuild would.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.index.build_config import IndexBuildConfig, content_of
from pipeline.index.versions import IndexManifest
from pipeline.io.descriptor_reader import DescriptorFile


def balance(weights: list[int], bins: int) -> list[list[int]]:
    """Indices of ``weights`` per bin, largest first to the least-loaded bin (sorted)."""
    load = [0] * bins
    out: list[list[int]] = [[] for _ in range(bins)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        b = min(range(bins), key=lambda b: (load[b], b))
        out[b].append(i)
        load[b] += weights[i]
    return [sorted(x) for x in out]


def signature(
    files: list[DescriptorFile], cfg: IndexBuildConfig, whitening_sha256: str | None = None
) -> str:
    """What a version is a function of: the input files (URI, size, ETag), the shards'
    configuration, the recorded search defaults, the recall target and the post-processing
    (the whitening file's sha256, DBA's k and α; each only when used)."""
    payload: dict[str, Any] = {
        "files": [[f.uri, f.size, f.etag] for f in files],
        **cfg.content(),
        "search": [cfg.nprobe, cfg.k_factor],
    }
    if whitening_sha256 is not None:
        payload["whitening"] = whitening_sha256
    if cfg.dba is not None:
        payload["dba"] = [cfg.dba.k, cfg.dba.alpha]
    if cfg.target is not None:
        t = cfg.target
        payload["target"] = [t.recall, t.k, t.queries, t.z]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def post_content(whitening_sha256: str | None, dba: tuple[int, float] | None) -> dict[str, Any]:
    """The post-processing in the stored vectors: the whitening's sha256 and DBA's (k, α)."""
    return {"whitening": whitening_sha256, "dba": None if dba is None else list(dba)}


def recorded_content(latest: IndexManifest) -> dict[str, Any]:
    """What LATEST's shards' content is a function of, besides its inputs."""
    w, d = latest.whitening, latest.dba
    return {
        **content_of(latest.config),
        **post_content(w.sha256 if w else None, (d.k, d.alpha) if d else None),
    }


@dataclass(frozen=True)
class BuildPlan:
    kind: str  # "up_to_date", "full" or "incremental"
    reason: str  # why, for the log and the job's output
    signature: str
    add: list[DescriptorFile] = field(default_factory=list)  # files to add, in id order
    first_id: int = 0  # id of the first added vector
    new_shards: int = 0  # shards this build writes
    first_shard: int = 0  # number of the first of them (after the reused shards)


def plan_build(
    files: list[DescriptorFile],
    latest: IndexManifest | None,
    cfg: IndexBuildConfig,
    force: bool,
    training_reusable: bool,
    whitening_sha256: str | None = None,
) -> BuildPlan:
    """The plan for a build of ``files`` at an index whose LATEST is ``latest``.
    ``training_reusable``: the index needs no training or LATEST's trained index is stored;
    ``whitening_sha256``: of the whitening file the build applies (None: none)."""
    sig = signature(files, cfg, whitening_sha256)

    def full(reason: str) -> BuildPlan:
        return BuildPlan("full", reason, sig, list(files), 0, cfg.shards)

    if latest is None:
        return full("no previous version")
    if force:
        return full("--force")
    if latest.signature == sig:
        return BuildPlan("up_to_date", "inputs and configuration unchanged", sig)
    if not cfg.incremental:
        return full("incremental builds are off")
    if cfg.dba is not None:
        # DBA replaces every stored vector by a mix of it and its neighbours: new files change
        # the neighbours (and so the vectors) of old ones, and reusing LATEST's shards would not
        # answer as a full rebuild does. With DBA, every rebuild is a full one.
        return full("DBA is configured: it changes every stored vector, so it rebuilds in full")
    before = recorded_content(latest)
    dba = (cfg.dba.k, cfg.dba.alpha) if cfg.dba else None
    now = {**cfg.content(), **post_content(whitening_sha256, dba)}
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        return full(f"the configuration changed ({', '.join(changed)})")
    current = {f.uri: f for f in files}
    for old in latest.inputs:
        f = current.get(old.uri)
        if f is None:
            return full(f"an input was removed: {old.uri}")
        if (f.size, f.etag) != (old.size, old.etag):
            return full(f"an input changed: {old.uri}")
    known = {i.uri for i in latest.inputs}
    new = [f for f in files if f.uri not in known]
    new_rows = sum(f.rows for f in new)
    base_rows = latest.count - latest.added_since_base
    if latest.added_since_base + new_rows > cfg.max_new_fraction * base_rows:
        return full(
            f"{latest.added_since_base + new_rows} vectors added since the last full build "
            f"exceed {cfg.max_new_fraction:g} of its {base_rows}"
        )
    if not training_reusable:
        return full("the previous version stored no trained index")
    # New shards no larger than a full build's: as many as the new rows need.
    per_shard = max(1, math.ceil(base_rows / cfg.shards))
    shards = min(len(new), max(1, math.ceil(new_rows / per_shard))) if new else 0
    reason = f"{len(new)} new input files" if new else "only the search defaults changed"
    return BuildPlan("incremental", reason, sig, new, latest.count, shards, latest.shards)
