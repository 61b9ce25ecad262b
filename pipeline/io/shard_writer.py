"""Writing WebDataset shards: samples (key, {extension: bytes}) into numbered tar files."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

from pipeline.io.storage import join, write_bytes_atomic

Sample = tuple[str, dict[str, bytes]]


def tar_bytes(samples: Iterable[Sample]) -> bytes:
    """A USTAR tar of the samples' members ``<key>.<ext>``, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_sharded(folder: str, samples: Iterable[Sample], shard_size: int) -> int:
    """Write ``folder/000000.tar``, ``000001.tar``, … of ``shard_size`` samples; return n."""
    if shard_size <= 0:
        raise ValueError("shard size must be positive")
    n, shard, batch = 0, 0, []
    for sample in samples:
        batch.append(sample)
        n += 1
        if len(batch) == shard_size:
            write_bytes_atomic(join(folder, f"{shard:06d}.tar"), tar_bytes(batch))
            shard, batch = shard + 1, []
    if batch:
        write_bytes_atomic(join(folder, f"{shard:06d}.tar"), tar_bytes(batch))
    return n
