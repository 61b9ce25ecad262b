"""The output folder's layout (ARCHITECTURE.md): one descriptor and one error file per shard,
a commit marker per shard written last, and the job record.

A marker's name says which shard it commits and where that shard came from:
``_shards/<id>.<digest>.json``, the digest naming the shard's source (``source_digest``). So
one listing of ``_shards/`` tells what is committed and from which source, without reading a
marker. Outputs of earlier versions name markers ``_shards/<id>.json`` (no digest): they are
still read, marker by marker (``MarkerName.digest`` is None)."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.io.redact import redact_text
from pipeline.io.shards import shard_id
from pipeline.io.storage import canonical_uri, join, list_names

DIGEST_CHARS = 16  # 64 bits: two sources of one id colliding is a 1 in 2^64 event
_NEW = re.compile(rf"^(?P<sid>.+)\.(?P<digest>[0-9a-f]{{{DIGEST_CHARS}}})\.json$")


def descriptors_uri(output: str, shard: str) -> str:
    return join(descriptors_folder(output), part_name(shard))


def errors_uri(output: str, shard: str) -> str:
    return join(errors_folder(output), part_name(shard))


def descriptors_folder(output: str) -> str:
    """The descriptor files, and the Delta table that lists the committed ones."""
    return join(output, "descriptors")


def errors_folder(output: str) -> str:
    """The error-row files, and their Delta table."""
    return join(output, "errors")


def part_name(shard: str) -> str:
    """A shard's file name in ``descriptors/`` and ``errors/``."""
    return f"part-{shard}.parquet"


def part_shard(name: str) -> str | None:
    """The shard id of a file name ``part_name`` gave, or None for another name."""
    if name.startswith("part-") and name.endswith(".parquet") and len(name) > 13:
        return name[len("part-") : -len(".parquet")]
    return None


def markers_folder(output: str) -> str:
    return join(output, "_shards")


def job_uri(output: str) -> str:
    return join(output, "_job.json")


def failed_shards_uri(output: str) -> str:
    """Every failed shard of the last run (``_job.json`` names only the first ones)."""
    return join(output, "_failed_shards.parquet")


def source_digest(source: str) -> str:
    """``DIGEST_CHARS`` hex digits naming where a shard came from: the sha256 of its folder
    (canonical, redacted) and of what follows its id in its name (``.tar``), not of the id.

    The id stands beside the digest in the marker's name, so the two name the source exactly
    (as the canonical, redacted URIs did when markers were read). The id is left out so that
    one input folder's shards share one digest: computed once per folder (redaction costs
    ~0.15 ms a call), and held once in a listing of a million markers."""
    uri = source.rstrip("/")
    head, _, name = uri.rpartition("/")
    return _folder_digest(head or ".", name[len(shard_id(uri)) :])


@functools.lru_cache(maxsize=4096)
def _folder_digest(folder: str, suffix: str) -> str:
    where = f"{canonical_uri(redact_text(folder))}/\0{redact_text(suffix)}"
    return hashlib.sha256(where.encode()).hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True, slots=True)
class MarkerName:
    """A commit marker's object name, parsed: the shard id and its source's digest (None for a
    marker of the earlier layout, whose source only its content tells)."""

    sid: str
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.sid}.{self.digest}.json" if self.digest else f"{self.sid}.json"

    @classmethod
    def parse(cls, name: str) -> MarkerName | None:
        """The marker a name in ``_shards/`` is, or None for anything else."""
        m = _NEW.match(name)
        if m:
            return cls(m.group("sid"), m.group("digest"))
        if name.endswith(".json") and len(name) > len(".json"):
            return cls(name[: -len(".json")], None)
        return None


def list_markers(output: str, split_at: Sequence[str] = ()) -> Iterator[MarkerName]:
    """Every commit marker of ``output``, from one paginated listing of ``_shards/`` (no
    marker is read); on S3 in parts listed concurrently, cut at the names in ``split_at``."""
    for page in list_names(markers_folder(output), split_at):
        for name in page:
            marker = MarkerName.parse(name)
            if marker is not None:
                yield marker


def marker_uri(output: str, shard: str, source: str | None = None) -> str:
    """The commit marker of shard id ``shard``: with its ``source``, the name a commit writes;
    without, the marker the output holds for that id, found by listing ``_shards/`` (for tools
    and tests that know only the id), or the earlier layout's name when there is none."""
    if source is not None:
        return join(markers_folder(output), MarkerName(shard, source_digest(source)).name)
    found = next((m for m in list_markers(output) if m.sid == shard), None)
    return join(markers_folder(output), (found or MarkerName(shard, None)).name)
