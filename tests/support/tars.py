"""Tar shards built member by member, independently of the code under test."""

from __future__ import annotations

import io
import tarfile

JPEG = b"\xff\xd8 pretend jpeg"


def tar_of(*members: tuple[str, bytes | str]) -> bytes:
    """A tar of (name, bytes) files, or (name, "->target") symlinks / ("=>target") links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type = tarfile.SYMTYPE if data.startswith("->") else tarfile.LNKTYPE
                info.linkname = data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
