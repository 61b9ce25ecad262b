"""What an output already holds, from one listing of its commit markers: which of the given
shards are committed (and from which source), the configuration they bind the output to, and
the totals of its previous run when they can be trusted.

A marker's name carries its shard id and a digest of its source (``pipeline.io.layout``), so
start-up and resume cost the listing's pages (1000 keys each on S3) plus one marker read for
the configuration, not a request per shard. Markers of the earlier layout (no digest in the
name) are read one by one, as before, with a warning."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pipeline.extract.spec import stored_fingerprint
from pipeline.extract.stats import ShardStats, ShardTotals
from pipeline.io.layout import MarkerName, job_uri, list_markers, markers_folder, source_digest
from pipeline.io.redact import redact_text
from pipeline.io.shards import shard_id
from pipeline.io.storage import canonical_uri, filesystem, join, read_json
from pipeline.runtime.records import OutputMismatchError, check_fingerprint, differing_keys

log = logging.getLogger(__name__)

# Markers read per request batch when totals are recounted from the markers themselves.
RECOUNT_BATCH = 1000
# The listing of the markers is cut into parts listed concurrently, one per PART_SHARDS given
# shards (ten pages of 1000 keys), at most MAX_PARTS.
PART_SHARDS = 10_000
MAX_PARTS = 100
_TWO_SOURCES = "two sources"  # a digest no marker has: an id committed from two sources


@dataclass(frozen=True)
class OutputScan:
    """An output as one listing of its markers shows it, checked against a run's shards."""

    previous: dict[str, Any] | None  # the previous run's ``_job.json`` (None: none that binds)
    committed: dict[str, str]  # id -> source digest, for the given shards already committed
    precisions: set[str]  # the precisions the output's shards were made in
    markers: int  # every commit marker in the output, of this run's shards or others


def scan_output(output: str, fp: dict[str, Any], shards: list[str]) -> OutputScan:
    """The output's previous ``_job.json``, its committed shards among ``shards``, and the
    precisions they were made in; refuse an output that holds shards of another
    configuration, and a shard committed from another source under the same name
    (``day1/000000.tar`` committed, ``day2/000000.tar`` given: skipping it would lose day2's
    images).

    One listing of ``_shards/`` gives the committed ids and their sources' digests. The
    configuration comes from one marker: every committed shard shares one fingerprint, since
    no shard is dispatched to an output bound to another (this check) and ``auto`` is bound
    to the output's precision. A precision of ``auto`` (resolved later, on the actors)
    matches any but is bound to the precision of whatever the output committed, from any
    input. A configuration that committed no shard does not bind the output: the next run's
    replaces it."""
    unresolved = ("precision",) if fp["precision"] == "auto" else ()
    wanted = _without(fp, unresolved)
    precisions: set[str] = set()

    def check(what: str, stored: dict[str, Any]) -> None:
        precisions.add(str(stored.get("precision")))
        check_fingerprint(what, _without(stored_fingerprint(stored), unresolved), wanted)

    previous = read_json(job_uri(output))
    listed, earlier, first, count = _listing(output, listing_cuts(shards))
    recorded = _without(stored_fingerprint((previous or {}).get("fingerprint", {})), unresolved)
    if first is not None and (previous is None or recorded != wanted or unresolved):
        # The shards committed bind the output, not the record of a run that may have
        # committed nothing: one marker's fingerprint is theirs.
        marker = read_json(join(markers_folder(output), first.name)) or {}
        check(output, dict(marker.get("fingerprint", {})))
    if previous is not None and recorded != wanted:
        log.warning(
            "%s: the previous run's configuration (differs in: %s) committed no shard; "
            "this run's replaces it",
            output,
            ", ".join(differing_keys(recorded, wanted)),
        )
        previous = None
    if earlier:
        log.warning(
            "%s: %d commit markers of an earlier layout (no source in their names): reading "
            "each of this run's (one request per marker)",
            output,
            len(earlier),
        )
    committed: dict[str, str] = {}
    moved: list[str] = []
    for shard in shards:
        sid = shard_id(shard)
        digest = listed.pop(sid, None)
        if digest is not None:
            if digest == source_digest(shard):
                committed[sid] = digest
            else:
                moved.append(_moved(output, sid, digest, shard))
        if sid in earlier:
            marker = read_json(join(markers_folder(output), MarkerName(sid, None).name))
            if marker is None:  # gone since the listing (removed by hand)
                continue
            check(f"shard {sid} in {output}", marker.get("fingerprint", {}))
            source = str(marker.get("source", ""))
            if canonical_uri(source) != canonical_uri(redact_text(shard)):  # stored redacted
                moved.append(f"{sid} (committed from {source}, given {redact_text(shard)})")
            else:
                committed[sid] = source_digest(shard)
    if moved:
        raise OutputMismatchError(
            f"{output} holds shards of the same name from other sources: "
            f"{'; '.join(moved[:3])}{'; …' if len(moved) > 3 else ''} ({len(moved)} in all); "
            "shard names identify a shard in an output: extract each folder to its own output"
        )
    return OutputScan(previous, committed, precisions, count)


def check_output(
    output: str, fp: dict[str, Any], shards: list[str]
) -> tuple[dict[str, Any] | None, dict[str, str], set[str]]:
    """``scan_output``'s previous record, committed shards (id -> source digest) and
    precisions."""
    scan = scan_output(output, fp, shards)
    return scan.previous, scan.committed, scan.precisions


def listing_cuts(shards: list[str]) -> list[str]:
    """Where to cut the listing of the markers into parts listed concurrently: one part per
    ``PART_SHARDS`` of the given shards (at most ``MAX_PARTS``), at ids sampled from them."""
    parts = min(MAX_PARTS, len(shards) // PART_SHARDS)
    if parts < 2:
        return []
    step = max(1, len(shards) // (parts * 8))
    sample = sorted(shard_id(s) for s in shards[::step])
    return sorted({sample[len(sample) * i // parts] for i in range(1, parts)})


def _listing(
    output: str, cuts: list[str]
) -> tuple[dict[str, str], set[str], MarkerName | None, int]:
    """One listing of the markers: id -> source digest (the earlier layout's ids apart), the
    first marker, and the count of all. Digests are held once each (one per input folder)."""
    listed: dict[str, str] = {}
    earlier: set[str] = set()
    digests: dict[str, str] = {}
    first: MarkerName | None = None
    count = 0
    for marker in list_markers(output, cuts):
        count += 1
        first = first or marker
        if marker.digest is None:
            earlier.add(marker.sid)
            continue
        digest = digests.setdefault(marker.digest, marker.digest)
        if listed.setdefault(marker.sid, digest) != digest:
            listed[marker.sid] = _TWO_SOURCES
    return listed, earlier, first, count


def _moved(output: str, sid: str, digest: str, shard: str) -> str:
    """How a shard committed from another source is named in the refusal (its marker read:
    only on the way to an error)."""
    if digest == _TWO_SOURCES:
        return f"{sid} (committed from two sources, given {redact_text(shard)})"
    marker = read_json(join(markers_folder(output), MarkerName(sid, digest).name)) or {}
    return f"{sid} (committed from {marker.get('source', '?')}, given {redact_text(shard)})"


def _without(fp: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in fp.items() if k not in keys}


def trusted_totals(previous: dict[str, Any] | None, markers: int) -> ShardTotals | None:
    """The previous run's totals over the output's committed shards, when they account for
    exactly the ``markers`` the listing found; None when they cannot be trusted (a crashed
    run left ``running``, a record of an earlier version that counted other shards)."""
    if previous is None:
        return ShardTotals() if markers == 0 else None
    if previous.get("status") == "running":
        return None
    totals = ShardTotals.from_dict(previous.get("totals") or {})
    return totals if totals.committed_shards == markers else None


def final_totals(output: str, base: ShardTotals | None, run: ShardTotals) -> ShardTotals:
    """The output's totals once a run is over: the previous ones plus the run's, checked
    against one more listing of the markers (after the run: it costs no dispatch time);
    recounted from the markers when there is no trusted base or they do not agree (a shard
    that committed while the driver counted it failed, a crash before this run)."""
    markers = sum(1 for _ in list_markers(output))
    totals = None if base is None else base.plus(run)
    if totals is not None and totals.committed_shards == markers:
        return totals
    log.warning(
        "%s: the recorded totals do not account for the output's %d markers (a run that "
        "crashed, or a record of an earlier version): recounting them from the markers (one "
        "read per marker)",
        output,
        markers,
    )
    return recount_totals(output)


def recount_totals(output: str) -> ShardTotals:
    """Totals over every marker of the output, read in batches: the path taken when the
    previous record cannot be trusted (one request per marker, after the run, not before)."""
    fs, folder = filesystem(markers_folder(output))
    totals = ShardTotals()
    batch: list[str] = []

    def read(paths: list[str]) -> None:
        for body in fs.cat(paths, on_error="omit").values():
            totals.add(ShardStats.from_dict(_json(body)))

    for marker in list_markers(output):
        batch.append(join(folder, marker.name))
        if len(batch) >= RECOUNT_BATCH:
            read(batch)
            batch = []
    if batch:
        read(batch)
    return totals


def _json(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError(f"a commit marker is not a JSON object: {body[:80]!r}")
    return value
