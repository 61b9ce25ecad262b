"""Streaming WebDataset shard reader: bytes streamed from the object store through fsspec
(never the whole shard on local disk), members grouped into samples by key.

WebDataset's convention: a member ``dir/photo.2023.jpg`` has the key ``dir/photo`` (the path
up to the first dot of the file name) and the extension ``2023.jpg``; consecutive members with
one key form a sample. Nothing vanishes without a word: every member that cannot be part of a
sample comes out as a ``RawSample`` with a ``problem`` (an error row downstream):

- ``duplicate_key``: a sample whose key an earlier sample of the shard had (the first wins);
- ``duplicate_member``: a second member of the same name within one sample;
- ``link_member``: a symlink or hard link (never followed), or any other non-file member;
- ``no_extension``, ``hidden_member``, ``reserved_member``: a name without an extension, a
  dot-file (``._x.jpg``), or an extension starting with ``__`` (``x.__key__``).

Errors of the stream itself are of two kinds: ``ShardStorageError`` (the bytes could not be
fetched: worth a retry) and ``ShardFormatError`` (the bytes are not a readable tar: a retry
reads the same bytes).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from pipeline.io.storage import filesystem

READ_BLOCK_BYTES = 8 * 1024 * 1024
# A PNG text chunk holding "WxH", the size of the image a query crop was cut from
# (pipeline/datasets/revisitop.py writes it; extraction scales the crop by it).
FULL_SIZE_TEXT = "glam:full_size"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm")


class ShardStorageError(OSError):
    """The shard's bytes could not be fetched (storage or network): a retry may succeed."""


class ShardFormatError(ValueError):
    """The shard's bytes are not a readable tar archive (empty, garbage, truncated)."""


@dataclass(frozen=True)
class RawSample:
    key: str
    # extension (lower case, e.g. "jpg", "cls") -> bytes
    members: dict[str, bytes]
    # (error type, message) for a member or sample that cannot be used (see the module doc)
    problem: tuple[str, str] | None = None

    def image_member(self) -> bytes | None:
        """The sample's image bytes: the first member with an image extension."""
        for _, data in self.image_members():
            return data
        return None

    def image_members(self) -> list[tuple[str, bytes]]:
        """(extension, bytes) of every image member, the usual extensions first in
        ``IMAGE_EXTENSIONS`` order, then ``0.jpg``-style ones in tar order."""
        out = [(ext, self.members[ext]) for ext in IMAGE_EXTENSIONS if ext in self.members]
        out += [
            (ext, data)
            for ext, data in self.members.items()
            if ext not in IMAGE_EXTENSIONS and ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS
        ]
        return out


class CountingReader:
    """A read-only file wrapper that counts the bytes read through it and tells storage
    failures (``ShardStorageError``) from what the tar parser makes of the bytes."""

    def __init__(self, f: IO[bytes], uri: str) -> None:
        self._f = f
        self._uri = uri
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._f.read(size)
        except Exception as e:
            raise ShardStorageError(f"reading {self._uri}: {type(e).__name__}: {e}") from e
        self.bytes_read += len(data)
        return data

    def __repr__(self) -> str:  # what tarfile puts into some of its messages
        return f"<shard {self._uri}>"


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/photo.2023.jpg`` -> (``dir/photo``, ``2023.jpg``); None without an extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _member_problem(info: tarfile.TarInfo) -> tuple[str, str] | None:
    base = info.name.rpartition("/")[2]
    if info.issym() or info.islnk():
        return "link_member", f"a {'symbolic' if info.issym() else 'hard'} link: not followed"
    if not info.isfile():
        return "link_member", "not a regular file (device, FIFO or special member)"
    if base.startswith("."):
        return "hidden_member", "a hidden (dot) file"
    split = split_name(info.name)
    if split is None:
        return "no_extension", "a member name without an extension: no sample key"
    if split[1].startswith("__"):
        return "reserved_member", f"the extension {split[1]!r} is reserved by WebDataset"
    return None


def _members(tar: tarfile.TarFile, uri: str) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """(member, bytes) in tar order; bytes only for regular files. Parse errors become
    ``ShardFormatError``; storage errors pass through as ``ShardStorageError``."""
    while True:
        try:
            info = tar.next()
            if info is None:
                return
            data = None
            if info.isfile():
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
        except ShardStorageError:
            raise
        except (tarfile.TarError, EOFError, ValueError) as e:
            raise ShardFormatError(f"{uri} is not a readable tar archive: {e}") from e
        yield info, data


def iter_shard(uri: str, counter: list[int] | None = None) -> Iterator[RawSample]:
    """Samples of the shard at ``uri`` in tar order, problems included (see the module doc);
    ``counter[0]`` tracks the bytes read."""
    fs, path = filesystem(uri)
    try:
        f = fs.open(path, "rb", block_size=READ_BLOCK_BYTES)
    except FileNotFoundError as e:
        raise ShardFormatError(f"{uri} does not exist") from e
    except Exception as e:
        raise ShardStorageError(f"opening {uri}: {type(e).__name__}: {e}") from e
    with f:
        stream = CountingReader(f, uri)
        try:
            # Closed with the file object by the ``with`` above (a stream tar has no own fd).
            tar = tarfile.open(fileobj=stream, mode="r|*")  # type: ignore[call-overload]  # noqa: SIM115
        except ShardStorageError:
            raise
        except (tarfile.TarError, EOFError) as e:
            raise ShardFormatError(f"{uri} is not a tar archive: {e}") from e
        seen: set[str] = set()
        key: str | None = None
        members: dict[str, bytes] = {}
        for info, data in _members(tar, uri):
            if counter is not None:
                counter[0] = stream.bytes_read
            if info.isdir():
                continue  # folders are not data
            problem = _member_problem(info)
            split = split_name(info.name)
            member_key = split[0] if split else info.name
            if member_key != key and key is not None:  # a new key ends the current sample
                yield from _finish(key, members, seen)
                key, members = None, {}
            if problem is not None or data is None or split is None:
                yield RawSample(info.name, {}, problem or ("link_member", "not a file"))
                continue
            ext = split[1]
            key = member_key
            if ext in members:
                yield RawSample(info.name, {}, ("duplicate_member", "a second member of this name"))
                continue
            members[ext] = data
        if key is not None:
            yield from _finish(key, members, seen)
        if counter is not None:
            counter[0] = stream.bytes_read


def _finish(key: str, members: dict[str, bytes], seen: set[str]) -> Iterator[RawSample]:
    if key in seen:
        message = "an earlier sample of this shard has this key (the first one is kept)"
        yield RawSample(key, {}, ("duplicate_key", message))
        return
    seen.add(key)
    yield RawSample(key, members)
