"""Streaming WebDataset shard reader: bytes streamed from the object store through fsspec
(never the whole shard on local disk), members grouped into samples by ``__key__``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from webdataset.tariterators import group_by_keys, tar_file_iterator

from pipeline.io.storage import filesystem

READ_BLOCK_BYTES = 8 * 1024 * 1024
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm")


@dataclass(frozen=True)
class RawSample:
    key: str
    # extension (lower case, e.g. "jpg", "cls") -> bytes
    members: dict[str, bytes]

    def image_member(self) -> bytes | None:
        """The sample's image bytes: the first member with an image extension."""
        for ext in IMAGE_EXTENSIONS:
            if ext in self.members:
                return self.members[ext]
        for ext, data in self.members.items():  # "0.jpg", "image.png" style extensions
            if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                return data
        return None


class CountingReader:
    """A read-only file wrapper that counts the bytes read through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.bytes_read += len(data)
        return data


def iter_shard(uri: str, counter: list[int] | None = None) -> Iterator[RawSample]:
    """Samples of the shard at ``uri`` in tar order; ``counter[0]`` tracks the bytes read."""
    fs, path = filesystem(uri)
    with fs.open(path, "rb", block_size=READ_BLOCK_BYTES) as f:
        stream = CountingReader(f)
        files: Iterator[dict[str, Any]] = (
            {**member, "__url__": uri} for member in tar_file_iterator(stream)
        )
        for sample in group_by_keys(files):
            if counter is not None:
                counter[0] = stream.bytes_read
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            yield RawSample(key=sample["__key__"], members=members)
        if counter is not None:
            counter[0] = stream.bytes_read
