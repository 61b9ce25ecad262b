"""What a shard's processing reports: its ``ShardStats`` (the body of its commit marker), the
job's totals over them, and their metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from pipeline.runtime import metrics

ShardStatus = Literal["committed", "failed"]
# read: the reader thread streaming the tar; decode: the decode threads' seconds, summed;
# wait: the model waiting for decoded input; infer: the model (device preprocessing included);
# write: Parquet encoding, upload and commit, off the model's path.
STAGES = ("read", "decode", "wait", "infer", "write")


@dataclass
class ShardStats:
    shard: str  # shard id, e.g. "000123"
    source: str  # shard URI
    status: ShardStatus = "committed"
    # ok + errors: the rows of the two files, i.e. every sample of the shard and every other
    # image member of one (an ``extra_image`` row, or the row of a member that did not decode)
    samples: int = 0
    ok: int = 0  # descriptors written
    errors: int = 0  # error rows written
    errors_by_type: dict[str, int] = field(default_factory=dict)
    bytes: int = 0  # shard bytes streamed
    read_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    device_decoded: int = 0  # images decoded on the GPU (--decode gpu)
    attempts: int = 0
    error: str = ""  # why a failed shard failed
    worker: str = ""

    @property
    def committed(self) -> bool:
        return self.status == "committed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardStats:
        """Stats from a commit marker (extra keys such as the fingerprint are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class FailedShard:
    shard: str  # shard URI
    error: str


@dataclass
class ShardTotals:
    """Totals over committed shards, for ``_job.json``."""

    committed_shards: int = 0
    samples: int = 0
    ok: int = 0
    errors: int = 0
    bytes: int = 0
    read_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0

    @classmethod
    def over(cls, shards: list[ShardStats]) -> ShardTotals:
        totals = cls()
        for s in shards:
            totals.add(s)
        return totals

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardTotals:
        """Totals from a ``_job.json`` (extra keys such as ``shards`` are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def add(self, s: ShardStats) -> None:
        """Count one shard (a failed one counts nothing)."""
        if not s.committed:
            return
        self.committed_shards += 1
        self.samples += s.samples
        self.ok += s.ok
        self.errors += s.errors
        self.bytes += s.bytes
        for stage in STAGES:
            name = f"{stage}_s"
            setattr(self, name, getattr(self, name) + getattr(s, name))

    def plus(self, other: ShardTotals) -> ShardTotals:
        """The sum of two totals (a previous run's and this one's)."""
        return ShardTotals(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


def publish(stats: ShardStats) -> None:
    """Count one finished shard in the Ray metrics."""
    metrics.inc("shards", 1, tags={"status": stats.status})
    if not stats.committed:
        return
    metrics.inc("images", stats.samples)
    metrics.inc("descriptors", stats.ok)
    metrics.inc("bytes", stats.bytes)
    for kind, n in stats.errors_by_type.items():
        metrics.inc("errors", n, tags={"type": kind})
    for stage in STAGES:
        metrics.inc("stage", getattr(stats, f"{stage}_s"), tags={"stage": stage})
